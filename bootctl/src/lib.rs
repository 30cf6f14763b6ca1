//! Boot-slot control for A/B platform upgrades (issue "Boot slots").
//!
//! This crate will hold: the node disk layout (GPT with Discoverable Partitions
//! Specification type GUIDs: ESP, root A/B with dm-verity, data), reading and
//! writing GPT on image files and block devices, the ESP backends (a mounted
//! directory on a live node, the FAT partition inside an image file offline),
//! systemd-boot boot-counting entry names, a pure model of systemd-boot 252's entry
//! selection, and the `qbootctl` CLI (`status`, `set-next`, `mark-good`,
//! `mark-bad`, `rollback`).
//!
//! Nothing is implemented yet; the crate exists so the workspace has its final shape.
#![deny(missing_docs)]
