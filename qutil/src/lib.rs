//! Small jobs every qimg crate shares, written once: atomic file replacement with a
//! directory fsync ([`fs`]), sparse copies ([`fs::copy_sparse`]), crash points for
//! tests ([`crashpoint`]), and the glue of every binary ([`cli`]: stdout that
//! tolerates a closed pipe, JSON printing, exit codes, one indicatif adapter).
//!
//! It depends on nothing of ours, so every crate may depend on it.
#![deny(missing_docs)]

pub mod cli;
pub mod crashpoint;
pub mod fs;
pub mod lock;
pub mod progress;
pub mod require;
