//! Node firmware: inventory, plan and safe flashing during prepare.
//!
//! Done so far (issue "Node firmware", in progress):
//! - [`inventory`]: what a node has, read through a root path (DMI, ESRT, NVMe,
//!   external probe commands).
//! - [`plan`]: inventory + a bundle's firmware payloads → skip, flash, or refuse with
//!   the reason (downgrade, format mismatch, outside lowest/highest, no device,
//!   incompatible with the fallback slot's platform, ESP too small for a capsule).
//! - [`backend`]: UEFI capsule-on-disk, flash device file, external vendor tool,
//!   simulated device with fault injection.
//! - [`journal`]: one atomically replaced record per component.
//! - [`flash`]: one planned payload through a backend, journaled step by step,
//!   resumable; results after the reboot from the inventory (ESRT status).
//!
//! - [`prepare`]: payloads from a verified bundle, the node's device configuration,
//!   flashing every planned payload; `qfirmware` (src/main.rs) is its CLI.
#![deny(missing_docs)]

pub mod backend;
pub mod flash;
pub mod inventory;
pub mod journal;
pub mod plan;
pub mod prepare;

use std::path::PathBuf;

/// Errors of the `firmware` library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the inventory cannot be understood.
    #[error("inventory: {path}: {reason}")]
    Inventory {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The journal cannot be read or written.
    #[error("journal {path}")]
    Journal {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A probe command failed.
    #[error("probing {component_id}: {reason}")]
    Probe {
        /// The device.
        component_id: String,
        /// What failed.
        reason: String,
    },
    /// The bundle cannot be opened.
    #[error("opening bundle {path}")]
    BundleOpen {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle does not verify or cannot be read.
    #[error("bundle {path}")]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<qimg::Error>,
    },
    /// A firmware payload is larger than a node holds in memory.
    #[error("firmware component {component:?} is {size} bytes, more than the 256 MiB allowed")]
    PayloadTooLarge {
        /// The component.
        component: String,
        /// Its size.
        size: u64,
    },
    /// A configuration file cannot be used.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A payload to flash has no way to be flashed.
    #[error("cannot flash {component:?}: {reason}")]
    NoBackend {
        /// The component.
        component: String,
        /// Why.
        reason: String,
    },
    /// The ESP cannot be changed.
    #[error("esp file {path}: {reason}")]
    Esp {
        /// The file on the ESP.
        path: String,
        /// What failed.
        reason: String,
    },
    /// Another flash holds the journal.
    #[error("another qfirmware flash is running (lock {path} is held)")]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
}

impl Error {
    /// A stable identifier of the kind of error, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Inventory { .. } => "inventory",
            Error::Journal { .. } => "journal",
            Error::Probe { .. } => "probe",
            Error::BundleOpen { .. } => "bundle-open",
            Error::Bundle { .. } => "bundle",
            Error::PayloadTooLarge { .. } => "payload-too-large",
            Error::Config { .. } => "config",
            Error::NoBackend { .. } => "no-backend",
            Error::Esp { .. } => "esp",
            Error::Busy { .. } => "busy",
        }
    }
}
