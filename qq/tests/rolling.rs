//! Three simulated nodes committed rolling through the library's API, in-process:
//! only a committed node lets the rollout go on. The test plays the hardware of the
//! nodes that are powered (their due reboots boot and run the boot path); a node
//! whose power it holds back stays "rebooting".

mod common;

use std::cell::Cell;
use std::time::Duration;

use bootctl::layout::Slot;
use common::*;
use upgrade::cluster::{ClusterNode, NodeResult, RolloutOptions, rollout};
use upgrade::{Agent, Cancel, CommitOutcome, Error, PrepareRequest};

struct Host {
    node: SimNode,
    agent: Agent,
    powered: bool,
    commits: Cell<u32>,
}

impl ClusterNode for Host {
    fn commit(&self) -> Result<CommitOutcome, Error> {
        self.commits.set(self.commits.get() + 1);
        self.agent.commit(&qimg::NoProgress)
    }
    fn outcome(&self) -> Result<Option<CommitOutcome>, Error> {
        if self.powered {
            self.agent.run_boots()?;
        }
        self.agent.outcome()
    }
}

fn host(bundle: &std::path::Path, powered: bool) -> Host {
    let node = sim_node(&bundles().factory);
    let agent = node.agent();
    let mut req = PrepareRequest::new(bundle);
    req.rolling = true;
    agent
        .prepare(&req, &qimg::NoProgress, &Cancel::new())
        .unwrap();
    Host {
        node,
        agent,
        powered,
        commits: Cell::new(0),
    }
}

fn options() -> RolloutOptions {
    RolloutOptions {
        rolling: true,
        per_batch: 1,
        reboot_limit: Duration::from_secs(2),
        poll: Duration::from_millis(20),
    }
}

/// Callers check the boot files (`have_boot_files`) before making their hosts.
fn check(second: &Host, reason: &str) {
    let b = bundles();
    let first = host(&b.platform, true);
    let third = host(&b.platform, true);
    let third_disk = third.node.disk();
    let r = rollout(&[&first, second, &third], &options());
    assert!(
        matches!(r.results[0].1, NodeResult::Done(_)),
        "{:?}",
        r.results
    );
    assert_eq!(first.node.running().slot, Slot::B);
    let (n, why) = r.stopped.clone().expect("the rollout stopped");
    assert_eq!(n, 1, "{r:?}");
    assert!(why.contains(reason), "{reason:?} not in {why:?}");
    assert_eq!(r.untouched, vec![2]);
    assert_eq!(third.commits.get(), 0);
    assert_eq!(third.node.disk(), third_disk, "node 3 was touched");
    assert_eq!(third.node.status()["state"], "UPGRADE_PREPARED");
}

#[test]
fn a_node_that_rolls_back_stops_the_rollout_with_its_reason() {
    if !have_boot_files() {
        return;
    }
    let second = host(&bundles().unhealthy_platform, true);
    check(&second, "rolled back: slot b: health check failed");
    assert_eq!(second.node.running().slot, Slot::A);
    assert_eq!(
        second.node.status()["error_state"],
        "UPGRADE_ERROR_ROLLED_BACK"
    );
}

#[test]
fn a_node_still_rebooting_when_the_loop_looks_stops_the_rollout() {
    if !have_boot_files() {
        return;
    }
    let second = host(&bundles().platform, false);
    check(&second, "still rebooting after 2.0 s");
    assert_eq!(second.node.status()["state"], "UPGRADE_COMMITTING");
    // Powered on later, the node finishes its own commit through its boot path.
    let o = second.agent.run_boots().unwrap();
    assert!(matches!(o, Some(CommitOutcome::Committed { .. })), "{o:?}");
    assert_eq!(second.node.running().slot, Slot::B);
}
