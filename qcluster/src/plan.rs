//! The cluster's upgrade plan and each node's report, as etcd holds them. The
//! plan is written with compare-and-swap (its `generation` only grows); a node
//! acts only on the current generation and reports with it, so a command or a
//! report of an older plan is never mistaken for the current one.

use serde::{Deserialize, Serialize};

/// Where the cluster's upgrade is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanPhase {
    /// Every node prepares.
    Preparing,
    /// Every node prepared; waiting for commit.
    Prepared,
    /// Nodes commit.
    Committing,
    /// Every node runs the new release.
    Committed,
    /// A node failed: every node discards what it prepared.
    Discarding,
    /// Ended without committing (`error` says why).
    Failed,
}

impl PlanPhase {
    /// True while the plan is under way (a new one may not start).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            PlanPhase::Preparing
                | PlanPhase::Prepared
                | PlanPhase::Committing
                | PlanPhase::Discarding
        )
    }
}

/// Instant or platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanMode {
    /// The container restarts.
    Instant,
    /// The nodes reboot into the other slot.
    Platform,
}

/// The cluster's upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPlan {
    /// Grows by one with every new plan.
    pub generation: u64,
    /// The upgrade file, as the operator named it (a cluster path).
    pub image_path: String,
    /// The release being installed.
    pub target_version: String,
    /// Instant or platform.
    pub mode: PlanMode,
    /// Commit when every node prepared.
    pub auto_commit: bool,
    /// Rolling reboots.
    pub rolling: bool,
    /// Nodes per batch.
    pub nodes_per_batch: Option<u32>,
    /// Where it is.
    pub phase: PlanPhase,
    /// Why it failed (names the node).
    pub error: Option<String>,
    /// The cluster's downtime of an instant commit (the longest node's).
    pub downtime_ms: Option<u64>,
}

/// What a node did for a plan generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStep {
    /// Preparing.
    Preparing,
    /// Prepared.
    Prepared,
    /// Committing.
    Committing,
    /// Committed.
    Committed,
    /// Discarded what it prepared (or had nothing).
    Discarded,
    /// Failed (`error` says why).
    Failed,
}

/// A node's report for a plan generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    /// The plan generation this is about.
    pub generation: u64,
    /// What the node did.
    pub step: NodeStep,
    /// The prepare's progress, 0–100.
    pub progress: u8,
    /// Why it failed.
    pub error: Option<String>,
    /// Its downtime of an instant commit.
    pub downtime_ms: Option<u64>,
}
