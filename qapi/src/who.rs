//! Who asked for something the cluster keeps a record of — an upgrade, its
//! finalize, its rollback — from where, and when: written into the plan by the
//! node that accepted the request (`crate::history`, `crate::rollback`).

use serde::{Deserialize, Serialize};

/// Who asked, from where, when (for an upgrade: who started it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Unix ms.
    pub at_ms: u64,
    /// `user "admin"`, `local root`, …
    pub by: String,
    /// The caller's address, or `the local socket (uid N)`.
    pub from: String,
}
