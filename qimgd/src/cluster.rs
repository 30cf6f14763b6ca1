//! The agent's side of the cluster: its membership (`cluster.json` and its
//! certificate, from `qimgd cluster create`), the connection to the cluster's
//! etcd (made in the background by `daemon::join`, retried until it works).

use std::sync::OnceLock;
use std::time::Duration;

use qcluster::{Membership, NodeDir, NodeSpec, Session, Store};

use crate::error::Error;

/// How long one etcd call may take.
pub const ETCD_LIMIT: Duration = Duration::from_secs(5);

/// One timed poll in this many reads etcd itself; the others read the mirror
/// (`qcluster::mirror`), kept current by etcd's watch. That bounds how stale a
/// loop can be if the watch stalls without failing, at a fifth of the reads (an
/// idle cluster of 64 nodes spent 0.3 core in etcd answering them).
pub const FRESH_EVERY: u32 = 5;

/// Counts a loop's timed polls: [`Fresh::poll`] says which read etcd.
#[derive(Debug, Default)]
pub struct Fresh(u32);

impl Fresh {
    /// A timed poll: true (read etcd) every [`FRESH_EVERY`]th, the first included.
    pub fn poll(&mut self) -> bool {
        let fresh = self.0 == 0;
        self.0 = (self.0 + 1) % FRESH_EVERY;
        fresh
    }
}

/// This node's place in its cluster.
pub struct ClusterCtx {
    /// `cluster.json`.
    pub membership: Membership,
    /// The node's cluster directory.
    pub dir: NodeDir,
    /// This node's one lease in etcd, kept by `daemon::join`: its registration
    /// and, while it coordinates, the coordinator key live under it.
    pub session: Session,
    store: OnceLock<Store>,
}

impl ClusterCtx {
    /// Loads the node's cluster directory; its session's lease will live
    /// `lease_ttl` unless renewed.
    pub fn load(dir: &std::path::Path, lease_ttl: Duration) -> Result<ClusterCtx, Error> {
        let dir = NodeDir::new(dir);
        let membership = dir.load().map_err(Error::Cluster)?;
        Ok(ClusterCtx {
            membership,
            dir,
            session: Session::new(lease_ttl),
            store: OnceLock::new(),
        })
    }

    /// This node's spec.
    pub fn me(&self) -> &NodeSpec {
        self.membership
            .spec
            .node(self.membership.node_id)
            .expect("validated at load")
    }

    /// The etcd connection, once made.
    pub fn store(&self) -> Option<&Store> {
        self.store.get()
    }

    /// Sets the etcd connection (once).
    pub fn set_store(&self, s: Store) {
        let _ = self.store.set(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_poll_in_five_reads_etcd() {
        let mut f = Fresh::default();
        let polls: Vec<bool> = (0..11).map(|_| f.poll()).collect();
        assert_eq!(
            polls,
            [
                true, false, false, false, false, true, false, false, false, false, true
            ]
        );
    }
}
