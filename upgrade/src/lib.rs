//! The upgrade engine behind `qq`: prepare and commit of node upgrades, instant
//! (container swap) or platform (reboot into the other A/B slot), with a persisted,
//! crash-safe state machine.
//!
//! - [`state`]: the persisted upgrade state (`UPGRADE_IDLE` … `UPGRADE_COMMITTED`),
//!   its lock, and the `qq upgrade_status` report.
//! - [`node`]: a node's configuration (`node.toml`): disk, ESP, efivars, keys, model,
//!   container runtime, reboot hook; what it runs now.
//! - [`checks`]: whether a bundle may be installed on a node, and in which mode.
//! - [`container`]: staged container images and the runtimes that run them.
//! - [`prepare`], [`commit`]: the two phases, and what happens after a reboot.
//! - [`sim`]: simulated nodes (a disk image made by `imagebuild disk` plus a state
//!   directory) with a simulated systemd-boot, for tests and the demo.
//! - [`cluster`]: nodes in batches (all at once, or rolling).
//!
//! The engine writes no format code of its own: bundles are read with `qimg`, slots
//! and boot entries changed with `bootctl`, firmware flashed with `firmware`.
#![deny(missing_docs)]

use std::path::PathBuf;

pub mod checks;
pub mod cluster;
pub mod commit;
pub mod container;
pub mod node;
pub mod prepare;
pub mod sim;
pub mod state;

/// Errors of the upgrade engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node configuration is missing or invalid.
    #[error("node config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file of the node failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file cannot be read.
    #[error("state file {path} is damaged: {reason}")]
    StateDamaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The upgrade may not proceed now (another operation runs, a settle period).
    #[error("upgrade blocked: {reason}")]
    Blocked {
        /// Why, and until when.
        reason: String,
    },
    /// The operation does not apply in the current state.
    #[error("{op}: not possible in state {state}: {hint}")]
    WrongState {
        /// The operation.
        op: &'static str,
        /// The current state.
        state: String,
        /// What to do instead.
        hint: String,
    },
    /// The bundle may not be installed on this node.
    #[error("bundle {path} refused: {reason}")]
    Refused {
        /// The bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The bundle is damaged, unsigned, or cannot be read.
    #[error("bundle {path}: {source}")]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: qimg::Error,
    },
    /// A boot-slot or boot-entry operation failed.
    #[error("{what}: {source}")]
    Boot {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: bootctl::Error,
    },
    /// Flashing firmware failed.
    #[error("firmware: {source}")]
    Firmware {
        /// The cause.
        #[source]
        source: firmware::Error,
    },
    /// A firmware device could not be flashed.
    #[error("firmware {component}: {reason}")]
    FirmwareFailed {
        /// The firmware component.
        component: String,
        /// Why.
        reason: String,
    },
    /// A container could not be staged, started, stopped or found healthy.
    #[error("container {version}: {reason}")]
    Container {
        /// The container's release version.
        version: String,
        /// What went wrong.
        reason: String,
    },
    /// The node did not come back from a reboot as expected.
    #[error("reboot: {reason}")]
    Reboot {
        /// What happened.
        reason: String,
    },
    /// Cancelled by the operator; the node is where it was.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// True for answers rather than faults: a refused bundle, a blocked or
    /// misplaced operation (the CLI's exit code 1).
    pub fn is_negative(&self) -> bool {
        matches!(
            self,
            Error::Blocked { .. }
                | Error::WrongState { .. }
                | Error::Refused { .. }
                | Error::Bundle { .. }
                | Error::Cancelled
        )
    }
}

pub(crate) fn boot_err(what: impl Into<String>) -> impl FnOnce(bootctl::Error) -> Error {
    let what = what.into();
    move |source| Error::Boot { what, source }
}

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

pub use qimg::Cancel;

impl From<qimg::Cancelled> for Error {
    fn from(_: qimg::Cancelled) -> Error {
        Error::Cancelled
    }
}

/// How the engine reports what it does. The CLI renders it; the engine never prints.
pub trait Observer: qimg::Progress {
    /// A step of the upgrade begins (`"writing slot b"`, `"stopping container"`, …).
    fn step(&self, text: &str);
}

/// An [`Observer`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl qimg::Progress for Silent {
    fn begin(&self, _what: &str, _total: Option<u64>) -> Box<dyn qimg::Task> {
        Box::new(qimg::NoProgress)
    }
}

impl Observer for Silent {
    fn step(&self, _text: &str) {}
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
