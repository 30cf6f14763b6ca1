//! The coordinator: the node holding the coordinator key in etcd (created under
//! its lease by a transaction; when its agent dies, the lease expires and another
//! node takes it). Its loop only reconciles what etcd says — the plan and the
//! nodes' reports for its generation — and moves the plan on with
//! compare-and-swap, so a new coordinator picks up where the last one stopped.

use std::time::{Duration, Instant};

use qcluster::{ClusterPlan, ClusterSpec, NodeReport, NodeStep, PlanPhase, Store};

use crate::api::Shared;

/// How often the coordinator reconciles.
pub const POLL: Duration = Duration::from_millis(200);

/// The next plan, from the plan and the reports of its generation (pure).
pub fn next(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    reports: &[(u32, NodeReport)],
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
                p.phase = PlanPhase::Failed;
                p.error = Some(format!("the commit failed on {why}"));
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
        PlanPhase::Prepared | PlanPhase::Committed | PlanPhase::Failed => return None,
    }
    Some(p)
}

async fn reconcile(store: &Store, spec: &ClusterSpec) -> Result<(), qcluster::Error> {
    let Some((plan, rev)) = store.plan().await? else {
        return Ok(());
    };
    let reports = store.reports().await?;
    if let Some(p) = next(&plan, spec, &reports)
        && store.put_plan_if(&p, Some(rev)).await?
    {
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
    Ok(())
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
    loop {
        tokio::time::sleep(POLL).await;
        let Some(store) = c.store() else {
            continue;
        };
        let r: Result<(), qcluster::Error> = async {
            let id = match lease {
                Some((id, renewed)) if renewed.elapsed() < ttl / 3 => id,
                Some((id, _)) if store.renew(id).await? => {
                    lease = Some((id, Instant::now()));
                    id
                }
                _ => {
                    let id = store.lease(ttl.as_secs() as i64).await?;
                    lease = Some((id, Instant::now()));
                    id
                }
            };
            let now = store.try_lead(me, id).await?;
            if now != leading {
                crate::log(if now {
                    "this node is the cluster's coordinator"
                } else {
                    "this node is no longer the coordinator"
                });
                leading = now;
            }
            if leading {
                reconcile(store, &spec).await?;
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

    fn spec() -> ClusterSpec {
        ClusterSpec {
            name: "c".into(),
            max_node_failures: 1,
            nodes: (1..=3)
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
            generation: 7,
            image_path: "/x".into(),
            target_version: "7.0.1".into(),
            mode: PlanMode::Instant,
            auto_commit,
            rolling: false,
            nodes_per_batch: None,
            phase,
            error: None,
            downtime_ms: None,
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
        assert_eq!(next(&p, &s, &reps), None, "node 3 has not reported");
        reps.push(r(3, 6, NodeStep::Prepared, None));
        assert_eq!(
            next(&p, &s, &reps),
            None,
            "an older generation's report does not count"
        );
        reps[2] = r(3, 7, NodeStep::Prepared, None);
        assert_eq!(next(&p, &s, &reps).unwrap().phase, PlanPhase::Prepared);
        let auto = plan(PlanPhase::Preparing, true);
        assert_eq!(next(&auto, &s, &reps).unwrap().phase, PlanPhase::Committing);
    }

    #[test]
    fn a_failure_discards_everywhere_then_fails_naming_the_node() {
        let s = spec();
        let p = plan(PlanPhase::Preparing, false);
        let reps = vec![
            r(1, 7, NodeStep::Preparing, None),
            r(2, 7, NodeStep::Failed, None),
        ];
        let d = next(&p, &s, &reps).unwrap();
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
        assert_eq!(next(&d, &s, &reps[..1]), None);
        assert_eq!(next(&d, &s, &settled).unwrap().phase, PlanPhase::Failed);
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
        let c = next(&p, &s, &reps).unwrap();
        assert_eq!((c.phase, c.downtime_ms), (PlanPhase::Committed, Some(9)));
        assert_eq!(next(&c, &s, &reps), None, "a committed plan stays");
    }
}
