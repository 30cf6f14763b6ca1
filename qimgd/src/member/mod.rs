//! A cluster node's member loop: carries out the plan's current generation on
//! this node with its own engine, and reports what it did under that generation.
//! It acts only on the current generation: a report or a command of an older
//! plan is never taken for the current one. The coordinator
//! (`crate::coordinator`) moves the plan on from the reports.
//!
//! Load → decide → act: each look loads the plan, this node's report and, when
//! the decision depends on it, the engine's view; [`member_action`] (pure,
//! `decide`) says what to do; the loop does it. Every job (prepare, commit,
//! rollback) runs one way ([`run_job`]) and reports the engine's own outcome.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qcluster::{ClusterPlan, NodeReport, NodeStep, Store};
use upgrade::CommitOutcome;
use upgrade::state::Stage;

use crate::api::Shared;
use crate::jobs::{JobKind, Observer};

mod decide;
mod trust;
pub use decide::{
    Action, Engine, StepReport, commit_report, member_action, needs_engine, revert_report,
};
pub use trust::distrust;

/// How often the loop looks at the plan while a job of this node's runs (its
/// progress is reported at this pace).
pub const POLL: Duration = Duration::from_millis(200);

/// How often it looks otherwise: etcd's watch wakes it on every change of the
/// plan or of a report, and a boot of this node wakes it too; the poll only
/// covers a watch that broke (one poll in [`crate::cluster::FRESH_EVERY`] reads
/// etcd, the others the mirror).
pub const IDLE_POLL: Duration = Duration::from_secs(1);

fn report(generation: u64, step: NodeStep, progress: u8, error: Option<String>) -> NodeReport {
    NodeReport {
        generation,
        step,
        progress,
        error,
        downtime_ms: None,
        at_ms: qcluster::plan::now_ms(),
    }
}

/// A report of a step this node reached by booting: timed when it came up.
fn booted(app: &Shared, r: NodeReport) -> NodeReport {
    NodeReport {
        at_ms: app.up_since_ms.load(Ordering::SeqCst),
        ..r
    }
}

/// Runs until dropped.
pub async fn run(app: Shared) {
    let c = &app.cluster;
    let me = c.membership.node_id;
    // What the loop said last: an error, or why it holds a reboot (each is
    // looked at again every second; said once until it changes).
    let mut last_said = String::new();
    let mut changes = app.changes.subscribe();
    let mut polls = crate::cluster::Fresh::default();
    loop {
        // At the next poll, or at once when the plan or a report changed.
        let nap = if app.jobs.running().is_some() {
            POLL
        } else {
            IDLE_POLL
        };
        // Woken by a change: what woke it is in the mirror; at a poll: etcd, one
        // poll in FRESH_EVERY.
        let fresh = tokio::select! {
            _ = tokio::time::sleep(nap) => polls.poll(),
            _ = changes.changed() => false,
        };
        let Some(store) = c.store() else {
            continue;
        };
        let said = match step(&app, store, me, fresh).await {
            Ok(held) => held,
            Err(e) => Some(format!("member: {}", upgrade::chain(&e))),
        };
        if let Some(text) = said
            && text != last_said
        {
            crate::log(&text);
            last_said = text;
        }
    }
}

/// One look at the plan and this node's report (`fresh`: read from etcd, else
/// as the watch delivered them): load, decide ([`member_action`]), act.
/// `Some`: why it holds a reboot the plan asks of this node (for the journal).
async fn step(
    app: &Shared,
    store: &Store,
    me: u32,
    fresh: bool,
) -> Result<Option<String>, qcluster::Error> {
    // Whether a job runs, asked before the reports are read: a job writes its
    // final report before it lets go of its claim, so a job seen ended has its
    // report in what is read next.
    let busy = app.jobs.running().is_some();
    let (plan, own) = if fresh {
        (store.plan().await?, store.report_of(me).await?)
    } else {
        (store.plan_seen().await?, store.report_of_seen(me).await?)
    };
    let Some((plan, _)) = plan else {
        return Ok(None);
    };
    let g = plan.generation;
    let own = own.filter(|(r, _)| r.generation == g);
    let down = plan.reboots_ahead(me, own.as_ref().map(|(r, _)| r.step));
    if app.stepping_down.swap(down, Ordering::SeqCst) != down {
        app.changes.send_modify(|n| *n += 1); // the coordinator loop acts at once
    }
    let engine = if needs_engine(&plan, own.as_ref().map(|(r, _)| r), busy) {
        Some(engine(app).await)
    } else {
        None
    };
    let progress = app.jobs.meter.percent();
    let action = member_action(
        &plan,
        me,
        own.as_ref().map(|(r, _)| r),
        busy,
        progress,
        engine.as_ref(),
    );
    if matches!(action, Action::Commit { .. } | Action::Revert { .. })
        && let Some(why) = hold_reboot(app, store, &plan, me, fresh).await?
    {
        return Ok(Some(format!(
            "plan {g}: this node does not reboot for it: {why}"
        )));
    }
    let done = match action {
        Action::Wait => Ok(()),
        Action::Prepare { again } => {
            if again {
                crate::log(&format!(
                    "plan {g}: the prepare was interrupted; starting it again"
                ));
            }
            start_prepare(app, store, &plan, me).await
        }
        Action::Progress(p) => match own {
            // Never over the prepare's own final report (written by its job
            // meanwhile): compare-and-swap on the report read.
            Some((r, rev)) => store
                .report_if(me, &NodeReport { progress: p, ..r }, rev)
                .await
                .map(|_| ()),
            None => Ok(()),
        },
        Action::Commit { again } => {
            if again {
                crate::log(&format!(
                    "plan {g}: the commit was interrupted; committing again"
                ));
            }
            start_commit(app, store, g, me).await
        }
        Action::Revert { again } => {
            if again {
                crate::log(&format!(
                    "plan {g}: still on the new release after rolling back; going back again"
                ));
            }
            start_revert(app, store, &plan, me).await
        }
        Action::Discard => discard(app, store, g, me).await,
        Action::Booted(step) => {
            store
                .report(me, &booted(app, report(g, step, 100, None)))
                .await
        }
        Action::Fail(why) => {
            store
                .report(me, &report(g, NodeStep::Failed, 100, Some(why)))
                .await
        }
    };
    done.map(|()| None)
}

/// Why this node holds a reboot the plan asks of it (`None`: it goes): a plan
/// no coordinator of this cluster would write ([`distrust`]), or, past the
/// first batch of a rolling one, its own restriper saying the data is not safe
/// yet (asked here too: a plan that skipped the coordinator's gate does not
/// take the data's last copies down).
async fn hold_reboot(
    app: &Shared,
    store: &Store,
    plan: &ClusterPlan,
    me: u32,
    fresh: bool,
) -> Result<Option<String>, qcluster::Error> {
    if plan.mode != qcluster::PlanMode::Platform || !plan.in_batches() {
        return Ok(None);
    }
    let reports = if fresh {
        store.reports().await?
    } else {
        store.reports_seen().await?
    };
    if let Some(why) = distrust(plan, &app.cluster.membership.spec, me, &reports) {
        return Ok(Some(why));
    }
    let crate::restriper::Source::Probe(argv) = &app.safety else {
        return Ok(None);
    };
    if plan.batch == 0 {
        return Ok(None);
    }
    Ok(match crate::restriper::ask(argv).await {
        crate::restriper::DataSafety::Safe | crate::restriper::DataSafety::Timed { .. } => None,
        crate::restriper::DataSafety::AtRisk(why) | crate::restriper::DataSafety::NoSource(why) => {
            Some(format!("the data is not safe yet here: {why}"))
        }
    })
}

/// The engine's view (off the async threads).
async fn engine(app: &Shared) -> Engine {
    let a = app.clone();
    tokio::task::spawn_blocking(move || match a.agent.state() {
        Ok(st) => Engine::of(&st, a.agent.machine().reboot_pending()),
        Err(_) => Engine::Unreadable,
    })
    .await
    .unwrap_or(Engine::Unreadable)
}

/// Runs `work` (a job of this node, holding `claim`) on the blocking threads and
/// reports what it returns under generation `g`; `None`: nothing yet (the
/// machine reboots, and the loop reports what the boot decided). The claim is
/// let go only after the report is written (see [`step`]).
fn run_job(
    app: &Shared,
    store: &Store,
    me: u32,
    g: u64,
    claim: crate::jobs::Claim,
    what: &'static str,
    work: impl FnOnce(&Shared) -> Option<NodeReport> + Send + 'static,
) {
    let (a, s) = (app.clone(), store.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _claim = claim;
        let Some(rep) = work(&a) else {
            crate::log(&format!("plan {g}: {what}: the machine reboots"));
            return;
        };
        crate::log(&format!("plan {g}: {what} ended: {:?}", rep.step));
        if let Err(e) = rt.block_on(s.report(me, &rep)) {
            crate::log(&format!("plan {g}: reporting the {what}: {e}"));
        }
    });
}

/// The report of outcome `o` as `step_of` maps it (`decide::commit_report`,
/// `revert_report`), with a swap's downtime.
fn outcome_report(
    g: u64,
    o: &CommitOutcome,
    step_of: fn(&CommitOutcome) -> StepReport,
) -> Option<NodeReport> {
    let (step, error) = step_of(o)?;
    let downtime_ms = match o {
        CommitOutcome::Committed { downtime_ms } => *downtime_ms,
        _ => None,
    };
    Some(NodeReport {
        downtime_ms,
        ..report(g, step, 100, error)
    })
}

async fn start_prepare(
    app: &Shared,
    store: &Store,
    plan: &ClusterPlan,
    me: u32,
) -> Result<(), qcluster::Error> {
    let g = plan.generation;
    // A bundle the plan pins and this node lacks is fetched from another node
    // first, in the job.
    let fetch = match crate::paths::resolve(&app.config.upgrade_dir, &plan.image_path) {
        Ok(_) => false,
        Err(crate::paths::PathProblem::Missing(_))
            if plan.bundle.is_some() && app.cluster.dir.is_some() =>
        {
            true
        }
        Err(e) => {
            let why = format!("{e} on this node");
            return store
                .report(me, &report(g, NodeStep::Failed, 0, Some(why)))
                .await;
        }
    };
    let Ok(claim) = app.jobs.claim(JobKind::Prepare) else {
        return Ok(()); // the next tick
    };
    store
        .report(me, &report(g, NodeStep::Preparing, 0, None))
        .await?;
    let plan = plan.clone();
    run_job(app, store, me, g, claim, "prepare", move |a| {
        let failed = |why: String| Some(report(g, NodeStep::Failed, 0, Some(why)));
        let prepared = if fetch {
            crate::log(&format!(
                "plan {g}: {} is not on this node: fetching it from another node, preparing from it as it arrives",
                plan.image_path
            ));
            // The fetch and the prepare at once: the prepare reads what the
            // fetch receives. The fetch's failure is the reason (the
            // prepare's is then only that its stream ended).
            let (tee, arriving) = crate::fetch::arriving();
            let (fetched, prepared) = std::thread::scope(|s| {
                let fetching = s.spawn(|| fetch_pinned(a, &plan, Some(tee)));
                let prepared = prepare_pinned(a, &plan, Some(Box::new(arriving)));
                (fetching.join().expect("the fetch panicked"), prepared)
            });
            if let Err(e) = fetched {
                return failed(format!(
                    "fetching {} from the other nodes: {}",
                    plan.image_path,
                    upgrade::chain(&e)
                ));
            }
            prepared
        } else {
            prepare_pinned(a, &plan, None)
        };
        match prepared {
            Ok(()) => Some(report(g, NodeStep::Prepared, 100, None)),
            Err(why) => failed(why),
        }
    });
    Ok(())
}

/// Prepares the bundle `plan` pins: from its file in the upgrade directory,
/// or from `stream` while a fetch receives it. Blocking. The error in words.
fn prepare_pinned(
    a: &Shared,
    plan: &ClusterPlan,
    stream: Option<Box<dyn std::io::Read + Send>>,
) -> Result<(), String> {
    let g = plan.generation;
    let (file, shown, size, source) = match stream {
        Some(arriving) => {
            let name = plan.image_path.trim_start_matches('/');
            let size = plan.bundle.as_ref().map_or(1, |p| p.size);
            (
                a.config.upgrade_dir.join(name),
                plan.image_path.clone(),
                size,
                upgrade::BundleSource::Arriving(arriving),
            )
        }
        None => {
            let img = crate::paths::resolve(&a.config.upgrade_dir, &plan.image_path)
                .map_err(|e| format!("{e} on this node"))?;
            (img.file.clone(), img.shown.clone(), img.size, img.source())
        }
    };
    a.jobs.meter.reset(size);
    crate::log(&format!("plan {g}: preparing {}", plan.image_path));
    let req = upgrade::PrepareRequest {
        path: file,
        auto_commit: false,
        rolling: plan.rolling,
        nodes_per_batch: plan.nodes_per_batch,
        shown_as: Some(shown),
        pin: plan.bundle,
    };
    a.agent
        .prepare_from(&req, source, &Observer(a.jobs.meter.clone()), &a.cancel)
        .map(|_| ())
        .map_err(|e| upgrade::chain(&e))
}

/// Fetches the bundle `plan` pins from the other nodes into this node's
/// upgrade directory (`crate::fetch`), every byte also to `tee`. Blocking.
fn fetch_pinned(
    a: &Shared,
    plan: &ClusterPlan,
    tee: Option<std::sync::mpsc::SyncSender<axum::body::Bytes>>,
) -> Result<(), crate::fetch::FetchProblem> {
    use crate::fetch::{FetchProblem, fetch, peers};
    let c = &a.cluster;
    let (Some(pin), Some(dir)) = (plan.bundle.as_ref(), c.dir.as_ref()) else {
        return Err(FetchProblem::NoPeers);
    };
    let keys = a.agent.node().keys().map_err(FetchProblem::Keys)?;
    let name = plan.image_path.trim_start_matches('/');
    let peers = peers(&c.membership.spec.nodes, c.membership.node_id);
    let t = std::time::Instant::now();
    let done = fetch(name, &a.config.upgrade_dir, pin, &keys, dir, &peers, tee)?;
    let resumed = match done.resumed_at.len() {
        0 => String::new(),
        n => format!(", its stream taken up again {n} time(s)"),
    };
    crate::log(&format!(
        "fetched {name} ({} bytes) from another node in {:.1} s{resumed}",
        pin.size,
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn start_commit(app: &Shared, store: &Store, g: u64, me: u32) -> Result<(), qcluster::Error> {
    let Ok(claim) = app.jobs.claim(JobKind::Commit) else {
        return Ok(());
    };
    store
        .report(me, &report(g, NodeStep::Committing, 100, None))
        .await?;
    crate::log(&format!("plan {g}: committing"));
    run_job(app, store, me, g, claim, "commit", move |a| {
        match a.agent.commit(&Observer(a.jobs.meter.clone())) {
            Ok(o) => outcome_report(g, &o, commit_report),
            Err(e) => Some(report(g, NodeStep::Failed, 100, Some(upgrade::chain(&e)))),
        }
    });
    Ok(())
}

async fn start_revert(
    app: &Shared,
    store: &Store,
    plan: &ClusterPlan,
    me: u32,
) -> Result<(), qcluster::Error> {
    let Ok(claim) = app.jobs.claim(JobKind::Commit) else {
        return Ok(()); // the next tick
    };
    let g = plan.generation;
    let reason = plan.rollback_reason();
    crate::log(&format!("plan {g}: rolling back ({reason})"));
    store
        .report(me, &report(g, NodeStep::RollingBack, 100, None))
        .await?;
    run_job(app, store, me, g, claim, "rollback", move |a| {
        match a.agent.revert(&reason, &Observer(a.jobs.meter.clone())) {
            Ok(o) => outcome_report(g, &o, revert_report),
            Err(e) => Some(report(g, NodeStep::Failed, 100, Some(upgrade::chain(&e)))),
        }
    });
    Ok(())
}

async fn discard(app: &Shared, store: &Store, g: u64, me: u32) -> Result<(), qcluster::Error> {
    let a = app.clone();
    let r = tokio::task::spawn_blocking(move || match a.agent.state()?.stage {
        Stage::Prepared(_) => a.agent.cancel(&qimg::NoProgress).map(|_| ()),
        _ => Ok(()),
    })
    .await;
    let rep = match r {
        Ok(Ok(())) => report(g, NodeStep::Discarded, 0, None),
        Ok(Err(e)) => report(g, NodeStep::Failed, 0, Some(upgrade::chain(&e))),
        Err(e) => report(g, NodeStep::Failed, 0, Some(e.to_string())),
    };
    crate::log(&format!("plan {g}: discarded what was prepared"));
    store.report(me, &rep).await
}

#[cfg(test)]
mod tests;
