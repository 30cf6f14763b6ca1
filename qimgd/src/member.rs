//! A cluster node's member loop: carries out the plan's current generation on
//! this node with its own engine, and reports what it did under that generation.
//! It acts only on the current generation: a report or a command of an older
//! plan is never taken for the current one. The coordinator
//! (`crate::coordinator`) moves the plan on from the reports.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qcluster::{ClusterPlan, NodeReport, NodeStep, PlanPhase, Store};
use upgrade::CommitOutcome;
use upgrade::state::Stage;

use crate::api::Shared;
use crate::jobs::{JobKind, Observer};

/// How often the loop looks at the plan while a job of this node's runs (its
/// progress is reported at this pace).
pub const POLL: Duration = Duration::from_millis(200);

/// How often it looks otherwise: etcd's watch wakes it on every change of the
/// plan or of a report, and a boot of this node wakes it too; the poll only
/// covers a watch that broke.
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
    let Some(c) = app.cluster.as_ref() else {
        return;
    };
    let me = c.membership.node_id;
    let mut last_error = String::new();
    let mut changes = app.changes.subscribe();
    loop {
        // At the next poll, or at once when the plan or a report changed.
        let nap = if app.jobs.running().is_some() {
            POLL
        } else {
            IDLE_POLL
        };
        // Woken by a change: what woke it is in the mirror; at the poll: etcd.
        let fresh = tokio::select! {
            _ = tokio::time::sleep(nap) => true,
            _ = changes.changed() => false,
        };
        let Some(store) = c.store() else {
            continue;
        };
        if let Err(e) = step(&app, store, me, fresh).await {
            let text = upgrade::chain(&e);
            if text != last_error {
                crate::log(&format!("member: {text}"));
                last_error = text;
            }
        }
    }
}

/// One look at the plan and this node's report (`fresh`: read from etcd, else
/// as the watch delivered them), and what it calls for.
async fn step(app: &Shared, store: &Store, me: u32, fresh: bool) -> Result<(), qcluster::Error> {
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
        return Ok(());
    };
    let g = plan.generation;
    let own = own.filter(|(r, _)| r.generation == g);
    let mine = own.as_ref().map(|(r, _)| r.step);
    let down = plan.reboots_ahead(me, mine);
    if app.stepping_down.swap(down, Ordering::SeqCst) != down {
        app.changes.send_modify(|n| *n += 1); // the coordinator loop acts at once
    }
    match (plan.phase, mine) {
        (PlanPhase::Preparing, None) if !busy => start_prepare(app, store, &plan, me).await?,
        (PlanPhase::Preparing, Some(NodeStep::Preparing)) if busy => {
            // Only a change is written, and never over the prepare's own final
            // report (written by its job meanwhile).
            let p = app.jobs.meter.percent();
            if let Some((r, rev)) = own.filter(|(r, _)| r.progress != p) {
                store
                    .report_if(me, &NodeReport { progress: p, ..r }, rev)
                    .await?;
            }
        }
        (PlanPhase::Preparing, Some(NodeStep::Preparing)) => {
            // Reported as preparing, and nothing runs: the agent restarted
            // mid-prepare. Preparing again first undoes the interrupted one.
            crate::log(&format!(
                "plan {g}: the prepare was interrupted; starting it again"
            ));
            start_prepare(app, store, &plan, me).await?
        }
        (PlanPhase::Committing, Some(NodeStep::Prepared)) if !busy && plan.may_commit(me) => {
            start_commit(app, store, g, me).await?
        }
        (PlanPhase::Committing | PlanPhase::RollingBack, Some(NodeStep::Committing)) if !busy => {
            // After a platform commit's reboot: what the boot decided; after a
            // restart mid-commit: commit again (the engine finishes it).
            let st = engine_state(app).await;
            match st {
                Some((s, _)) if matches!(&s.stage, Stage::Committed(p) if p.to.version.to_string() == plan.target_version) =>
                {
                    store
                        .report(me, &booted(app, report(g, NodeStep::Committed, 100, None)))
                        .await?;
                }
                Some((s, _)) if matches!(s.stage, Stage::Idle { .. }) => {
                    let why = s.failure.map_or_else(
                        || "the commit ended without committing".into(),
                        |f| f.message,
                    );
                    store
                        .report(me, &report(g, NodeStep::Failed, 100, Some(why)))
                        .await?;
                }
                Some((s, false))
                    if matches!(
                        s.stage,
                        Stage::Prepared(_)
                            | Stage::Committing(
                                _,
                                upgrade::state::CommitStep::Swap
                                    | upgrade::state::CommitStep::SetNext
                            )
                    ) =>
                {
                    if plan.phase == PlanPhase::RollingBack && matches!(s.stage, Stage::Prepared(_))
                    {
                        discard(app, store, g, me).await?
                    } else {
                        // Finished first; a rollback then brings it back.
                        crate::log(&format!(
                            "plan {g}: the commit was interrupted; committing again"
                        ));
                        start_commit(app, store, g, me).await?
                    }
                }
                _ => {}
            }
        }
        (PlanPhase::RollingBack, Some(NodeStep::Committed)) if !busy && plan.may_commit(me) => {
            revert(app, store, &plan, me).await?
        }
        (PlanPhase::RollingBack, Some(NodeStep::RollingBack)) if !busy => {
            // After the reboot back into the previous slot: what the boot decided.
            let st = engine_state(app).await;
            match st {
                Some((s, _)) if matches!(s.stage, Stage::Idle { .. }) => {
                    store
                        .report(me, &booted(app, report(g, NodeStep::RolledBack, 100, None)))
                        .await?
                }
                Some((s, false)) if matches!(s.stage, Stage::Committed(_)) => {
                    // Cut off before the reboot was recorded, or the loader booted
                    // the new slot again: go back again (the batch's limit bounds it).
                    crate::log(&format!(
                        "plan {g}: still on the new release after rolling back; going back again"
                    ));
                    revert(app, store, &plan, me).await?
                }
                _ => {}
            }
        }
        (PlanPhase::RollingBack, None | Some(NodeStep::Prepared)) if !busy => {
            discard(app, store, g, me).await?
        }
        (PlanPhase::Discarding, None | Some(NodeStep::Prepared | NodeStep::Preparing)) if !busy => {
            discard(app, store, g, me).await?
        }
        _ => {}
    }
    Ok(())
}

/// The engine's state, and whether a simulated reboot is still due (what a boot
/// decided is read from these after a reboot); `None` when it cannot be read.
async fn engine_state(app: &Shared) -> Option<(upgrade::state::NodeState, bool)> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || {
        let due = upgrade::sim::reboot_due(a.agent.node());
        a.agent.state().ok().map(|s| (s, due))
    })
    .await
    .ok()
    .flatten()
}

async fn start_prepare(
    app: &Shared,
    store: &Store,
    plan: &ClusterPlan,
    me: u32,
) -> Result<(), qcluster::Error> {
    let g = plan.generation;
    let img = match crate::paths::resolve(&app.config.upgrade_dir, &plan.image_path) {
        Ok(i) => i,
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
    app.jobs
        .meter
        .reset(std::fs::metadata(&img.file).map_or(1, |m| m.len()));
    crate::log(&format!("plan {g}: preparing {}", plan.image_path));
    let req = upgrade::PrepareRequest {
        path: img.file,
        auto_commit: false,
        rolling: plan.rolling,
        nodes_per_batch: plan.nodes_per_batch,
        shown_as: Some(img.shown),
    };
    let (a, s) = (app.clone(), store.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _claim = claim;
        let r = a
            .agent
            .prepare(&req, &Observer(a.jobs.meter.clone()), &a.cancel);
        let rep = match &r {
            Ok(_) => report(g, NodeStep::Prepared, 100, None),
            Err(e) => report(g, NodeStep::Failed, 0, Some(upgrade::chain(e))),
        };
        crate::log(&format!("plan {g}: prepare ended: {:?}", rep.step));
        if let Err(e) = rt.block_on(s.report(me, &rep)) {
            crate::log(&format!("plan {g}: reporting the prepare: {e}"));
        }
    });
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
    let (a, s) = (app.clone(), store.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _claim = claim;
        let rep = match a.agent.commit(&Observer(a.jobs.meter.clone())) {
            Ok(CommitOutcome::Committed { downtime_ms }) => NodeReport {
                downtime_ms,
                ..report(g, NodeStep::Committed, 100, None)
            },
            // The machine reboots; after the boot the loop reports its outcome.
            Ok(CommitOutcome::Rebooting { .. }) => return,
            Ok(CommitOutcome::RolledBack { reason } | CommitOutcome::Failed { reason }) => {
                report(g, NodeStep::Failed, 100, Some(reason))
            }
            Err(e) => report(g, NodeStep::Failed, 100, Some(upgrade::chain(&e))),
        };
        crate::log(&format!("plan {g}: commit ended: {:?}", rep.step));
        if let Err(e) = rt.block_on(s.report(me, &rep)) {
            crate::log(&format!("plan {g}: reporting the commit: {e}"));
        }
    });
    Ok(())
}

async fn revert(
    app: &Shared,
    store: &Store,
    plan: &ClusterPlan,
    me: u32,
) -> Result<(), qcluster::Error> {
    let Ok(claim) = app.jobs.claim(JobKind::Commit) else {
        return Ok(()); // the next tick
    };
    let g = plan.generation;
    let reason = plan
        .error
        .clone()
        .unwrap_or_else(|| "another node failed its commit".into());
    crate::log(&format!("plan {g}: rolling back ({reason})"));
    store
        .report(me, &report(g, NodeStep::RollingBack, 100, None))
        .await?;
    let a = app.clone();
    // The claim is held until the outcome is reported (see `step`).
    let r = tokio::task::spawn_blocking(move || {
        a.agent.revert(&reason, &Observer(a.jobs.meter.clone()))
    })
    .await;
    let rep = match r {
        Ok(Ok(st)) if st.phase() == upgrade::wire::Phase::Idle => {
            report(g, NodeStep::RolledBack, 100, None)
        }
        // Rebooting into the previous slot; after the boot the loop reports.
        Ok(Ok(st)) if matches!(st.stage, Stage::Committing(..)) => return Ok(()),
        Ok(Ok(st)) => report(
            g,
            NodeStep::Failed,
            100,
            Some(format!("rolling back failed: {}", st.details)),
        ),
        Ok(Err(e)) => report(g, NodeStep::Failed, 100, Some(upgrade::chain(&e))),
        Err(e) => report(g, NodeStep::Failed, 100, Some(e.to_string())),
    };
    let r = store.report(me, &rep).await;
    drop(claim);
    r
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
