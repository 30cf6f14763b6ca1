//! Node firmware inventory and safe flashing during the prepare phase (issue
//! "Node firmware").
//!
//! This crate will hold: the inventory of a node's firmware components, the plan
//! that compares it with a bundle's `firmware` components, pre-flight checks, a
//! persistent journal that survives reboots, and the flashing back-ends, tested
//! against fake flashers; plus the `qfirmware` CLI.
//!
//! Nothing is implemented yet; the crate exists so the workspace has its final shape.
#![deny(missing_docs)]
