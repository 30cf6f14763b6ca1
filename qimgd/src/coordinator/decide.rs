//! The coordinator's decision, pure: the plan, the reports of its generation and
//! the context → the next plan (`None`: nothing to change). Table-tested in
//! `super::tests`.

use qcluster::plan::OnFailure;
use qcluster::{ClusterPlan, ClusterSpec, NodeReport, NodeStep, PlanPhase};

use super::Ctx;
use crate::restriper::DataSafety;

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
                committed(&mut p, cx);
            } else {
                return None;
            }
        }
        PlanPhase::RollingBack => {
            // The nodes going back do so batch by batch under the same gates (a
            // rolling platform upgrade), then every node must have settled.
            if !plan.batches.is_empty() {
                match batch_step(
                    plan,
                    spec,
                    reports,
                    cx,
                    NodeStep::is_back,
                    "its previous release",
                ) {
                    Batch::Wait => return None,
                    Batch::Moved(p) => return Some(*p),
                    Batch::Last => {}
                }
            }
            let settled = steps
                .iter()
                .all(|(_, r)| r.is_some_and(|r| r.step.is_back()));
            if !settled {
                return None;
            }
            p.phase = PlanPhase::Failed;
            // Asked for: the cluster is back where it was, unless a node
            // could not go back.
            if plan.rollback.is_some() {
                match failed {
                    Some(why) => {
                        p.error = Some(format!("the rollback failed on {why}"));
                    }
                    None => p.phase = PlanPhase::RolledBack,
                }
            }
        }
        PlanPhase::Committed => {
            // Finalized by itself once its time ran out.
            let due = plan.auto_finalize_at_ms()?;
            if cx.now_ms < due {
                return None;
            }
            p.finalized = Some(auto_finalized(cx));
        }
        PlanPhase::Prepared | PlanPhase::Failed | PlanPhase::RolledBack => return None,
    }
    Some(p)
}

/// Every node committed: the time it did (a rollback window's start), and
/// finalized at once when asked for (`auto_finalize_after_secs: 0`).
fn committed(p: &mut ClusterPlan, cx: &Ctx) {
    p.committed_ms = cx.now_ms;
    if p.auto_finalize_ms == Some(0) {
        p.finalized = Some(auto_finalized(cx));
    }
}

/// Who finalizes an upgrade whose `auto_finalize_after_secs` ran out.
fn auto_finalized(cx: &Ctx) -> qapi::history::Started {
    qapi::history::Started {
        at_ms: cx.now_ms,
        by: qapi::rollback::AUTO_FINALIZE.into(),
        from: format!("the coordinator (node {})", cx.me),
    }
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
    p.error = Some(format!(
        "the commit failed on {why}; every node goes back to the release it ran"
    ));
    let order = if plan.in_batches() {
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
    p.roll_back(order, cx.now_ms);
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
        p.batches = match plan.canary {
            Some(n) => canary_batches(plan, spec, &ids, cx.me, n),
            None => batches(plan, spec, &ids, cx.me),
        };
        p.batch = 0;
        p.batch_started_ms = cx.now_ms;
        p.gate_until_ms = 0;
        return Some(p);
    }
    // The canaries soaked long enough: the rollout goes on by itself.
    if plan.soaking && plan.soak_until_ms != 0 && cx.now_ms >= plan.soak_until_ms {
        p.soaking = false;
        p.paused = false;
        p.soak_until_ms = 0;
        p.batch_started_ms = cx.now_ms;
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
        // The canaries are back and their gate passed: the rollout waits on
        // them, for the soak time or until the operator resumes it.
        Batch::Moved(mut p) if plan.canary.is_some() && plan.batch == 0 && p.batch == 1 => {
            p.soaking = true;
            p.paused = true;
            p.soak_until_ms = if plan.soak_ms == 0 {
                0
            } else {
                cx.now_ms + plan.soak_ms
            };
            Some(*p)
        }
        Batch::Moved(p) => Some(*p),
        Batch::Last => {
            p.phase = PlanPhase::Committed;
            committed(&mut p, cx);
            Some(p)
        }
    }
}

/// A rolling commit's batches after `n` canaries: the first `n` nodes of the
/// order (never the coordinator's, never a voter majority), then the rest at
/// the plan's batch size, the coordinator's node last.
fn canary_batches(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    ids: &[u32],
    me: u32,
    n: u32,
) -> Vec<Vec<u32>> {
    let voters: Vec<u32> = spec.voters().iter().map(|n| n.id).collect();
    let first = qcluster::plan::batches(ids, &voters, Some(me), n as usize)
        .into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .filter(|id| *id != me)
        .collect::<Vec<u32>>();
    let rest: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| !first.contains(id))
        .collect();
    let mut out = vec![first];
    out.extend(batches(plan, spec, &rest, me));
    out.retain(|b| !b.is_empty());
    out
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
            // Said where everyone reads the plan, when the answer changes: a
            // probe that cannot ask the restriper is not a restripe.
            if plan.gate_why.as_deref() != Some(why.as_str()) {
                p.gate_why = Some(why.clone());
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
    p.gate_why = None;
    Batch::Moved(Box::new(p))
}

/// Whether going from `from` to `to` stops or undoes the rollout (a pause on an
/// error, a failure, a discard, a rollback).
pub(super) fn grave(from: &ClusterPlan, to: &ClusterPlan) -> bool {
    (to.paused_error.is_some() && from.paused_error.is_none())
        || (to.phase != from.phase
            && matches!(
                to.phase,
                PlanPhase::Failed | PlanPhase::Discarding | PlanPhase::RollingBack
            ))
}
