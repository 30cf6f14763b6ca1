//! `cluster.toml`: the cluster as an operator declares it once, and `cluster.json`,
//! what every node keeps of it. Voting etcd members run on the first 3 nodes (5
//! from 8 nodes up); the other nodes' agents are etcd clients only.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node id (1, 2, …), unique.
    pub id: u32,
    /// Node name, unique.
    pub name: String,
    /// The agent's HTTPS address.
    pub agent: SocketAddr,
    /// etcd client address (voters only).
    #[serde(default)]
    pub etcd_client: Option<SocketAddr>,
    /// etcd peer address (voters only).
    #[serde(default)]
    pub etcd_peer: Option<SocketAddr>,
}

/// The cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The cluster's name (also the etcd cluster token and key prefix).
    pub name: String,
    /// Node failures the data protection tolerates (Qumulo's `max_node_failures`).
    pub max_node_failures: u32,
    /// The nodes, voters first.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
}

/// How many voting etcd members a cluster of `n` nodes has.
pub fn voter_count(n: usize) -> usize {
    match n {
        0..=2 => n,
        3..=7 => 3,
        _ => 5,
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::Spec {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

impl ClusterSpec {
    /// Parses and validates `cluster.toml` (or `cluster.json` when it ends so).
    pub fn load(path: &Path) -> Result<ClusterSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "reading",
            path: path.to_owned(),
            source,
        })?;
        let spec: ClusterSpec = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| bad(path, e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| bad(path, e.to_string()))?
        };
        spec.validate(path)?;
        Ok(spec)
    }

    /// The nodes that run a voting etcd member.
    pub fn voters(&self) -> &[NodeSpec] {
        &self.nodes[..voter_count(self.nodes.len())]
    }

    /// The node with `id`.
    pub fn node(&self, id: u32) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The etcd client endpoints (`https://…`).
    pub fn endpoints(&self) -> Vec<String> {
        self.voters()
            .iter()
            .filter_map(|n| n.etcd_client.map(|a| format!("https://{a}")))
            .collect()
    }

    /// The key prefix of this cluster's state in etcd.
    pub fn prefix(&self) -> String {
        format!("/qimg/{}/", self.name)
    }

    /// Checks ids, names, voters' addresses and the protection level.
    pub fn validate(&self, path: &Path) -> Result<(), Error> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad(path, "name: letters, digits and '-' only, not empty"));
        }
        if self.nodes.is_empty() {
            return Err(bad(path, "a cluster has at least one node"));
        }
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 || !ids.insert(n.id) {
                return Err(bad(path, format!("node id {} is 0 or not unique", n.id)));
            }
            if n.name.is_empty() || !names.insert(n.name.clone()) {
                return Err(bad(
                    path,
                    format!("node name {:?} is empty or not unique", n.name),
                ));
            }
        }
        for v in self.voters() {
            if v.etcd_client.is_none() || v.etcd_peer.is_none() {
                return Err(bad(
                    path,
                    format!(
                        "node {} runs a voting etcd member (the first {} nodes do): it needs etcd_client and etcd_peer",
                        v.name,
                        self.voters().len()
                    ),
                ));
            }
        }
        if self.max_node_failures as usize >= self.nodes.len() {
            return Err(bad(
                path,
                format!(
                    "max_node_failures {} must be below the node count {}",
                    self.max_node_failures,
                    self.nodes.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32) -> String {
        let mut s = "name = \"c1\"\nmax_node_failures = 1\n".to_string();
        for i in 1..=n {
            s.push_str(&format!(
                "[[node]]\nid = {i}\nname = \"n{i}\"\nagent = \"127.0.0.1:{}\"\n",
                18000 + i
            ));
            if i <= 5 {
                s.push_str(&format!(
                    "etcd_client = \"127.0.0.1:{}\"\netcd_peer = \"127.0.0.1:{}\"\n",
                    23790 + i,
                    23890 + i
                ));
            }
        }
        s
    }

    #[test]
    fn voters_and_validation() {
        assert_eq!(
            (1..=9).map(voter_count).collect::<Vec<_>>(),
            vec![1, 2, 3, 3, 3, 3, 3, 5, 5]
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.toml");
        std::fs::write(&p, spec(4)).unwrap();
        let s = ClusterSpec::load(&p).unwrap();
        assert_eq!(s.voters().len(), 3);
        assert_eq!(s.endpoints()[0], "https://127.0.0.1:23791");
        assert_eq!(s.prefix(), "/qimg/c1/");
        std::fs::write(&p, spec(4).replace("id = 2", "id = 1")).unwrap();
        assert!(
            ClusterSpec::load(&p)
                .unwrap_err()
                .to_string()
                .contains("not unique")
        );
        // One node cannot tolerate the failure of one.
        std::fs::write(&p, spec(1)).unwrap();
        assert!(
            ClusterSpec::load(&p)
                .unwrap_err()
                .to_string()
                .contains("below the node count")
        );
        std::fs::write(
            &p,
            spec(9).replace("etcd_client = \"127.0.0.1:23795\"\n", ""),
        )
        .unwrap();
        assert!(
            ClusterSpec::load(&p)
                .unwrap_err()
                .to_string()
                .contains("n5 runs a voting")
        );
    }
}
