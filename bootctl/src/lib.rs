//! Boot-slot control for A/B platform upgrades.
//!
//! Done so far (issue "Boot slots", in progress):
//! - [`counter`]: systemd-boot's boot-counting file names (`NAME+LEFT-DONE.efi`).
//! - [`verscmp`]: systemd's version comparison, used to order entries.
//! - [`fnmatch`]: systemd-boot's glob matching of `default` patterns against entry ids.
//! - [`model`]: a pure model of systemd-boot 252's entry selection and renames.
//! - [`layout`]: the node disk layout (DPS partition types, derived identifiers).
//! - [`table`]: reading, validating and writing the GPT with the `gpt` crate.
//!
//! Still to come: the ESP backends (a mounted directory on a live node, the FAT
//! partition inside an image file offline), UKI building and inspection, and the
//! `qbootctl` CLI (`status`, `set-next`, `mark-good`, `mark-bad`, `rollback`).
#![deny(missing_docs)]

pub mod counter;
pub mod fnmatch;
pub mod layout;
pub mod model;
pub mod table;
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
    /// The partition table is damaged, inconsistent, or would become so.
    #[error("partition table: {reason}")]
    BadTable {
        /// What is wrong.
        reason: String,
    },
}
