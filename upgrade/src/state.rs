//! The node's upgrade state as types: a [`Stage`] in which "committing without a
//! target" or "rebooting without a boot id" cannot be written down, typed steps,
//! slots and versions. The on-disk [`Record`] is its wire form; `TryFrom<Record>`
//! refuses a damaged record naming the field, and never panics.
//!
//! Also the `qq upgrade_status` report ([`Status`]), computed from the state.

use bootctl::layout::Slot;
use qimg::Version;
use serde::{Deserialize, Serialize};

use crate::error::{Block, Damage};
use crate::pstore::KeptLogs;
pub use crate::wire::{ErrorState, Mode, Phase};
use crate::wire::{InstalledRecord, LastCommitRecord, RECORD_SCHEMA, Record};

/// Schema id of `qq upgrade_status`.
pub use qapi::status::{STATUS_SCHEMA, Status};

/// A release as installed or to be installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Release (container) version.
    pub version: Version,
    /// Platform version.
    pub platform_version: Version,
    /// The slot its platform runs from.
    pub slot: Slot,
}

/// What an upgrade does, known once prepare has read the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Instant or platform.
    pub mode: Mode,
    /// What the node ran when the upgrade began.
    pub from: Release,
    /// What it installs.
    pub to: Release,
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): changes at every boot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootId(pub String);

impl std::fmt::Display for BootId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a prepare is. Every step after `Verify` has written something that a
/// failed or interrupted prepare must undo, and carries the plan that says what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareStep {
    /// Checking the signature and the bundle against the node; nothing written.
    Verify,
    /// Streaming the bundle into the inactive slot and the container store.
    Write(Plan),
    /// Labelling the slot and staging its boot entry.
    StageEntry(Plan),
    /// Flashing firmware.
    Firmware(Plan),
}

/// Where a commit is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Instant: stopping the old container and starting the new one.
    Swap,
    /// Platform: making the new slot's entry boot next.
    SetNext,
    /// Platform: the reboot into the new slot was asked for in boot `boot_id`.
    Reboot {
        /// The boot the reboot was asked for in.
        boot_id: BootId,
        /// The kernel logs kept when it was asked for: any newer one is a failed
        /// try's. `None` in a record written before they were noted (then no
        /// reason is named).
        kept: Option<KeptLogs>,
    },
    /// Platform: the new slot failed its health gate; the reboot back into the old
    /// slot was asked for in boot `boot_id`.
    Fallback {
        /// The boot the fallback reboot was asked for in.
        boot_id: BootId,
        /// Why the new platform was given up on.
        reason: String,
    },
}

impl CommitStep {
    /// The boot id a reboot was asked for in, if the step is waiting for one.
    pub fn boot_id(&self) -> Option<&BootId> {
        match self {
            CommitStep::Reboot { boot_id, .. } | CommitStep::Fallback { boot_id, .. } => {
                Some(boot_id)
            }
            _ => None,
        }
    }
}

/// The upgrade's stage, with exactly the data each one has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Nothing in progress; `last` is the upgrade that ended last (for the report).
    Idle {
        /// The last upgrade's plan, if there was one.
        last: Option<Plan>,
    },
    /// A prepare runs (or was interrupted).
    Preparing(PrepareStep),
    /// Everything staged.
    Prepared(Plan),
    /// A commit runs, or waits for its reboot.
    Committing(Plan, CommitStep),
    /// The node runs the new release.
    Committed(Plan),
}

impl Default for Stage {
    fn default() -> Stage {
        Stage::Idle { last: None }
    }
}

impl Stage {
    /// The phase the reference names.
    pub fn phase(&self) -> Phase {
        match self {
            Stage::Idle { .. } => Phase::Idle,
            Stage::Preparing(_) => Phase::Preparing,
            Stage::Prepared(_) => Phase::Prepared,
            Stage::Committing(..) => Phase::Committing,
            Stage::Committed(_) => Phase::Committed,
        }
    }

    /// The plan, when one is known.
    pub fn plan(&self) -> Option<&Plan> {
        match self {
            Stage::Idle { last } => last.as_ref(),
            Stage::Preparing(PrepareStep::Verify) => None,
            Stage::Preparing(
                PrepareStep::Write(p) | PrepareStep::StageEntry(p) | PrepareStep::Firmware(p),
            )
            | Stage::Prepared(p)
            | Stage::Committing(p, _)
            | Stage::Committed(p) => Some(p),
        }
    }

    /// The step's wire name (and crash point suffix), if the stage has steps.
    pub fn step_name(&self) -> Option<&'static str> {
        Some(match self {
            Stage::Preparing(PrepareStep::Verify) => "verify",
            Stage::Preparing(PrepareStep::Write(_)) => "write",
            Stage::Preparing(PrepareStep::StageEntry(_)) => "stage-entry",
            Stage::Preparing(PrepareStep::Firmware(_)) => "firmware",
            Stage::Committing(_, CommitStep::Swap) => "swap",
            Stage::Committing(_, CommitStep::SetNext) => "set-next",
            Stage::Committing(_, CommitStep::Reboot { .. }) => "reboot",
            Stage::Committing(_, CommitStep::Fallback { .. }) => "fallback",
            _ => return None,
        })
    }
}

/// An upgrade that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Which kind (never [`ErrorState::NoError`]).
    pub kind: ErrorState,
    /// The cause, in words.
    pub message: String,
}

/// A block recorded by the last attempt (a settle period).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// Why, in words.
    pub reason: String,
    /// Until when (Unix seconds).
    pub until: Option<u64>,
}

/// The last completed commit (for settle periods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCommit {
    /// When (Unix seconds).
    pub at: u64,
    /// From which release.
    pub from: Version,
    /// To which release.
    pub to: Version,
}

/// What the operator asked for with the prepare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The bundle.
    pub install_path: String,
    /// Rolling reboots at commit.
    pub rolling: bool,
    /// Commit as soon as prepared.
    pub auto_commit: bool,
    /// Nodes per batch of a rolling reboot.
    pub nodes_per_batch: Option<u32>,
}

/// A node's whole upgrade state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Where the upgrade is.
    pub stage: Stage,
    /// What the operator asked for.
    pub settings: Settings,
    /// What went wrong last.
    pub failure: Option<Failure>,
    /// What is happening or happened, in words.
    pub details: String,
    /// Why the last attempt was blocked.
    pub blocked: Option<Blocked>,
    /// Downtime of the last container swap, in milliseconds.
    pub downtime_ms: Option<u64>,
    /// The last completed commit.
    pub last_commit: Option<LastCommit>,
    /// When the record was written (Unix seconds).
    pub updated_at: u64,
}

impl NodeState {
    /// The phase.
    pub fn phase(&self) -> Phase {
        self.stage.phase()
    }
}

fn release_record(r: &Release) -> InstalledRecord {
    InstalledRecord {
        version: r.version.to_string(),
        platform_version: r.platform_version.to_string(),
        slot: r.slot.to_string(),
    }
}

impl From<&NodeState> for Record {
    fn from(s: &NodeState) -> Record {
        let plan = s.stage.plan();
        let (boot_id, fallback_reason, kept_logs) = match &s.stage {
            Stage::Committing(_, CommitStep::Reboot { boot_id, kept }) => (
                Some(boot_id.0.clone()),
                None,
                kept.as_ref().map(|k| k.0.iter().cloned().collect()),
            ),
            Stage::Committing(_, CommitStep::Fallback { boot_id, reason }) => {
                (Some(boot_id.0.clone()), Some(reason.clone()), None)
            }
            _ => (None, None, None),
        };
        Record {
            schema: RECORD_SCHEMA.into(),
            state: s.stage.phase(),
            error_state: s.failure.as_ref().map_or(ErrorState::NoError, |f| f.kind),
            error_message: s
                .failure
                .as_ref()
                .map_or(String::new(), |f| f.message.clone()),
            details: s.details.clone(),
            install_path: s.settings.install_path.clone(),
            blocked_reason: s
                .blocked
                .as_ref()
                .map_or(String::new(), |b| b.reason.clone()),
            blocked_until: s.blocked.as_ref().and_then(|b| b.until),
            step: s.stage.step_name().map(str::to_owned),
            mode: plan.map(|p| p.mode),
            rolling: s.settings.rolling,
            auto_commit: s.settings.auto_commit,
            nodes_per_batch: s.settings.nodes_per_batch,
            from: plan.map(|p| release_record(&p.from)),
            to: plan.map(|p| release_record(&p.to)),
            boot_id,
            fallback_reason,
            kept_logs,
            downtime_ms: s.downtime_ms,
            last_commit: s.last_commit.as_ref().map(|l| LastCommitRecord {
                at: l.at,
                from: l.from.to_string(),
                to: l.to.to_string(),
            }),
            updated_at: s.updated_at,
        }
    }
}

/// A damaged field: its name and what is wrong.
pub type FieldError = (&'static str, Damage);

fn version(field: &'static str, s: &str) -> Result<Version, FieldError> {
    s.parse()
        .map_err(|e: qimg::Error| (field, Damage::Invalid(e.to_string())))
}

fn release(r: &InstalledRecord, fields: [&'static str; 3]) -> Result<Release, FieldError> {
    Ok(Release {
        version: version(fields[0], &r.version)?,
        platform_version: version(fields[1], &r.platform_version)?,
        slot: r
            .slot
            .parse()
            .map_err(|e: bootctl::layout::BadSlot| (fields[2], Damage::Invalid(e.to_string())))?,
    })
}

impl TryFrom<Record> for NodeState {
    type Error = FieldError;

    /// Checks every field against the state it is in: what the state needs is
    /// there, what it forbids is absent, every value parses.
    fn try_from(r: Record) -> Result<NodeState, FieldError> {
        if r.schema != RECORD_SCHEMA {
            return Err((
                "schema",
                Damage::Invalid(format!("{:?}, expected {RECORD_SCHEMA:?}", r.schema)),
            ));
        }
        let phase = r.state;
        let missing = |f: &'static str| (f, Damage::Missing(phase));
        let unexpected = |f: &'static str| (f, Damage::Unexpected(phase));
        let plan = || -> Result<Option<Plan>, FieldError> {
            match (&r.mode, &r.from, &r.to) {
                (None, None, None) => Ok(None),
                (Some(mode), Some(from), Some(to)) => {
                    let from = release(
                        &from.clone(),
                        ["from.version", "from.platform_version", "from.slot"],
                    )?;
                    let to = release(
                        &to.clone(),
                        ["to.version", "to.platform_version", "to.slot"],
                    )?;
                    if *mode == Mode::Platform && from.slot == to.slot {
                        return Err((
                            "to.slot",
                            Damage::Invalid(format!(
                                "a platform upgrade cannot install into the running slot {}",
                                from.slot
                            )),
                        ));
                    }
                    Ok(Some(Plan {
                        mode: *mode,
                        from,
                        to,
                    }))
                }
                (None, _, _) => Err(missing("mode")),
                (_, None, _) => Err(missing("from")),
                (_, _, None) => Err(missing("to")),
            }
        };
        let need_plan =
            || plan()?.ok_or_else(|| missing(if r.mode.is_none() { "mode" } else { "from" }));
        let no_step = || r.step.as_ref().map_or(Ok(()), |_| Err(unexpected("step")));
        let step = || r.step.as_deref().ok_or_else(|| missing("step"));
        let stage = match phase {
            Phase::Idle => {
                no_step()?;
                Stage::Idle { last: plan()? }
            }
            Phase::Prepared => {
                no_step()?;
                Stage::Prepared(need_plan()?)
            }
            Phase::Committed => {
                no_step()?;
                Stage::Committed(need_plan()?)
            }
            Phase::Preparing => Stage::Preparing(match step()? {
                "verify" => PrepareStep::Verify,
                "write" => PrepareStep::Write(need_plan()?),
                "stage-entry" => PrepareStep::StageEntry(need_plan()?),
                "firmware" => PrepareStep::Firmware(need_plan()?),
                other => {
                    return Err((
                        "step",
                        Damage::Invalid(format!("{other:?} is not a prepare step")),
                    ));
                }
            }),
            Phase::Committing => {
                let p = need_plan()?;
                let boot_id = || {
                    r.boot_id
                        .clone()
                        .filter(|b| !b.is_empty())
                        .map(BootId)
                        .ok_or_else(|| missing("boot_id"))
                };
                let s = match (step()?, p.mode) {
                    ("swap", Mode::Instant) => CommitStep::Swap,
                    ("set-next", Mode::Platform) => CommitStep::SetNext,
                    ("reboot", Mode::Platform) => CommitStep::Reboot {
                        boot_id: boot_id()?,
                        kept: r
                            .kept_logs
                            .clone()
                            .map(|k| KeptLogs(k.into_iter().collect())),
                    },
                    ("fallback", Mode::Platform) => CommitStep::Fallback {
                        boot_id: boot_id()?,
                        reason: r
                            .fallback_reason
                            .clone()
                            .ok_or_else(|| missing("fallback_reason"))?,
                    },
                    (s @ ("swap" | "set-next" | "reboot" | "fallback"), m) => {
                        return Err((
                            "step",
                            Damage::Invalid(format!("{s:?} is not a step of a {m} commit")),
                        ));
                    }
                    (other, _) => {
                        return Err((
                            "step",
                            Damage::Invalid(format!("{other:?} is not a commit step")),
                        ));
                    }
                };
                Stage::Committing(p, s)
            }
        };
        let failure = match (r.error_state, r.error_message.is_empty()) {
            (ErrorState::NoError, true) => None,
            (ErrorState::NoError, false) => {
                return Err((
                    "error_message",
                    Damage::Invalid("set while error_state is UPGRADE_ERROR_NO_ERROR".into()),
                ));
            }
            (kind, _) => Some(Failure {
                kind,
                message: r.error_message.clone(),
            }),
        };
        let blocked = match (r.blocked_reason.is_empty(), r.blocked_until) {
            (true, None) => None,
            (true, Some(_)) => return Err(missing("blocked_reason")),
            (false, until) => Some(Blocked {
                reason: r.blocked_reason.clone(),
                until,
            }),
        };
        let last_commit = match &r.last_commit {
            None => None,
            Some(l) => Some(LastCommit {
                at: l.at,
                from: version("last_commit.from", &l.from)?,
                to: version("last_commit.to", &l.to)?,
            }),
        };
        Ok(NodeState {
            stage,
            settings: Settings {
                install_path: r.install_path,
                rolling: r.rolling,
                auto_commit: r.auto_commit,
                nodes_per_batch: r.nodes_per_batch,
            },
            failure,
            details: r.details,
            blocked,
            downtime_ms: r.downtime_ms,
            last_commit,
            updated_at: r.updated_at,
        })
    }
}

/// The report for state `s`, with the lock holder (if any) and the time now.
pub fn status_of(s: &NodeState, lock_holder: Option<Block>, now: u64) -> Status {
    let settle = s
        .blocked
        .as_ref()
        .filter(|b| b.until.is_some_and(|t| t > now))
        .map(|b| b.reason.clone());
    // A record in the middle of an operation with nobody holding the lock: say so.
    let mut details = s.details.clone();
    if lock_holder.is_none() {
        match &s.stage {
            Stage::Preparing(_) | Stage::Committing(_, CommitStep::Swap | CommitStep::SetNext) => {
                details.push_str(
                    " (interrupted: no qq process runs it; the next `qq upgrade_cluster` command recovers)",
                )
            }
            Stage::Committing(_, CommitStep::Reboot { .. } | CommitStep::Fallback { .. }) => {
                details.push_str(" (waiting for the reboot; `qq boot_check` finishes it)")
            }
            _ => {}
        }
    }
    // A running prepare or commit is what the state describes, not a block.
    let lock_holder =
        lock_holder.filter(|_| !matches!(s.phase(), Phase::Preparing | Phase::Committing));
    let (is_blocked, blocked_reason) = match (lock_holder, settle) {
        (Some(h), _) => (true, h.to_string()),
        (None, Some(r)) => (true, r),
        (None, None) => (false, String::new()),
    };
    let r = Record::from(s);
    Status {
        install_path: r.install_path,
        state: r.state,
        details,
        error_message: r.error_message,
        error_state: r.error_state,
        is_blocked,
        blocked_reason,
        schema: STATUS_SCHEMA.into(),
        mode: r.mode,
        rolling: r.rolling,
        from_version: r.from.map(|i| i.version),
        to_version: r.to.map(|i| i.version),
        downtime_ms: r.downtime_ms,
        step: r.step,
    }
}

#[cfg(test)]
mod tests;
