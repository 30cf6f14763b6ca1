//! Boot-slot control for A/B platform upgrades.
//!
//! Done so far (issue "Boot slots", in progress):
//! - [`counter`]: systemd-boot's boot-counting file names (`NAME+LEFT-DONE.efi`).
//! - [`verscmp`]: systemd's version comparison, used to order entries.
//! - [`fnmatch`]: systemd-boot's glob matching of `default` patterns against entry ids.
//! - [`model`]: a pure model of systemd-boot 252's entry selection and renames.
//!
//! Still to come: the node disk layout (GPT with Discoverable Partitions
//! Specification type GUIDs: ESP, root A/B with dm-verity, data) on image files and
//! block devices, the ESP backends (a mounted directory on a live node, the FAT
//! partition inside an image file offline), UKI building and inspection, and the
//! `qbootctl` CLI (`status`, `set-next`, `mark-good`, `mark-bad`, `rollback`).
#![deny(missing_docs)]

pub mod counter;
pub mod fnmatch;
pub mod model;
pub mod verscmp;
