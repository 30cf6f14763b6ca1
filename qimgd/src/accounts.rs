//! Where a node's users ([`crate::users`]) live: its users file outside a
//! cluster; in a cluster, the cluster's etcd (`/qimg/<cluster>/users`), and the
//! node's file is not read. One document either way (`qimgd.users/1`), so a user
//! added, a password changed or a user removed on any node is so on every node.

use qcluster::Store;
use qcluster::store::SharedDoc;

use crate::Error;
use crate::users::{Doc, Users};

/// How many times an edit is tried against writers that came first.
pub const CAS_TRIES: u32 = 10;

/// Where the cluster's users are, for messages.
pub const IN_CLUSTER: &str = "the cluster's etcd (key users)";

/// Connects to the etcd of the cluster a node's cluster directory names (the
/// node's client certificate), as `qimgd user` does on a node of a cluster.
pub async fn connect(dir: &std::path::Path) -> Result<Store, Error> {
    let dir = qcluster::NodeDir::new(dir);
    let membership = dir.load().map_err(Error::Cluster)?;
    Store::connect(&membership, &dir, crate::cluster::ETCD_LIMIT)
        .await
        .map_err(Error::Cluster)
}

/// The cluster's users (none until the first is added): from etcd itself when
/// `fresh`, else as the watch last delivered them.
pub async fn cluster_users(store: &Store, fresh: bool) -> Result<Users, Error> {
    let r = if fresh {
        store.doc::<Doc>(SharedDoc::Users).await
    } else {
        store.doc_seen::<Doc>(SharedDoc::Users).await
    }
    .map_err(Error::Cluster)?;
    match r {
        None => Ok(Users::default()),
        Some((doc, _)) => Users::from_doc(doc, IN_CLUSTER),
    }
}

/// Applies `edit` to the cluster's users and writes them by compare-and-swap:
/// on a conflict (another node's edit came first) they are read again and the
/// edit applied again, at most [`CAS_TRIES`] times. A refused edit writes nothing.
pub async fn edit_cluster_users(
    store: &Store,
    edit: impl Fn(&mut Users) -> Result<(), Error>,
) -> Result<(), Error> {
    for _ in 0..CAS_TRIES {
        let (mut users, revision) = match store
            .doc::<Doc>(SharedDoc::Users)
            .await
            .map_err(Error::Cluster)?
        {
            None => (Users::default(), None),
            Some((doc, r)) => (Users::from_doc(doc, IN_CLUSTER)?, Some(r)),
        };
        edit(&mut users)?;
        if store
            .put_doc_if(SharedDoc::Users, &users.to_doc(), revision)
            .await
            .map_err(Error::Cluster)?
        {
            return Ok(());
        }
    }
    Err(Error::Contended {
        what: "users",
        tries: CAS_TRIES,
    })
}
