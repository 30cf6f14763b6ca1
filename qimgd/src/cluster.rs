//! The agent's side of the cluster: its membership (`cluster.json` and its
//! certificate, from `qimgd cluster create`), the connection to the cluster's
//! etcd (made in the background by `daemon::join`, retried until it works).
//!
//! A node in no cluster is a cluster of one ([`ClusterCtx::alone`]): a spec of
//! itself, and its plan and report in its own store (`qcluster::Local`, one
//! file in the state directory), so the member and the coordinator are the one
//! upgrade path for one node and for many.

use std::sync::OnceLock;
use std::time::Duration;

use qcluster::{ClusterSpec, Membership, NodeDir, NodeSpec, Session, Store};

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

/// The name of a node alone's cluster of one (its keys' prefix).
pub const ALONE: &str = "alone";

/// The file of a node alone's store, in its state directory.
pub const ALONE_STORE: &str = "plan.json";

/// This node's place in its cluster.
pub struct ClusterCtx {
    /// `cluster.json`.
    pub membership: Membership,
    /// The node's cluster directory (`None`: its store is not etcd).
    pub dir: Option<NodeDir>,
    /// True for a node in no cluster (a cluster of one).
    alone: bool,
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
            dir: Some(dir),
            alone: false,
            session: Session::new(lease_ttl),
            store: OnceLock::new(),
        })
    }

    /// A node in no cluster as a cluster of one: node `id` called `name`,
    /// serving on `agent`, its keys in `file` (created on the first change).
    pub fn alone(
        id: u32,
        name: &str,
        agent: std::net::SocketAddr,
        file: &std::path::Path,
        lease_ttl: Duration,
    ) -> Result<ClusterCtx, Error> {
        let spec = ClusterSpec {
            name: ALONE.into(),
            max_node_failures: 0,
            nodes: vec![NodeSpec {
                id,
                name: name.into(),
                agent,
                etcd_client: None,
                etcd_peer: None,
            }],
        };
        let local = qcluster::Local::open(file).map_err(Error::Cluster)?;
        let membership = Membership {
            schema: qcluster::create::SCHEMA.into(),
            node_id: id,
            spec,
        };
        Ok(ClusterCtx {
            alone: true,
            ..ClusterCtx::in_process(membership, local, lease_ttl)
        })
    }

    /// Node `membership.node_id` of a cluster whose nodes run in this process
    /// over one `local` store (tests: a cluster in seconds, no etcd).
    pub fn in_process(
        membership: Membership,
        local: std::sync::Arc<qcluster::Local>,
        lease_ttl: Duration,
    ) -> ClusterCtx {
        let store = Store::local(local, &membership.spec.prefix());
        let c = ClusterCtx {
            membership,
            dir: None,
            alone: false,
            session: Session::new(lease_ttl),
            store: OnceLock::new(),
        };
        c.set_store(store);
        c
    }

    /// True for a node in no cluster (a cluster of one).
    pub fn is_alone(&self) -> bool {
        self.alone
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
