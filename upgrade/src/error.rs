//! The engine's one error type. Messages carry the context (path, slot, node,
//! operation) and never repeat their cause: the cause is only in `#[source]`, so a
//! printer that walks the chain (`anyhow`'s `{:#}`, [`chain`]) prints each part once.
//! [`Error::code`] is stable: the REST API and scripts branch on it.

use std::path::PathBuf;

use bootctl::layout::Slot;

use crate::wire::Phase;

/// Why a bundle is refused on this node. Each reason is a variant, so a client can
/// tell them apart; the text is what `qq` prints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The bundle belongs to another product.
    #[error("the bundle is {bundle} and the node runs {node}")]
    Product {
        /// The bundle's product.
        bundle: String,
        /// The node's.
        node: String,
    },
    /// On-prem bundle on a cloud node, or the reverse.
    #[error("the bundle is for {bundle} nodes and this node is {node}")]
    Target {
        /// The bundle's target, in words.
        bundle: &'static str,
        /// The node's.
        node: &'static str,
    },
    /// The node's hardware model is not in the bundle's list.
    #[error("hardware model {model} is not supported by {version} (supported: {supported})")]
    Model {
        /// The node's model.
        model: String,
        /// The bundle's release.
        version: qimg::Version,
        /// The models it supports, comma-separated.
        supported: String,
    },
    /// The node runs a release older than the bundle's minimum.
    #[error("{version} must be installed over {min} or newer; the node runs {installed}")]
    TooOld {
        /// The bundle's release.
        version: qimg::Version,
        /// Its minimum installed release.
        min: qimg::Version,
        /// What the node runs.
        installed: qimg::Version,
    },
    /// The bundle is older than what runs.
    #[error("{version} is older than the installed {installed}: downgrades are refused")]
    Downgrade {
        /// The bundle's release.
        version: qimg::Version,
        /// What the node runs.
        installed: qimg::Version,
    },
    /// The bundle's release already runs.
    #[error("{0} is already installed")]
    SameVersion(qimg::Version),
    /// No active container, so no installed release to compare with.
    #[error("the installed release is not known (no active container)")]
    InstalledUnknown,
    /// A component the upgrade needs is missing.
    #[error("{0}")]
    Incomplete(&'static str),
    /// A factory install on a node that already runs a release.
    #[error("the node already runs {0}: upgrade it instead")]
    AlreadyInstalled(qimg::Version),
    /// A factory install of a release whose platform is not the one booted.
    #[error("the bundle's platform is {bundle} and the node booted platform {booted}")]
    OtherPlatform {
        /// The bundle's platform version.
        bundle: qimg::Version,
        /// The booted slot's.
        booted: qimg::Version,
    },
    /// The file is not the bundle the cluster's plan pins (another file under
    /// the same name).
    #[error(
        "it is not the bundle the upgrade pinned: this file has {found}, the pinned bundle has {pinned}"
    )]
    NotPinned {
        /// This file's.
        found: qimg::BundlePin,
        /// The plan's.
        pinned: qimg::BundlePin,
    },
    /// A firmware payload may not be flashed on this node.
    #[error("firmware {component}: {why}")]
    Firmware {
        /// The component.
        component: String,
        /// Why (from the firmware plan).
        why: String,
    },
}

/// Why an upgrade may not start now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Block {
    /// Another process holds the node's upgrade lock.
    #[error("another upgrade operation is running{}", .pid.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The holder's pid, when it wrote one.
        pid: Option<String>,
    },
    /// The bundle asks for a settle period after the last commit.
    #[error("{reason}")]
    Settle {
        /// Until when (Unix seconds).
        until: u64,
        /// The whole reason, in words.
        reason: String,
    },
}

/// What an operation was, for [`Error::WrongState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Prepare.
    Prepare,
    /// Commit.
    Commit,
    /// Cancel.
    Cancel,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Prepare => "prepare",
            Op::Commit => "commit",
            Op::Cancel => "cancel",
        })
    }
}

/// How a container failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerFailure {
    /// The image has no `/entry` program (process runtime).
    #[error("the image has no /entry ({0})")]
    NoEntry(PathBuf),
    /// Its program ended before it reported healthy.
    #[error("its entry program exited before it was healthy (log: {log})")]
    Exited {
        /// The last lines of its log.
        log: String,
    },
    /// Not healthy within the time limit.
    #[error("not healthy after {secs:.1} s ({what})")]
    Timeout {
        /// Seconds waited.
        secs: f64,
        /// What was waited for.
        what: String,
    },
    /// Another container runs.
    #[error("the running container is {0}")]
    Other(String),
    /// systemctl refused (nspawn runtime).
    #[error("systemctl {op} failed: {stderr}")]
    Systemctl {
        /// The systemctl verb.
        op: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// The unit ended up failed or inactive.
    #[error("unit is {0}")]
    Unit(String),
    /// The image's files could not be extracted (process runtime).
    #[error("extracting the image's files: {0}")]
    Extract(String),
}

/// The platform health gate said no.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(pub String);

/// What is wrong with a damaged state record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// Not JSON, or a field of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A field the state needs is missing.
    #[error("missing (state {0} needs it)")]
    Missing(Phase),
    /// A field has a value that is not allowed.
    #[error("{0}")]
    Invalid(String),
    /// A field is set that the state forbids.
    #[error("not allowed in state {0}")]
    Unexpected(Phase),
}

/// Errors of the upgrade engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node configuration is missing or invalid.
    #[error("node config {path}: {problem}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The node configuration cannot be parsed.
    #[error("node config {path} cannot be parsed")]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// Reading or writing a file of the node failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state record cannot be used: nothing was changed.
    #[error("state record {path} is damaged: {field}")]
    StateDamaged {
        /// The file.
        path: PathBuf,
        /// The field (a JSON path; `.` for the whole record).
        field: String,
        /// What is wrong with it.
        #[source]
        source: Damage,
    },
    /// The upgrade may not proceed now (another operation runs, a settle period).
    #[error("upgrade blocked")]
    Blocked(#[source] Block),
    /// The operation does not apply in the current state.
    #[error("{op} is not possible in state {}: {hint}", .state.name())]
    WrongState {
        /// The operation.
        op: Op,
        /// The current state.
        state: Phase,
        /// What to do instead.
        hint: &'static str,
    },
    /// The bundle may not be installed on this node.
    #[error("bundle {path} refused")]
    Refused {
        /// The bundle.
        path: PathBuf,
        /// Why.
        #[source]
        reason: Refusal,
    },
    /// The bundle cannot be opened.
    #[error("bundle {path} cannot be opened")]
    BundleOpen {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is damaged, unsigned, or cannot be read.
    #[error("bundle {path} failed verification")]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: qimg::Error,
    },
    /// A boot-slot or boot-entry operation failed.
    #[error("{op}")]
    Boot {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: bootctl::Error,
    },
    /// What the node booted cannot be told.
    #[error("the booted system cannot be identified: {problem}")]
    Booted {
        /// What is missing or inconsistent.
        problem: String,
    },
    /// Flashing firmware failed.
    #[error("firmware")]
    Firmware(#[source] firmware::Error),
    /// A firmware device could not be flashed.
    #[error("firmware {component} failed: {reason}")]
    FirmwareFailed {
        /// The firmware component.
        component: String,
        /// Why (the device's or backend's words).
        reason: String,
    },
    /// A container could not be staged, started, stopped or found healthy.
    #[error("container {version}")]
    Container {
        /// The container's release version.
        version: String,
        /// What went wrong.
        #[source]
        failure: ContainerFailure,
    },
    /// The platform health gate failed.
    #[error("slot {slot}: health check failed")]
    Unhealthy {
        /// The slot that booted.
        slot: Slot,
        /// What the gate said.
        #[source]
        source: Unhealthy,
    },
    /// The reboot command failed.
    #[error("reboot command `{command}` failed")]
    Reboot {
        /// The command.
        command: String,
        /// Its exit status, or why it did not run.
        #[source]
        source: std::io::Error,
    },
    /// Cancelled by the operator; the node is where it was.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A stable identifier of the kind of error, for scripts and the REST API.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config { .. } | Error::ConfigSyntax { .. } => "config",
            Error::Io { .. } => "io",
            Error::StateDamaged { .. } => "state-damaged",
            Error::Blocked(_) => "blocked",
            Error::WrongState { .. } => "wrong-state",
            Error::Refused { .. } => "refused",
            Error::BundleOpen { .. } => "bundle-open",
            Error::Bundle { .. } => "bundle-damaged",
            Error::Boot { .. } => "boot",
            Error::Booted { .. } => "booted-unknown",
            Error::Firmware(_) => "firmware",
            Error::FirmwareFailed { .. } => "firmware-failed",
            Error::Container { .. } => "container",
            Error::Unhealthy { .. } => "unhealthy",
            Error::Reboot { .. } => "reboot",
            Error::Cancelled => "cancelled",
        }
    }

    /// True for answers rather than faults: a refused bundle, a blocked or
    /// misplaced operation (the CLI's exit code 1).
    pub fn is_negative(&self) -> bool {
        matches!(
            self,
            Error::Blocked(_)
                | Error::WrongState { .. }
                | Error::Refused { .. }
                | Error::BundleOpen { .. }
                | Error::Bundle { .. }
                | Error::Cancelled
        )
    }
}

pub use qutil::chain;

pub(crate) fn boot_err(op: impl Into<String>) -> impl FnOnce(bootctl::Error) -> Error {
    let op = op.into();
    move |source| Error::Boot { op, source }
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

impl From<qimg::Cancelled> for Error {
    fn from(_: qimg::Cancelled) -> Error {
        Error::Cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_repeat_their_cause() {
        let e = Error::Refused {
            path: "/u/x.qimg".into(),
            reason: Refusal::SameVersion("7.1".parse().unwrap()),
        };
        assert_eq!(
            chain(&e),
            "bundle /u/x.qimg refused: 7.1 is already installed"
        );
        assert_eq!(e.code(), "refused");
        let e = Error::Blocked(Block::Locked {
            pid: Some("12".into()),
        });
        assert_eq!(
            chain(&e),
            "upgrade blocked: another upgrade operation is running (pid 12)"
        );
        let e = Error::StateDamaged {
            path: "/s/upgrade.json".into(),
            field: "to".into(),
            source: Damage::Missing(Phase::Committing),
        };
        assert_eq!(
            chain(&e),
            "state record /s/upgrade.json is damaged: to: missing (state UPGRADE_COMMITTING needs it)"
        );
    }
}
