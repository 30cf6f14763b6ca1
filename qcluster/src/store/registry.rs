//! Each node's registration: who it is and what it runs, under its session's
//! lease ([`super::Session`]), so a node whose agent stopped disappears with the
//! lease.

use serde::{Deserialize, Serialize};

use super::{Cond, Store};
use crate::error::Error;

/// A node as it registered itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: u32,
    /// Node name.
    pub name: String,
    /// Node UUID.
    pub uuid: String,
    /// The agent's address.
    pub address: String,
    /// Hardware model.
    pub model: String,
    /// The installed release.
    pub installed: Option<qimg::Version>,
    /// The booted slot.
    pub slot: Option<String>,
    /// `online`, or what is wrong.
    pub health: String,
}

impl Store {
    fn node_key(&self, id: u32) -> String {
        self.key(&super::node_key(id))
    }

    /// Rewrites `info` under `lease`.
    pub async fn put_info(&self, info: &NodeInfo, lease: i64) -> Result<(), Error> {
        let key = self.node_key(info.id);
        let value = serde_json::to_vec(info).map_err(|e| Error::Damaged {
            key: key.clone(),
            problem: e.to_string(),
        })?;
        self.write(
            "registering the node",
            &key,
            value,
            Some(lease),
            Cond::Always,
        )
        .await?;
        Ok(())
    }

    /// The registered nodes, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let prefix = format!("{}nodes/", self.prefix);
        let (kvs, _) = self.read_prefix("listing the nodes", &prefix).await?;
        kvs.iter().map(|(k, v, _)| Self::parse(k, v)).collect()
    }

    /// The registered nodes as this process last saw them (the mirror while the
    /// watch is live: no round trip for the endpoints a browser polls); from
    /// etcd otherwise.
    pub async fn nodes_seen(&self) -> Result<Vec<NodeInfo>, Error> {
        match self.seen_under(&format!("{}nodes/", self.prefix)) {
            Some(kvs) => kvs.iter().map(|(k, v)| Self::parse(k, v)).collect(),
            None => self.nodes().await,
        }
    }
}
