//! The coordinator: the node holding the coordinator key in etcd (created under
//! its lease by a transaction; when its agent dies, the lease expires and another
//! node takes it). Its loop only reconciles what etcd says — the plan and the
//! nodes' reports for its generation — and moves the plan on with
//! compare-and-swap, so a new coordinator picks up where the last one stopped.

use std::time::{Duration, Instant};

use qcluster::plan::OnFailure;
use qcluster::{ClusterPlan, ClusterSpec, NodeReport, NodeStep, PlanPhase, Store};

use crate::api::Shared;
use crate::restriper::DataSafety;

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
    /// How long the (simulated) restriper works per rebooted node.
    pub restripe_ms_per_node: u64,
    /// How long the data-safety gate may hold the next batch back.
    pub gate_limit_ms: u64,
    /// The restriper's answer, asked while a gate holds (else `Timed`).
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
                    Batch::Moved(p) => return Some(p),
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
        Batch::Moved(p) => Some(p),
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
    Moved(ClusterPlan),
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
            return Batch::Moved(p);
        }
        return Batch::Wait;
    }
    // The batch is back: the data-safety gate before the next one. The simulated
    // restriper needs time per rebooted node from when the last of them was back
    // (by the nodes' reports); a probed one says when it is done.
    let mut gate_until_ms = plan.gate_until_ms;
    if gate_until_ms == 0 {
        gate_until_ms = match cx.data {
            DataSafety::Timed => {
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
                back + cx.restripe_ms_per_node * current.len() as u64
            }
            _ => cx.now_ms,
        };
        p.gate_until_ms = gate_until_ms;
        // Written first unless it is already up: readers see the gate hold.
        if !(matches!(cx.data, DataSafety::Timed) && cx.now_ms >= gate_until_ms) {
            return Batch::Moved(p);
        }
    }
    match &cx.data {
        DataSafety::Timed if cx.now_ms < gate_until_ms => return Batch::Wait,
        DataSafety::Timed | DataSafety::Safe => {}
        DataSafety::AtRisk(why) => {
            if cx.now_ms.saturating_sub(plan.gate_until_ms) > cx.gate_limit_ms {
                p.paused_error = Some(format!(
                    "the data-safety gate did not pass within {} s: {why}",
                    cx.gate_limit_ms / 1000
                ));
                return Batch::Moved(p);
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
    Batch::Moved(p)
}

/// One reconciliation; returns when the plan's data-safety gate is up (Unix ms,
/// 0 for none), for the loop to wake then.
async fn reconcile(
    store: &Store,
    spec: &ClusterSpec,
    mut cx: Ctx,
    probe: Option<&[String]>,
    fresh: bool,
) -> Result<u64, qcluster::Error> {
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
    let mut gate = plan.gate_until_ms;
    if let Some(p) = next(&plan, spec, &reports, &cx)
        && store.put_plan_if(&p, Some(rev)).await?
    {
        gate = p.gate_until_ms;
        crate::log(&format!(
            "coordinator: plan {} {:?} -> {:?}{}",
            p.generation,
            plan.phase,
            p.phase,
            p.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    Ok(gate)
}

/// Campaigns for coordinator and, while it holds the key, reconciles. Runs until
/// dropped.
pub async fn run(app: Shared) {
    let Some(c) = app.cluster.as_ref() else {
        return;
    };
    let me = c.membership.node_id;
    let spec = c.membership.spec.clone();
    let ttl = Duration::from_secs(app.config.cluster_lease_secs.max(1));
    let mut lease: Option<(i64, Instant)> = None;
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
        let Some(store) = c.store() else {
            continue;
        };
        let r: Result<(), qcluster::Error> = async {
            if app.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
                // This node reboots for the plan: another node finishes it. A
                // lease of a lost campaign is left to expire.
                if let Some((id, _)) = lease.take()
                    && leading
                {
                    store.revoke(id).await?;
                }
                if leading {
                    crate::log("this node reboots for the upgrade: it steps down as coordinator");
                    leading = false;
                }
                return Ok(());
            }
            // Somebody else coordinates: nothing to campaign for (a read, where a
            // campaign would be a write on every etcd member).
            if !leading && store.coordinator().await?.is_some_and(|id| id != me) {
                lease = None; // not renewed meanwhile: a new one to campaign with
                return Ok(());
            }
            // The key goes with the lease: while the lease is renewed, the lead
            // holds without asking again.
            let (id, held) = match lease {
                Some((id, renewed)) if renewed.elapsed() < ttl / 3 => (id, true),
                Some((id, _)) if store.renew(id).await? => {
                    lease = Some((id, Instant::now()));
                    (id, true)
                }
                _ => {
                    let id = store.lease(ttl.as_secs() as i64).await?;
                    lease = Some((id, Instant::now()));
                    (id, false)
                }
            };
            let now = (leading && held) || store.try_lead(me, id).await?;
            if now != leading {
                crate::log(if now {
                    "this node is the cluster's coordinator"
                } else {
                    "this node is no longer the coordinator"
                });
                leading = now;
            }
            if leading {
                let probe = app.config.restriper_probe.as_deref();
                let cx = Ctx {
                    now_ms: qcluster::plan::now_ms(),
                    me,
                    batch_limit_ms: app.config.batch_limit_secs * 1000,
                    restripe_ms_per_node: app.config.sim_restripe_ms,
                    gate_limit_ms: app.config.data_safety_limit_secs * 1000,
                    // A probe is asked while a gate holds; until then, not at risk.
                    data: if probe.is_some() {
                        DataSafety::Safe
                    } else {
                        DataSafety::Timed
                    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use qcluster::{NodeSpec, PlanMode};

    const CX: Ctx = Ctx {
        now_ms: 1_000_000,
        me: 1,
        batch_limit_ms: 60_000,
        restripe_ms_per_node: 1000,
        gate_limit_ms: 60_000,
        data: DataSafety::Timed,
    };

    fn spec() -> ClusterSpec {
        spec_of(3, 1)
    }

    fn spec_of(n: u32, max_node_failures: u32) -> ClusterSpec {
        ClusterSpec {
            name: "c".into(),
            max_node_failures,
            nodes: (1..=n)
                .map(|i| NodeSpec {
                    id: i,
                    name: format!("n{i}"),
                    agent: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    etcd_client: None,
                    etcd_peer: None,
                })
                .collect(),
        }
    }

    fn plan(phase: PlanPhase, auto_commit: bool) -> ClusterPlan {
        ClusterPlan {
            auto_commit,
            phase,
            ..ClusterPlan::new(7, "/x", "7.0.1", PlanMode::Instant)
        }
    }

    fn r(id: u32, generation: u64, step: NodeStep, downtime: Option<u64>) -> (u32, NodeReport) {
        (
            id,
            NodeReport {
                generation,
                step,
                progress: 100,
                error: (step == NodeStep::Failed).then(|| "boom".into()),
                downtime_ms: downtime,
                at_ms: 0,
            },
        )
    }

    #[test]
    fn prepared_only_when_every_node_is_and_of_this_generation() {
        let s = spec();
        let p = plan(PlanPhase::Preparing, false);
        let mut reps = vec![
            r(1, 7, NodeStep::Prepared, None),
            r(2, 7, NodeStep::Prepared, None),
        ];
        assert_eq!(next(&p, &s, &reps, &CX), None, "node 3 has not reported");
        reps.push(r(3, 6, NodeStep::Prepared, None));
        assert_eq!(
            next(&p, &s, &reps, &CX),
            None,
            "an older generation's report does not count"
        );
        reps[2] = r(3, 7, NodeStep::Prepared, None);
        assert_eq!(next(&p, &s, &reps, &CX).unwrap().phase, PlanPhase::Prepared);
        let auto = plan(PlanPhase::Preparing, true);
        assert_eq!(
            next(&auto, &s, &reps, &CX).unwrap().phase,
            PlanPhase::Committing
        );
    }

    #[test]
    fn a_failure_discards_everywhere_then_fails_naming_the_node() {
        let s = spec();
        let p = plan(PlanPhase::Preparing, false);
        let reps = vec![
            r(1, 7, NodeStep::Preparing, None),
            r(2, 7, NodeStep::Failed, None),
        ];
        let d = next(&p, &s, &reps, &CX).unwrap();
        assert_eq!(d.phase, PlanPhase::Discarding);
        assert!(
            d.error.as_deref().unwrap().contains("node n2: boom"),
            "{:?}",
            d.error
        );
        let settled = vec![
            r(1, 7, NodeStep::Discarded, None),
            r(2, 7, NodeStep::Failed, None),
            r(3, 7, NodeStep::Discarded, None),
        ];
        assert_eq!(next(&d, &s, &reps[..1], &CX), None);
        assert_eq!(
            next(&d, &s, &settled, &CX).unwrap().phase,
            PlanPhase::Failed
        );
    }

    #[test]
    fn an_instant_commit_failing_somewhere_rolls_every_node_back() {
        let s = spec();
        let p = plan(PlanPhase::Committing, false);
        let reps = vec![
            r(1, 7, NodeStep::Committed, Some(4)),
            r(2, 7, NodeStep::Failed, None),
            r(3, 7, NodeStep::Committing, None),
        ];
        let back = next(&p, &s, &reps, &CX).unwrap();
        assert_eq!(back.phase, PlanPhase::RollingBack);
        assert!(
            back.error.as_deref().unwrap().contains("node n2"),
            "{back:?}"
        );
        assert_eq!(
            next(&back, &s, &reps, &CX),
            None,
            "node 1 has not gone back yet"
        );
        let settled = vec![
            r(1, 7, NodeStep::RolledBack, None),
            r(2, 7, NodeStep::Failed, None),
            r(3, 7, NodeStep::RolledBack, None),
        ];
        assert_eq!(
            next(&back, &s, &settled, &CX).unwrap().phase,
            PlanPhase::Failed
        );
    }

    #[test]
    fn committed_with_the_longest_downtime() {
        let s = spec();
        let p = plan(PlanPhase::Committing, false);
        let reps = vec![
            r(1, 7, NodeStep::Committed, Some(4)),
            r(2, 7, NodeStep::Committed, Some(9)),
            r(3, 7, NodeStep::Committed, Some(3)),
        ];
        let c = next(&p, &s, &reps, &CX).unwrap();
        assert_eq!((c.phase, c.downtime_ms), (PlanPhase::Committed, Some(9)));
        assert_eq!(next(&c, &s, &reps, &CX), None, "a committed plan stays");
    }

    fn committed(ids: &[u32]) -> Vec<(u32, NodeReport)> {
        ids.iter()
            .map(|&id| {
                (
                    id,
                    NodeReport {
                        generation: 1,
                        step: NodeStep::Committed,
                        progress: 100,
                        error: None,
                        downtime_ms: None,
                        at_ms: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_simulated_restriper_runs_from_when_the_batch_was_back() {
        let s = spec_of(4, 2);
        let cx = |now_ms| Ctx {
            now_ms,
            me: 2,
            batch_limit_ms: 10_000,
            restripe_ms_per_node: 1000,
            gate_limit_ms: 10_000,
            data: DataSafety::Timed,
        };
        let mut p = ClusterPlan {
            rolling: true,
            nodes_per_batch: Some(2),
            phase: PlanPhase::Committing,
            ..ClusterPlan::new(1, "/x", "7.1.0", PlanMode::Platform)
        };
        p = next(&p, &s, &[], &cx(1000)).unwrap();
        let first = p.batches[0].clone();
        let back = |at: &[u64]| -> Vec<(u32, NodeReport)> {
            let mut r = committed(&first);
            for ((_, rep), at) in r.iter_mut().zip(at) {
                rep.at_ms = *at;
            }
            r
        };
        // The last node of the batch was back at 2600: the gate runs from then.
        let g = next(&p, &s, &back(&[2400, 2600]), &cx(3000)).unwrap();
        assert_eq!((g.batch, g.gate_until_ms), (0, 2600 + 2000));
        // A clock ahead of the coordinator's counts as now.
        let g = next(&p, &s, &back(&[2400, 9000]), &cx(3000)).unwrap();
        assert_eq!(g.gate_until_ms, 3000 + 2000);
        // Already restriped when the coordinator reads it: the next batch at once.
        let n = next(&p, &s, &back(&[1500, 1600]), &cx(4000)).unwrap();
        assert_eq!((n.batch, n.gate_until_ms, n.batch_started_ms), (1, 0, 4000));
    }

    #[test]
    fn batches_then_gate_then_next_batch_then_committed() {
        let s = spec_of(4, 2);
        let cx = |now_ms| Ctx {
            now_ms,
            me: 2,
            batch_limit_ms: 10_000,
            restripe_ms_per_node: 1000,
            gate_limit_ms: 10_000,
            data: DataSafety::Timed,
        };
        let mut p = ClusterPlan {
            rolling: true,
            nodes_per_batch: Some(2),
            phase: PlanPhase::Committing,
            ..ClusterPlan::new(1, "/x", "7.1.0", PlanMode::Platform)
        };
        p = next(&p, &s, &[], &cx(1000)).unwrap();
        assert_eq!(p.batches.last().unwrap(), &vec![2], "the coordinator last");
        let first = p.batches[0].clone();
        assert!(p.may_commit(first[0]) && !p.may_commit(2));
        assert_eq!(next(&p, &s, &[], &cx(2000)), None, "the batch reboots");
        // Back: the gate starts, holds, then the next batch goes.
        p = next(&p, &s, &committed(&first), &cx(3000)).unwrap();
        assert_eq!(p.gate_until_ms, 3000 + 1000 * first.len() as u64);
        assert_eq!(
            next(&p, &s, &committed(&first), &cx(3500)),
            None,
            "restriping"
        );
        p = next(&p, &s, &committed(&first), &cx(6000)).unwrap();
        assert_eq!((p.batch, p.gate_until_ms), (1, 0));
        // A paused rollout waits.
        let mut paused = p.clone();
        paused.paused = true;
        assert_eq!(
            next(&paused, &s, &committed(&[1, 2, 3, 4]), &cx(7000)),
            None
        );
        // Too long: paused due to error, naming the node.
        let late = next(&p, &s, &committed(&first), &cx(20_000)).unwrap();
        assert!(
            late.paused_error
                .as_deref()
                .unwrap()
                .contains("did not come back"),
            "{late:?}"
        );
        // The rest commits: after the last gate, the plan is committed.
        let all = committed(&[1, 2, 3, 4]);
        let mut now = 7000;
        while p.phase == PlanPhase::Committing {
            now += 5000; // past every gate, within the batch limit
            p = next(&p, &s, &all, &cx(now)).unwrap();
        }
        assert_eq!(p.phase, PlanPhase::Committed);
    }

    #[test]
    fn a_rolling_platform_failure_brings_the_committed_nodes_back_batch_by_batch() {
        let s = spec_of(5, 2);
        let cx = |now_ms| Ctx {
            now_ms,
            me: 1,
            batch_limit_ms: 10_000,
            restripe_ms_per_node: 1000,
            gate_limit_ms: 10_000,
            data: DataSafety::Timed,
        };
        let p = ClusterPlan {
            rolling: true,
            nodes_per_batch: Some(1),
            phase: PlanPhase::Committing,
            batches: vec![vec![2], vec![3], vec![4], vec![5], vec![1]],
            batch: 2,
            ..ClusterPlan::new(1, "/x", "7.1.0", PlanMode::Platform)
        };
        let step = |id, step| r(id, 1, step, None);
        let reps = vec![
            step(1, NodeStep::Prepared),
            step(2, NodeStep::Committed),
            step(3, NodeStep::Committed),
            step(4, NodeStep::Failed),
            step(5, NodeStep::Prepared),
        ];
        // The policy "stop" ends the rollout where it is.
        let stop = ClusterPlan {
            on_failure: OnFailure::Stop,
            ..p.clone()
        };
        let stopped = next(&stop, &s, &reps, &cx(1000)).unwrap();
        assert_eq!(stopped.phase, PlanPhase::Failed);
        assert!(stopped.error.unwrap().contains("node n4: boom"));
        // The default rolls back: the committed nodes, one at a time.
        let mut b = next(&p, &s, &reps, &cx(1000)).unwrap();
        assert_eq!(b.phase, PlanPhase::RollingBack);
        assert!(
            b.error.as_deref().unwrap().contains("node n4: boom"),
            "{b:?}"
        );
        assert_eq!(b.batches, vec![vec![2], vec![3]]);
        assert!(b.may_commit(2) && !b.may_commit(3) && !b.may_commit(5));
        assert_eq!(next(&b, &s, &reps, &cx(2000)), None, "node 2 goes back");
        let mut back = reps.clone();
        back[0] = step(1, NodeStep::Discarded);
        back[4] = step(5, NodeStep::Discarded);
        back[1] = step(2, NodeStep::RolledBack);
        b = next(&b, &s, &back, &cx(3000)).unwrap();
        assert_eq!(b.gate_until_ms, 4000, "the restriper gate between batches");
        assert_eq!(next(&b, &s, &back, &cx(3500)), None);
        b = next(&b, &s, &back, &cx(4000)).unwrap();
        assert_eq!(b.batch, 1);
        assert!(b.may_commit(3));
        // Node 3 does not come back within the limit: paused, named.
        let late = next(&b, &s, &back, &cx(30_000)).unwrap();
        assert!(
            late.paused_error
                .as_deref()
                .unwrap()
                .contains("node n3 did not come back healthy on its previous release"),
            "{late:?}"
        );
        back[2] = step(3, NodeStep::RolledBack);
        b = next(&b, &s, &back, &cx(5000)).unwrap();
        b = next(&b, &s, &back, &cx(7000)).unwrap();
        assert_eq!(b.phase, PlanPhase::Failed, "{b:?}");
        assert!(b.error.unwrap().contains("every node goes back"));
    }

    #[test]
    fn a_complete_reboot_failure_brings_every_committed_node_back_at_once() {
        let s = spec();
        let p = ClusterPlan {
            phase: PlanPhase::Committing,
            ..ClusterPlan::new(1, "/x", "7.1.0", PlanMode::Platform)
        };
        let reps = vec![
            r(1, 1, NodeStep::Committed, None),
            r(2, 1, NodeStep::Failed, None),
            r(3, 1, NodeStep::Committed, None),
        ];
        let b = next(&p, &s, &reps, &CX).unwrap();
        assert_eq!((b.phase, b.batches.len()), (PlanPhase::RollingBack, 0));
        assert!(b.may_commit(1) && b.may_commit(3));
        let settled = vec![
            r(1, 1, NodeStep::RolledBack, None),
            r(2, 1, NodeStep::Failed, None),
            r(3, 1, NodeStep::RolledBack, None),
        ];
        assert_eq!(next(&b, &s, &reps, &CX), None);
        assert_eq!(
            next(&b, &s, &settled, &CX).unwrap().phase,
            PlanPhase::Failed
        );
    }

    #[test]
    fn a_probed_restriper_holds_the_next_batch_until_the_data_is_safe() {
        let s = spec_of(3, 1);
        let cx = |now_ms, data| Ctx {
            now_ms,
            me: 1,
            batch_limit_ms: 10_000,
            restripe_ms_per_node: 1000,
            gate_limit_ms: 60_000,
            data,
        };
        let mut p = ClusterPlan {
            rolling: true,
            nodes_per_batch: Some(1),
            phase: PlanPhase::Committing,
            batches: vec![vec![2], vec![3], vec![1]],
            batch_started_ms: 1000,
            ..ClusterPlan::new(1, "/x", "7.1.0", PlanMode::Platform)
        };
        let back = committed(&[2]);
        // The batch is back: the gate starts now, whatever the simulated timing.
        p = next(&p, &s, &back, &cx(2000, DataSafety::Safe)).unwrap();
        assert_eq!((p.batch, p.gate_until_ms), (0, 2000));
        let risk = DataSafety::AtRisk("the restriper is RUNNING (40 % complete)".into());
        assert_eq!(next(&p, &s, &back, &cx(30_000, risk.clone())), None);
        let stuck = next(&p, &s, &back, &cx(70_000, risk)).unwrap();
        assert_eq!(
            stuck.paused_error.as_deref(),
            Some(
                "the data-safety gate did not pass within 60 s: the restriper is RUNNING (40 % complete)"
            )
        );
        p = next(&p, &s, &back, &cx(30_000, DataSafety::Safe)).unwrap();
        assert_eq!((p.batch, p.gate_until_ms), (1, 0));
    }
}
