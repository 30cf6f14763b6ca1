//! A cluster's nodes committed in batches: all at once (a complete reboot) or
//! rolling (one batch after another). A batch is done only when every node in it
//! reports [`CommitOutcome::Committed`]: a node that rolled back, failed, or is
//! still rebooting when the wait runs out stops the rollout, and later batches are
//! never touched. The loop only reads what nodes report, so it runs the same
//! against simulated nodes and real ones.

use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::commit::CommitOutcome;
use crate::error::{Error, chain};

/// Node indices per batch: one batch of all nodes, or `per_batch` at a time.
pub fn batches(nodes: usize, rolling: bool, per_batch: usize) -> Vec<Vec<usize>> {
    if nodes == 0 {
        return vec![];
    }
    let size = if rolling { per_batch.max(1) } else { nodes };
    (0..nodes)
        .collect::<Vec<_>>()
        .chunks(size)
        .map(<[usize]>::to_vec)
        .collect()
}

/// What the rollout needs of a node.
pub trait ClusterNode {
    /// Commits the node's prepared upgrade.
    fn commit(&self) -> Result<CommitOutcome, Error>;
    /// The commit's outcome once decided; `None` while it runs or reboots.
    fn outcome(&self) -> Result<Option<CommitOutcome>, Error>;
}

impl ClusterNode for Agent {
    fn commit(&self) -> Result<CommitOutcome, Error> {
        Agent::commit(self, &qimg::NoProgress)
    }
    fn outcome(&self) -> Result<Option<CommitOutcome>, Error> {
        Agent::outcome(self)
    }
}

/// How to roll out.
#[derive(Clone, Debug)]
pub struct RolloutOptions {
    /// One batch after another (else all nodes at once).
    pub rolling: bool,
    /// Nodes per batch when rolling.
    pub per_batch: usize,
    /// How long a rebooting node may take to report its outcome.
    pub reboot_limit: Duration,
    /// How often a rebooting node is asked.
    pub poll: Duration,
}

/// How one node's commit ended for the rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeResult {
    /// Committed: the rollout may go on.
    Done(CommitOutcome),
    /// Rolled back or failed.
    Stopped(CommitOutcome),
    /// Still rebooting when the limit ran out.
    StillRebooting {
        /// The limit, in seconds.
        waited_secs: f64,
    },
    /// The commit could not run.
    Error(String),
}

impl NodeResult {
    /// True only for a committed node.
    pub fn is_done(&self) -> bool {
        matches!(self, NodeResult::Done(_))
    }

    /// Why the rollout stops at this node (`None` if it does not).
    pub fn reason(&self) -> Option<String> {
        match self {
            NodeResult::Done(_) => None,
            NodeResult::Stopped(CommitOutcome::RolledBack { reason }) => {
                Some(format!("rolled back: {reason}"))
            }
            NodeResult::Stopped(CommitOutcome::Failed { reason }) => {
                Some(format!("commit failed: {reason}"))
            }
            NodeResult::Stopped(o) => Some(format!("{o:?}")),
            NodeResult::StillRebooting { waited_secs } => Some(format!(
                "still rebooting after {waited_secs:.1} s (waited for its commit's outcome)"
            )),
            NodeResult::Error(e) => Some(e.clone()),
        }
    }
}

/// What a rollout did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    /// Each node attempted, in order, with its result.
    pub results: Vec<(usize, NodeResult)>,
    /// The first node that stopped the rollout, and why.
    pub stopped: Option<(usize, String)>,
    /// Nodes never touched.
    pub untouched: Vec<usize>,
}

fn judge(outcome: CommitOutcome) -> NodeResult {
    if outcome.is_committed() {
        NodeResult::Done(outcome)
    } else {
        NodeResult::Stopped(outcome)
    }
}

/// Waits for a node that reboots to report how its commit ended, at most `limit`.
pub fn wait_outcome(node: &dyn ClusterNode, limit: Duration, poll: Duration) -> NodeResult {
    let deadline = Instant::now() + limit;
    loop {
        match node.outcome() {
            Ok(Some(CommitOutcome::Rebooting { .. }) | None) => {}
            Ok(Some(o)) => return judge(o),
            Err(e) => return NodeResult::Error(chain(&e)),
        }
        if Instant::now() >= deadline {
            return NodeResult::StillRebooting {
                waited_secs: limit.as_secs_f64(),
            };
        }
        std::thread::sleep(poll);
    }
}

/// Commits every node batch by batch; stops after the first batch in which a node
/// is not committed.
pub fn rollout(nodes: &[&dyn ClusterNode], o: &RolloutOptions) -> Rollout {
    let plan = batches(nodes.len(), o.rolling, o.per_batch);
    let mut out = Rollout::default();
    for (bi, batch) in plan.iter().enumerate() {
        let started: Vec<(usize, Result<CommitOutcome, Error>)> =
            batch.iter().map(|&n| (n, nodes[n].commit())).collect();
        for (n, r) in started {
            let result = match r {
                Ok(CommitOutcome::Rebooting { .. }) => {
                    wait_outcome(nodes[n], o.reboot_limit, o.poll)
                }
                Ok(outcome) => judge(outcome),
                Err(e) => NodeResult::Error(chain(&e)),
            };
            if out.stopped.is_none()
                && let Some(why) = result.reason()
            {
                out.stopped = Some((n, why));
            }
            out.results.push((n, result));
        }
        if out.stopped.is_some() {
            out.untouched = plan[bi + 1..].iter().flatten().copied().collect();
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn batches_all_at_once_or_rolling() {
        assert_eq!(batches(1, false, 1), vec![vec![0]]);
        assert_eq!(batches(1, true, 1), vec![vec![0]]);
        assert_eq!(batches(4, false, 1), vec![vec![0, 1, 2, 3]]);
        assert_eq!(batches(5, true, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(batches(0, true, 1).is_empty());
    }

    /// A node whose commit answers `first`, then `later` when asked for the outcome.
    struct Fake {
        first: CommitOutcome,
        later: Option<CommitOutcome>,
        commits: Cell<u32>,
    }

    impl ClusterNode for Fake {
        fn commit(&self) -> Result<CommitOutcome, Error> {
            self.commits.set(self.commits.get() + 1);
            Ok(self.first.clone())
        }
        fn outcome(&self) -> Result<Option<CommitOutcome>, Error> {
            Ok(self.later.clone())
        }
    }

    fn fake(first: CommitOutcome, later: Option<CommitOutcome>) -> Fake {
        Fake {
            first,
            later,
            commits: Cell::new(0),
        }
    }

    const OK: CommitOutcome = CommitOutcome::Committed { downtime_ms: None };

    fn rebooting() -> CommitOutcome {
        CommitOutcome::Rebooting {
            boot_id: crate::state::BootId("b".into()),
        }
    }

    fn opts() -> RolloutOptions {
        RolloutOptions {
            rolling: true,
            per_batch: 1,
            reboot_limit: Duration::from_millis(30),
            poll: Duration::from_millis(5),
        }
    }

    #[test]
    fn only_committed_counts_as_done() {
        let cases = [
            (
                fake(
                    rebooting(),
                    Some(CommitOutcome::RolledBack { reason: "x".into() }),
                ),
                "rolled back: x",
            ),
            (fake(rebooting(), None), "still rebooting"),
            (
                fake(CommitOutcome::Failed { reason: "y".into() }, None),
                "commit failed: y",
            ),
        ];
        for (second, why) in cases {
            let (a, c) = (fake(rebooting(), Some(OK)), fake(OK, None));
            let r = rollout(&[&a, &second, &c], &opts());
            assert!(r.results[0].1.is_done());
            let (n, reason) = r.stopped.clone().unwrap();
            assert_eq!(n, 1);
            assert!(reason.contains(why), "{reason}");
            assert_eq!(r.untouched, vec![2]);
            assert_eq!(c.commits.get(), 0, "node 3 was touched");
        }
    }

    #[test]
    fn all_at_once_commits_every_node_then_judges() {
        let (a, b) = (fake(rebooting(), Some(OK)), fake(OK, None));
        let r = rollout(
            &[&a, &b],
            &RolloutOptions {
                rolling: false,
                ..opts()
            },
        );
        assert_eq!(r.stopped, None);
        assert_eq!(r.results.len(), 2);
        assert_eq!((a.commits.get(), b.commits.get()), (1, 1));
    }
}
