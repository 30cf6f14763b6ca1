//! What a member checks in a plan before it reboots its node for it, pure: a
//! plan no coordinator of this cluster would write (one forged with a stolen
//! node certificate, which may write any key) must not take more nodes down
//! than the cluster permits, nor a node whose turn has not come. The
//! coordinator sets batches of at most the cluster's `max_node_failures` nodes
//! (`qcluster::plan::batches`), each node once, and moves to the next batch
//! only when every node of the earlier ones is back; a member that reboots
//! checks the same, from the plan and the reports of its generation.
//! (Members also re-verify every bundle, so no plan installs unsigned code; and
//! one that asks the restriper itself holds its reboot while data is at risk,
//! `super::step`.)

use qcluster::{ClusterPlan, ClusterSpec, NodeReport, NodeStep, PlanMode, PlanPhase};

/// Why node `me` must not reboot for `plan` now, although the plan says it may
/// (`None`: it may). `reports`: every node's, of any generation.
pub fn distrust(
    plan: &ClusterPlan,
    spec: &ClusterSpec,
    me: u32,
    reports: &[(u32, NodeReport)],
) -> Option<String> {
    if plan.mode != PlanMode::Platform || !plan.in_batches() {
        return None;
    }
    let permitted = spec.max_node_failures.max(1) as usize;
    let mut seen: Vec<u32> = vec![];
    for (i, b) in plan.batches.iter().enumerate() {
        if b.len() > permitted {
            return Some(format!(
                "batch {} of plan {} reboots {} nodes at once; this cluster permits {permitted}",
                i + 1,
                plan.generation,
                b.len()
            ));
        }
        for id in b {
            if spec.node(*id).is_none() {
                return Some(format!(
                    "plan {} names node {id}, which is not in this cluster",
                    plan.generation
                ));
            }
            if seen.contains(id) {
                return Some(format!(
                    "plan {} reboots node {id} in two batches",
                    plan.generation
                ));
            }
            seen.push(*id);
        }
    }
    // Every node of the earlier batches is back (on the new release, or on
    // its old one in a rollback) before this batch goes.
    let back = |id: u32| {
        reports.iter().any(|(i, r)| {
            *i == id
                && r.generation == plan.generation
                && match plan.phase {
                    PlanPhase::RollingBack => r.step.is_back(),
                    _ => r.step == NodeStep::Committed,
                }
        })
    };
    let earlier = plan.batches.get(..plan.batch).unwrap_or(&[]);
    if let Some(id) = earlier.iter().flatten().copied().find(|id| !back(*id)) {
        return Some(format!(
            "plan {} has batch {} go while node {id} of an earlier batch is not back",
            plan.generation,
            plan.batch + 1
        ));
    }
    if !plan.batches.iter().flatten().any(|id| *id == me) {
        return Some(format!(
            "plan {} is rolling and no batch names this node",
            plan.generation
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32, max_node_failures: u32) -> ClusterSpec {
        crate::coordinator::tests::spec_of(n, max_node_failures)
    }

    fn plan(batches: Vec<Vec<u32>>, batch: usize) -> ClusterPlan {
        ClusterPlan {
            rolling: true,
            phase: PlanPhase::Committing,
            batches,
            batch,
            ..ClusterPlan::new(3, "/x", "7.1.0".parse().unwrap(), PlanMode::Platform)
        }
    }

    fn rep(id: u32, generation: u64, step: NodeStep) -> (u32, NodeReport) {
        (
            id,
            NodeReport {
                generation,
                step,
                progress: 100,
                error: None,
                downtime_ms: None,
                at_ms: 0,
            },
        )
    }

    #[test]
    fn a_plan_no_coordinator_would_write_does_not_reboot_this_node() {
        let s = spec(4, 2);
        let none: Vec<(u32, NodeReport)> = vec![];
        // What the coordinator writes: trusted.
        assert_eq!(
            distrust(&plan(vec![vec![2, 3], vec![4, 1]], 0), &s, 2, &none),
            None
        );
        let done = vec![
            rep(2, 3, NodeStep::Committed),
            rep(3, 3, NodeStep::Committed),
        ];
        assert_eq!(
            distrust(&plan(vec![vec![2, 3], vec![4, 1]], 1), &s, 4, &done),
            None
        );
        // Every node at once in a "rolling" plan of a cluster that permits 2.
        let all = distrust(&plan(vec![vec![1, 2, 3, 4]], 0), &s, 2, &none).unwrap();
        assert!(
            all.contains("reboots 4 nodes at once; this cluster permits 2"),
            "{all}"
        );
        // The next batch before the earlier one is back (a skipped gate).
        let early = vec![
            rep(2, 3, NodeStep::Committed),
            rep(3, 3, NodeStep::Committing),
        ];
        let why = distrust(&plan(vec![vec![2, 3], vec![4, 1]], 1), &s, 4, &early).unwrap();
        assert!(
            why.contains("node 3 of an earlier batch is not back"),
            "{why}"
        );
        // Reports of another generation do not count.
        let old = vec![
            rep(2, 2, NodeStep::Committed),
            rep(3, 2, NodeStep::Committed),
        ];
        assert!(distrust(&plan(vec![vec![2, 3], vec![4, 1]], 1), &s, 4, &old).is_some());
        // A node twice, a node that does not exist, this node in none.
        assert!(
            distrust(&plan(vec![vec![2], vec![2, 3]], 0), &s, 2, &none)
                .unwrap()
                .contains("two batches")
        );
        assert!(
            distrust(&plan(vec![vec![2], vec![9]], 0), &s, 2, &none)
                .unwrap()
                .contains("node 9")
        );
        assert!(
            distrust(&plan(vec![vec![1], vec![3]], 0), &s, 2, &none)
                .unwrap()
                .contains("no batch names this node")
        );
        // A rollback's earlier batches are back when rolled back (or failed).
        let back = ClusterPlan {
            phase: PlanPhase::RollingBack,
            ..plan(vec![vec![2], vec![1]], 1)
        };
        assert!(distrust(&back, &s, 1, &[rep(2, 3, NodeStep::Committed)]).is_some());
        assert_eq!(
            distrust(&back, &s, 1, &[rep(2, 3, NodeStep::RolledBack)]),
            None
        );
        // Not rolling: every node at once is what the operator asked for.
        let complete = ClusterPlan {
            rolling: false,
            ..plan(vec![], 0)
        };
        assert_eq!(distrust(&complete, &s, 2, &none), None);
    }
}
