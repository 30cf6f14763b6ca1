//! The agent's side of the cluster: its membership (`cluster.json` and its
//! certificate, from `qimgd cluster create`), the connection to the cluster's
//! etcd (made in the background by `daemon::join`, retried until it works).

use std::sync::OnceLock;
use std::time::Duration;

use qcluster::{Membership, NodeDir, NodeSpec, Store};

use crate::error::Error;

/// How long one etcd call may take.
pub const ETCD_LIMIT: Duration = Duration::from_secs(5);

/// This node's place in its cluster.
pub struct ClusterCtx {
    /// `cluster.json`.
    pub membership: Membership,
    /// The node's cluster directory.
    pub dir: NodeDir,
    store: OnceLock<Store>,
}

impl ClusterCtx {
    /// Loads the node's cluster directory.
    pub fn load(dir: &std::path::Path) -> Result<ClusterCtx, Error> {
        let dir = NodeDir::new(dir);
        let membership = dir.load().map_err(Error::Cluster)?;
        Ok(ClusterCtx {
            membership,
            dir,
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
