//! The agent's side of the cluster: its membership (`cluster.json` and its
//! certificate, from `qimgd cluster create`), the connection to the cluster's
//! etcd (made in the background by `daemon::join`, retried until it works).

use std::sync::OnceLock;
use std::time::Duration;

use qcluster::{Membership, NodeDir, NodeSpec, Session, Store};

use crate::error::Error;

/// How long one etcd call may take.
pub const ETCD_LIMIT: Duration = Duration::from_secs(5);

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
