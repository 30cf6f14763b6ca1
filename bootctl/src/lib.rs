//! Boot-slot control for A/B platform upgrades.
//!
//! Modules:
//! - [`counter`]: systemd-boot's boot-counting file names (`NAME+LEFT-DONE.efi`).
//! - [`verscmp`]: systemd's version comparison, used to order entries.
//! - [`fnmatch`]: systemd-boot's glob matching of `default` patterns against entry ids.
//! - [`model`]: a pure model of systemd-boot 252's entry selection and renames.
//! - [`layout`]: the node disk layout (DPS partition types, derived identifiers).
//! - [`table`]: reading, validating and writing the GPT with the `gpt` crate.
//! - [`entries`]: slot entries on the ESP: install, bless, mark bad, what boots next.
//! - [`slot`]: writing a platform root image into a slot (data + verity partitions).
//! - [`status`]: what `qbootctl` reports and does (status, mark-good, mark-bad,
//!   rollback, set-next); [`efivars`]: the loader's EFI variables.
//! - [`esp`]: the ESP as a mounted directory or inside an image (fatfs), one interface.
//! - [`uki`]: building Unified Kernel Images and inspecting them (goblin).
//!
//! The `qbootctl` binary (named so it never shadows systemd's `bootctl` on a node) is
//! a thin CLI over this library.
#![deny(missing_docs)]

pub mod counter;
pub mod device;
pub use qutil::crashpoint;
pub mod efivars;
pub mod entries;
pub mod esp;
pub mod fnmatch;
pub mod layout;
pub mod model;
pub mod slot;
pub mod status;
pub mod table;
pub mod uki;
pub mod verscmp;

/// Errors of the `bootctl` library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the disk failed.
    #[error("{what}")]
    Device {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An ESP operation failed.
    #[error("ESP: {op} {path}")]
    Esp {
        /// The operation.
        op: &'static str,
        /// The path on the ESP.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file does not fit the ESP; nothing was changed.
    #[error("ESP is full: {path} needs {needed} bytes, {free} are free")]
    EspFull {
        /// The file.
        path: String,
        /// Bytes needed (with slack).
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// A path on the ESP is not acceptable.
    #[error("bad ESP path {path:?}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A slot's partitions are too small for an image; nothing was written.
    #[error("slot {slot:?} is too small: {reason}")]
    SlotTooSmall {
        /// The slot.
        slot: layout::Slot,
        /// Sizes.
        reason: String,
    },
    /// No entry to act on, or no fallback: a negative answer.
    #[error("{reason}")]
    NoEntry {
        /// Why.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a Unified Kernel Image (or a stub one can be built from).
    #[error("not a UKI: {reason}")]
    NotUki {
        /// What is wrong.
        reason: String,
    },
    /// The partition table is damaged, inconsistent, or would become so.
    #[error("partition table: {reason}")]
    BadTable {
        /// What is wrong.
        reason: String,
    },
    /// A disk layout or slot label cannot be made from the given sizes or names.
    #[error("layout: {reason}")]
    Layout {
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// A stable identifier of the kind of error, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Device { .. } => "device",
            Error::Esp { .. } => "esp",
            Error::EspFull { .. } => "esp-full",
            Error::BadPath { .. } => "bad-path",
            Error::SlotTooSmall { .. } => "slot-too-small",
            Error::NoEntry { .. } => "no-entry",
            Error::File { .. } => "file",
            Error::NotUki { .. } => "not-uki",
            Error::BadTable { .. } => "bad-table",
            Error::Layout { .. } => "layout",
        }
    }
}
