//! The coordinator: the node holding the coordinator key in etcd (created under
//! its session's lease by a transaction, `qcluster::store::election`; when its
//! agent dies, the lease expires and another node takes it; when it stops
//! cleanly or reboots for the plan, it gives the key up at once). Its loop only
//! reconciles what etcd says — the plan and the nodes' reports for its
//! generation — and moves the plan on with compare-and-swap, so a new
//! coordinator picks up where the last one stopped.
//!
//! - `decide`: [`next`], pure: plan + reports + [`Ctx`] → the next plan;
//! - `reconcile`: one reconciliation: load, decide, write by compare-and-swap;
//! - `campaign`: the loop ([`run`]): campaign while nobody coordinates,
//!   reconcile while this node does, step down before its own reboot; and
//!   [`resign`] on a clean stop.

use std::time::Duration;

use crate::restriper::DataSafety;

mod campaign;
mod decide;
mod reconcile;

pub use campaign::{RESIGN_LIMIT, resign, run};
pub use decide::next;

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

#[cfg(test)]
pub(crate) mod tests;
