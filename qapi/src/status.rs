//! The v1 status body (`GET /v1/upgrade/status`, `qq upgrade_status --json`)
//! and the enums it spells as the reference does: the engine (`upgrade`) writes
//! them, the agent serves them, `qq` reads them.

use serde::{Deserialize, Serialize};

/// `Status::schema`'s one value.
pub const STATUS_SCHEMA: &str = "qq.upgrade_status/1";

/// The upgrade's phase, spelled as `qq upgrade_status` prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing in progress.
    #[default]
    #[serde(rename = "UPGRADE_IDLE")]
    Idle,
    /// Verifying the bundle and writing the slot, container and firmware.
    #[serde(rename = "UPGRADE_PREPARING")]
    Preparing,
    /// Everything staged; waiting for commit.
    #[serde(rename = "UPGRADE_PREPARED")]
    Prepared,
    /// Swapping the container, or rebooting into the new slot.
    #[serde(rename = "UPGRADE_COMMITTING")]
    Committing,
    /// The node runs the new release.
    #[serde(rename = "UPGRADE_COMMITTED")]
    Committed,
}

impl Phase {
    /// The name `qq upgrade_status` prints.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "UPGRADE_IDLE",
            Phase::Preparing => "UPGRADE_PREPARING",
            Phase::Prepared => "UPGRADE_PREPARED",
            Phase::Committing => "UPGRADE_COMMITTING",
            Phase::Committed => "UPGRADE_COMMITTED",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong last, as the reference spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorState {
    /// Nothing.
    #[default]
    #[serde(rename = "UPGRADE_ERROR_NO_ERROR")]
    NoError,
    /// Prepare failed; the node is as it was.
    #[serde(rename = "UPGRADE_ERROR_PREPARE_FAILED")]
    PrepareFailed,
    /// Commit failed; the node runs the old release.
    #[serde(rename = "UPGRADE_ERROR_COMMIT_FAILED")]
    CommitFailed,
    /// The new platform did not boot healthy; the node fell back to the old slot.
    #[serde(rename = "UPGRADE_ERROR_ROLLED_BACK")]
    RolledBack,
}

/// Instant (container swap) or platform (reboot into the other slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only the container changes.
    Instant,
    /// The host image changes: the node reboots into the other slot.
    Platform,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Instant => "instant",
            Mode::Platform => "platform",
        })
    }
}

/// Qumulo's spelling of the mode in the cluster's plan (`qcluster`): the same
/// enum.
pub use self::Mode as PlanMode;

/// `qq upgrade_status`: the reference's seven fields first, in its order, then ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The bundle being installed.
    pub install_path: String,
    /// `UPGRADE_IDLE` … `UPGRADE_COMMITTED`.
    pub state: Phase,
    /// What is happening or happened.
    pub details: String,
    /// The cause of the error state.
    pub error_message: String,
    /// `UPGRADE_ERROR_*`.
    pub error_state: ErrorState,
    /// True while an upgrade may not start.
    pub is_blocked: bool,
    /// Why.
    pub blocked_reason: String,
    /// Always [`STATUS_SCHEMA`].
    pub schema: String,
    /// Instant or platform, once known.
    pub mode: Option<Mode>,
    /// Rolling reboots requested.
    pub rolling: bool,
    /// Release the node ran when the upgrade began.
    pub from_version: Option<String>,
    /// Release being installed.
    pub to_version: Option<String>,
    /// Downtime of the last container swap, in milliseconds.
    pub downtime_ms: Option<u64>,
    /// The step within the state.
    pub step: Option<String>,
}
