//! The wire form of the upgrade record (`upgrade.json`) and the enums the reference
//! spells: loose on purpose (every field optional to serde) so that
//! [`crate::state::NodeState`]'s `TryFrom` can name the field that is wrong. Depends
//! on nothing else of the engine; the enums are the wire contract's
//! (`qapi::status`).

use serde::{Deserialize, Serialize};

pub use qapi::status::{ErrorState, Mode, Phase};

/// Schema id of the persisted record.
pub const RECORD_SCHEMA: &str = "qq.state/1";

/// A release in the record (wire form of [`crate::state::Release`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstalledRecord {
    /// Release (container) version.
    pub version: String,
    /// Platform version.
    pub platform_version: String,
    /// The slot its platform runs from (`a` or `b`).
    pub slot: String,
}

/// The last completed commit (wire form).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastCommitRecord {
    /// When (Unix seconds).
    pub at: u64,
    /// From which release.
    pub from: String,
    /// To which release.
    pub to: String,
}

/// The persisted record, field for field as `upgrade.json` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// Always [`RECORD_SCHEMA`].
    pub schema: String,
    /// The phase.
    pub state: Phase,
    /// What went wrong last.
    pub error_state: ErrorState,
    /// The cause, in words.
    pub error_message: String,
    /// What is happening or happened.
    pub details: String,
    /// The bundle being installed.
    pub install_path: String,
    /// Why the last attempt was blocked ("" when it was not).
    pub blocked_reason: String,
    /// Until when (Unix seconds) it stays blocked.
    pub blocked_until: Option<u64>,
    /// The step within the phase, for recovery.
    pub step: Option<String>,
    /// Instant or platform.
    pub mode: Option<Mode>,
    /// Rolling reboots requested.
    pub rolling: bool,
    /// Commit as soon as prepared (the request's `auto_commit`).
    pub auto_commit: bool,
    /// Nodes rebooted per batch of a rolling reboot (the request's).
    pub nodes_per_batch: Option<u32>,
    /// What the node ran when the upgrade began.
    pub from: Option<InstalledRecord>,
    /// What it installs.
    pub to: Option<InstalledRecord>,
    /// The kernel's boot id when the reboot was requested.
    pub boot_id: Option<String>,
    /// Why the new platform was given up on (set before the fallback reboot).
    pub fallback_reason: Option<String>,
    /// The kernel logs systemd-pstore had archived when the reboot into the new
    /// slot was asked for (their record ids).
    pub kept_logs: Option<Vec<String>>,
    /// Downtime of the last container swap, in milliseconds.
    pub downtime_ms: Option<u64>,
    /// The last completed commit (for settle periods).
    pub last_commit: Option<LastCommitRecord>,
    /// When this record was written (Unix seconds).
    pub updated_at: u64,
}

/// What serde fills in for a missing field. The schema is empty, so a record
/// without one (`{}`) is refused rather than read as an idle node.
impl Default for Record {
    fn default() -> Record {
        Record {
            schema: String::new(),
            state: Phase::Idle,
            error_state: ErrorState::NoError,
            error_message: String::new(),
            details: String::new(),
            install_path: String::new(),
            blocked_reason: String::new(),
            blocked_until: None,
            step: None,
            mode: None,
            rolling: false,
            auto_commit: false,
            nodes_per_batch: None,
            from: None,
            to: None,
            boot_id: None,
            fallback_reason: None,
            kept_logs: None,
            downtime_ms: None,
            last_commit: None,
            updated_at: 0,
        }
    }
}
