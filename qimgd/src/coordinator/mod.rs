//! The coordinator: the node holding the coordinator key in etcd (created under
//! its session's lease by a transaction, `qcluster::store::election`; when its
//! agent dies, the lease expires and another node takes it; when it stops
//! cleanly or reboots for the plan, it gives the key up at once). Its loop only reconciles what etcd says — the plan and the
//! nodes' reports for its generation — and moves the plan on with
//! compare-and-swap, so a new coordinator picks up where the last one stopped.

use std::time::Duration;

use qcluster::plan::OnFailure;
use qcluster::{ClusterPlan, ClusterSpec, NodeReport, NodeStep, PlanPhase, Store};

use crate::api::Shared;
use crate::restriper::{DataSafety, Source};

/// How often the coordinator reconciles.
pub const POLL: Duration = Duration::from_millis(200);

/// How often a node that does not coordinate checks that one does; it also
/// campaigns as soon as etcd's watch says the coordinator key went.
pub const CAMPAIGN_POLL: Duration = Duration::from_secs(1);

/// What the coordinator knows besides etcd: the time, itself, its limits and the
/// data-safety gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Now (Unix ms).
    pub now_ms: u64,
    /// The coordinator's node (it reboots last).
    pub me: u32,
    /// How long a batch may take to come back healthy.
    pub batch_limit_ms: u64,
    /// How long the data-safety gate may hold the next batch back.
    pub gate_limit_ms: u64,
    /// The data-safety gate's answer: `Source::initial`, then the probe's while a gate holds.
    pub data: DataSafety,
}

/// The next plan, from the plan and the reports of its generation (pure).
pub fn next(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    reports: &[(u32, NodeReport)],
    cx: &Ctx,
) -> Option<ClusterPlan> {
    let mine = |id: u32| {
        reports
            .iter()
            .find(|(i, r)| *i == id && r.generation == plan.generation)
            .map(|(_, r)| r)
    };
    let steps: Vec<(String, Option<&NodeReport>)> = spec
        .nodes
        .iter()
        .map(|n| (n.name.clone(), mine(n.id)))
        .collect();
    let all = |s: NodeStep| steps.iter().all(|(_, r)| r.is_some_and(|r| r.step == s));
    let failed = steps.iter().find_map(|(name, r)| {
        r.filter(|r| r.step == NodeStep::Failed)
            .map(|r| format!("node {name}: {}", r.error.as_deref().unwrap_or("failed")))
    });
    let mut p = plan.clone();
    match plan.phase {
        PlanPhase::Preparing => {
            if let Some(why) = failed {
                p.phase = PlanPhase::Discarding;
                p.error = Some(format!(
                    "the prepare failed on {why}; every node discards what it prepared"
                ));
            } else if all(NodeStep::Prepared) {
                p.phase = if plan.auto_commit {
                    PlanPhase::Committing
                } else {
                    PlanPhase::Prepared
                };
            } else {
                return None;
            }
        }
        PlanPhase::Discarding => {
            let settled = steps.iter().all(|(_, r)| {
                r.is_some_and(|r| matches!(r.step, NodeStep::Discarded | NodeStep::Failed))
            });
            if !settled {
                return None;
            }
            p.phase = PlanPhase::Failed;
        }
        PlanPhase::Committing => {
            if let Some(why) = failed {
                return Some(stop_or_roll_back(plan, spec, reports, cx, &why));
            } else if plan.in_batches() {
                return rolling(plan, spec, reports, cx);
            } else if all(NodeStep::Committed) {
                p.phase = PlanPhase::Committed;
                p.downtime_ms = steps
                    .iter()
                    .filter_map(|(_, r)| r.and_then(|r| r.downtime_ms))
                    .max();
            } else {
                return None;
            }
        }
        PlanPhase::RollingBack => {
            // The nodes going back do so batch by batch under the same gates (a
            // rolling platform upgrade), then every node must have settled.
            if !plan.batches.is_empty() {
                match batch_step(plan, spec, reports, cx, is_back, "its previous release") {
                    Batch::Wait => return None,
                    Batch::Moved(p) => return Some(*p),
                    Batch::Last => {}
                }
            }
            let settled = steps
                .iter()
                .all(|(_, r)| r.is_some_and(|r| is_back(r.step)));
            if !settled {
                return None;
            }
            p.phase = PlanPhase::Failed;
        }
        PlanPhase::Prepared | PlanPhase::Committed | PlanPhase::Failed => return None,
    }
    Some(p)
}

/// True once a node is back on the release it ran (or never left it).
fn is_back(step: NodeStep) -> bool {
    matches!(
        step,
        NodeStep::RolledBack | NodeStep::Failed | NodeStep::Discarded
    )
}

/// A node failed its commit (`why` names it). The request's policy decides:
/// stop where the rollout is, or bring every node that committed (or is
/// committing) back to the release it ran — at once for an instant or complete
/// commit, batch by batch for a rolling one (the coordinator's node last).
fn stop_or_roll_back(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    reports: &[(u32, NodeReport)],
    cx: &Ctx,
    why: &str,
) -> ClusterPlan {
    let mut p = plan.clone();
    if plan.on_failure == OnFailure::Stop {
        p.phase = PlanPhase::Failed;
        p.error = Some(format!(
            "the commit failed on {why}; the rollout stopped (on_failure: stop)"
        ));
        return p;
    }
    p.phase = PlanPhase::RollingBack;
    p.error = Some(format!(
        "the commit failed on {why}; every node goes back to the release it ran"
    ));
    p.paused = false;
    p.paused_error = None;
    p.batch = 0;
    p.batch_started_ms = cx.now_ms;
    p.gate_until_ms = 0;
    p.batches = if plan.in_batches() {
        let back: Vec<u32> = spec
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| {
                reports.iter().any(|(i, r)| {
                    i == id
                        && r.generation == plan.generation
                        && matches!(r.step, NodeStep::Committed | NodeStep::Committing)
                })
            })
            .collect();
        batches(plan, spec, &back, cx.me)
    } else {
        vec![]
    };
    p
}

/// The batches `ids` reboot in: the plan's batch size, never a voter majority,
/// the coordinator's node last.
fn batches(plan: &ClusterPlan, spec: &ClusterSpec, ids: &[u32], me: u32) -> Vec<Vec<u32>> {
    let voters: Vec<u32> = spec.voters().iter().map(|n| n.id).collect();
    let k = plan.nodes_per_batch.unwrap_or(1) as usize;
    qcluster::plan::batches(ids, &voters, Some(me), k)
}

/// The step of a rolling commit: batches fixed at its start (the coordinator's
/// node last), a batch done when each of its nodes committed, then the data-safety
/// gate (the restriper finished) before the next; a batch not back within the
/// limit pauses the reboots with the reason.
fn rolling(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    reports: &[(u32, NodeReport)],
    cx: &Ctx,
) -> Option<ClusterPlan> {
    let mut p = plan.clone();
    if plan.batches.is_empty() {
        let ids: Vec<u32> = spec.nodes.iter().map(|n| n.id).collect();
        p.batches = batches(plan, spec, &ids, cx.me);
        p.batch = 0;
        p.batch_started_ms = cx.now_ms;
        p.gate_until_ms = 0;
        return Some(p);
    }
    match batch_step(
        plan,
        spec,
        reports,
        cx,
        |s| s == NodeStep::Committed,
        "the new release",
    ) {
        Batch::Wait => None,
        Batch::Moved(p) => Some(*p),
        Batch::Last => {
            p.phase = PlanPhase::Committed;
            Some(p)
        }
    }
}

/// Where the current batch of a rolling reboot (forward or back) is.
enum Batch {
    /// Nothing to write yet.
    Wait,
    /// The plan moved on (gate started, next batch, or paused on an error).
    Moved(Box<ClusterPlan>),
    /// The last batch is done and its gate passed.
    Last,
}

/// One batch of a rolling reboot: done when each of its nodes reached `done`,
/// then the data-safety gate, then the next batch; a batch not done within the
/// limit pauses the reboots naming the nodes (`to`: where they were going).
fn batch_step(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    reports: &[(u32, NodeReport)],
    cx: &Ctx,
    done: impl Fn(NodeStep) -> bool,
    to: &str,
) -> Batch {
    if plan.paused || plan.paused_error.is_some() {
        return Batch::Wait;
    }
    let Some(current) = plan.batches.get(plan.batch) else {
        return Batch::Last;
    };
    let mut p = plan.clone();
    let reached = |id: &u32| {
        reports
            .iter()
            .any(|(i, r)| i == id && r.generation == plan.generation && done(r.step))
    };
    if !current.iter().all(reached) {
        if cx.now_ms.saturating_sub(plan.batch_started_ms) > cx.batch_limit_ms {
            let late: Vec<String> = current
                .iter()
                .filter(|id| !reached(id))
                .filter_map(|id| spec.node(*id).map(|n| n.name.clone()))
                .collect();
            p.paused_error = Some(format!(
                "node {} did not come back healthy on {to} within {} s",
                late.join(", "),
                cx.batch_limit_ms / 1000
            ));
            return Batch::Moved(Box::new(p));
        }
        return Batch::Wait;
    }
    // The batch is back: the data-safety gate before the next one. The simulated
    // restriper needs time per rebooted node from when the last of them was back
    // (by the nodes' reports); a probed one says when it is done.
    let mut gate_until_ms = plan.gate_until_ms;
    if gate_until_ms == 0 {
        gate_until_ms = match cx.data {
            DataSafety::Timed { ms_per_node } => {
                let back = reports
                    .iter()
                    .filter(|(i, r)| current.contains(i) && r.generation == plan.generation)
                    .map(|(_, r)| {
                        if r.at_ms == 0 {
                            cx.now_ms
                        } else {
                            r.at_ms.min(cx.now_ms)
                        }
                    })
                    .max()
                    .unwrap_or(cx.now_ms);
                back + ms_per_node * current.len() as u64
            }
            _ => cx.now_ms,
        };
        p.gate_until_ms = gate_until_ms;
        // Written first unless it is already up: readers see the gate hold.
        if !(matches!(cx.data, DataSafety::Timed { .. }) && cx.now_ms >= gate_until_ms) {
            return Batch::Moved(Box::new(p));
        }
    }
    match &cx.data {
        DataSafety::Timed { .. } if cx.now_ms < gate_until_ms => return Batch::Wait,
        DataSafety::Timed { .. } | DataSafety::Safe => {}
        DataSafety::NoSource(why) => {
            // Never a timer in its place: the reboots pause, saying why.
            p.paused_error = Some(format!("the data-safety gate cannot pass: {why}"));
            return Batch::Moved(Box::new(p));
        }
        DataSafety::AtRisk(why) => {
            if cx.now_ms.saturating_sub(plan.gate_until_ms) > cx.gate_limit_ms {
                p.paused_error = Some(format!(
                    "the data-safety gate did not pass within {} s: {why}",
                    cx.gate_limit_ms / 1000
                ));
                return Batch::Moved(Box::new(p));
            }
            return Batch::Wait;
        }
    }
    if plan.batch + 1 >= plan.batches.len() {
        return Batch::Last;
    }
    p.batch += 1;
    p.batch_started_ms = cx.now_ms;
    p.gate_until_ms = 0;
    Batch::Moved(Box::new(p))
}

/// One reconciliation; returns when the plan's data-safety gate is up (Unix ms,
/// 0 for none), for the loop to wake then.
async fn reconcile(
    store: &Store,
    spec: &ClusterSpec,
    mut cx: Ctx,
    probe: Option<&[String]>,
    mut fresh: bool,
) -> Result<u64, qcluster::Error> {
    loop {
        // Read from etcd at the poll; as the watch delivered it otherwise (a stale
        // plan only loses its compare-and-swap).
        let (plan, reports) = if fresh {
            (store.plan().await?, store.reports().await?)
        } else {
            (store.plan_seen().await?, store.reports_seen().await?)
        };
        let Some((plan, rev)) = plan else {
            return Ok(0);
        };
        // The restriper is asked only while a gate holds the next batch back.
        if let Some(argv) = probe.filter(|_| plan.gating(cx.now_ms, false)) {
            let argv = argv.to_vec();
            cx.data = tokio::task::spawn_blocking(move || {
                crate::restriper::safety(crate::restriper::probe(&argv))
            })
            .await
            .unwrap_or_else(|e| DataSafety::AtRisk(format!("the restriper probe: {e}")));
        }
        let Some(p) = next(&plan, spec, &reports, &cx) else {
            return Ok(plan.gate_until_ms);
        };
        // A report the mirror has not seen yet must not pause or fail the rollout:
        // such a decision is made again on what etcd says.
        if !fresh && grave(&plan, &p) {
            fresh = true;
            continue;
        }
        if !store.put_plan_if(&p, Some(rev)).await? {
            return Ok(plan.gate_until_ms);
        }
        crate::log(&format!(
            "coordinator: plan {} {:?} -> {:?}{}",
            p.generation,
            plan.phase,
            p.phase,
            p.error
                .as_deref()
                .or(p.paused_error.as_deref())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        return Ok(p.gate_until_ms);
    }
}

/// Whether going from `from` to `to` stops or undoes the rollout (a pause on an
/// error, a failure, a discard, a rollback).
fn grave(from: &ClusterPlan, to: &ClusterPlan) -> bool {
    (to.paused_error.is_some() && from.paused_error.is_none())
        || (to.phase != from.phase
            && matches!(
                to.phase,
                PlanPhase::Failed | PlanPhase::Discarding | PlanPhase::RollingBack
            ))
}

/// Campaigns for coordinator and, while it holds the key, reconciles. Runs until
/// dropped.
pub async fn run(app: Shared) {
    let Some(c) = app.cluster.as_ref() else {
        return;
    };
    let me = c.membership.node_id;
    let spec = c.membership.spec.clone();
    // The lease this node leads under (its session's, when it won).
    let mut led_under: Option<i64> = None;
    let mut leading = false;
    let mut last_error = String::new();
    let mut changes = app.changes.subscribe();
    let mut vacancy = app.vacancy.subscribe();
    // When a data-safety gate's time is up (Unix ms), to wake exactly then.
    let mut gate_until: u64 = 0;
    loop {
        // The coordinator (and a node stepping down) acts on changes, at the poll
        // at the latest, and exactly when a gate's time is up; the others
        // campaign when the coordinator key goes, or at their slower poll.
        // Only the full poll reads etcd; a change or a gate's end is in the mirror.
        let mut fresh = false;
        if leading {
            let nap = match gate_until.checked_sub(qcluster::plan::now_ms()) {
                Some(left) if left > 0 => POLL.min(Duration::from_millis(left)),
                _ => POLL,
            };
            fresh = tokio::select! {
                _ = tokio::time::sleep(nap) => nap == POLL,
                _ = changes.changed() => false,
            };
        } else {
            tokio::select! {
                _ = tokio::time::sleep(CAMPAIGN_POLL) => {}
                _ = vacancy.changed() => {}
            }
        }
        let (Some(store), Some(lease)) = (c.store(), c.session.lease()) else {
            // No etcd yet, or no session: a lead under a lost lease went with it.
            set_leading(&app, &mut leading, false);
            continue;
        };
        let r: Result<(), qcluster::Error> = async {
            if app.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
                // This node reboots for the plan: another node finishes it.
                if leading {
                    store.resign(me, lease).await?;
                    crate::log("this node reboots for the upgrade: it steps down as coordinator");
                    set_leading(&app, &mut leading, false);
                }
                return Ok(());
            }
            // Somebody else coordinates: nothing to campaign for (a read, where a
            // campaign would be a write on every etcd member).
            if !leading && store.coordinator().await?.is_some_and(|id| id != me) {
                return Ok(());
            }
            // The key lives under the session's lease, which one keeper renews:
            // while that lease is the one it won under, the lead holds without
            // asking again.
            let now = (leading && led_under == Some(lease)) || store.try_lead(me, lease).await?;
            led_under = now.then_some(lease);
            set_leading(&app, &mut leading, now);
            if leading {
                let probe = match &app.safety {
                    Source::Probe(argv) => Some(argv.as_slice()),
                    _ => None,
                };
                let cx = Ctx {
                    now_ms: qcluster::plan::now_ms(),
                    me,
                    batch_limit_ms: app.config.batch_limit_secs * 1000,
                    gate_limit_ms: app.config.data_safety_limit_secs * 1000,
                    data: app.safety.initial(),
                };
                gate_until = reconcile(store, &spec, cx, probe, fresh).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let text = upgrade::chain(&e);
            if text != last_error {
                crate::log(&format!("coordinator: {text}"));
                last_error = text;
            }
        }
    }
}

/// Notes a change of lead (logged, and in `App::coordinating` for a clean stop).
fn set_leading(app: &Shared, leading: &mut bool, now: bool) {
    if now != *leading {
        crate::log(if now {
            "this node is the cluster's coordinator"
        } else {
            "this node is no longer the coordinator"
        });
        *leading = now;
        app.coordinating
            .store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a stopping agent tries to end its session.
pub const RESIGN_LIMIT: Duration = Duration::from_secs(2);

/// On a clean stop: ends this node's session ([`qcluster::Session::close`]):
/// its lease is revoked, so its registration and, if it coordinates, the
/// coordinator key go at once, and another node takes over now (etcd's watch
/// tells them) instead of when the lease would have expired. At most
/// [`RESIGN_LIMIT`].
pub async fn resign(app: &Shared) {
    let Some(c) = app.cluster.as_ref() else {
        return;
    };
    let Some(store) = c.store() else {
        return;
    };
    let leading = app.coordinating.load(std::sync::atomic::Ordering::SeqCst);
    match tokio::time::timeout(RESIGN_LIMIT, c.session.close(store)).await {
        Ok(Ok(true)) if leading => crate::log("resigned as the cluster's coordinator"),
        Ok(Ok(_)) => crate::log("left the cluster's session"),
        Ok(Err(e)) => crate::log(&format!(
            "ending this node's session: {}; its keys go when the lease expires",
            upgrade::chain(&e)
        )),
        Err(_) => crate::log(&format!(
            "ending this node's session took over {RESIGN_LIMIT:?}; its keys go when the lease expires"
        )),
    }
}

#[cfg(test)]
mod tests;
