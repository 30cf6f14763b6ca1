//! Small jobs every qimg crate shares, written once: atomic file replacement with a
//! directory fsync ([`fs`]), sparse copies ([`fs::copy_sparse`]), crash points for
//! tests ([`crashpoint`]), and the glue of every binary ([`cli`]: stdout that
//! tolerates a closed pipe, JSON printing, exit codes, one indicatif adapter), and
//! outside commands run with a time limit ([`process`]).
//!
//! It depends on nothing of ours, so every crate may depend on it.
#![deny(missing_docs)]

pub mod cli;
pub mod crashpoint;
pub mod fs;
pub mod lock;
pub mod process;
pub mod progress;
pub mod require;

/// Now, in Unix milliseconds (a cluster's plans, records and clocks).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An error and its causes on one line, `: `-separated (each part once, since no
/// message repeats its source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
