//! `qimgd cluster create`: the cluster made once from its spec. Writes the CA
//! (`ca/ca.crt`, `ca/ca.key`: the key stays with the operator) and, per node, the
//! directory its agent and etcd member use (`<node name>/`): `cluster.json` (the
//! spec and which node this is), `ca.crt`, `node.crt` and `node.key` (its TLS
//! identity from the CA), `token.key` (the login-token key every node shares, so a
//! token from one node is accepted by all). Keys are mode 0600.
//!
//! `qimgd cluster reissue`: every node's certificate renewed from the CA in the
//! same directory (the operator's copy of its key), before they expire.

use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_err};
use crate::pki::Ca;
use crate::spec::{ClusterSpec, NodeSpec};

/// What a node keeps of the cluster (`cluster.json` in its directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// Schema: `qimg.cluster/1`.
    pub schema: String,
    /// This node's id.
    pub node_id: u32,
    /// The cluster.
    pub spec: ClusterSpec,
}

/// The schema of `cluster.json`.
pub const SCHEMA: &str = "qimg.cluster/1";

/// The files of a node's cluster directory.
#[derive(Clone, Debug)]
pub struct NodeDir {
    /// The directory.
    pub dir: PathBuf,
}

impl NodeDir {
    /// The directory `dir`.
    pub fn new(dir: &Path) -> NodeDir {
        NodeDir {
            dir: dir.to_owned(),
        }
    }
    /// `cluster.json`.
    pub fn membership(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }
    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// The node's certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    /// The node's key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    /// The shared login-token key.
    pub fn token_key(&self) -> PathBuf {
        self.dir.join("token.key")
    }

    /// Loads `cluster.json`.
    pub fn load(&self) -> Result<Membership, Error> {
        let p = self.membership();
        let bytes = std::fs::read(&p).map_err(io_err("reading", &p))?;
        let m: Membership = serde_json::from_slice(&bytes).map_err(|e| Error::Spec {
            path: p.clone(),
            problem: e.to_string(),
        })?;
        if m.schema != SCHEMA {
            return Err(Error::Spec {
                path: p,
                problem: format!("schema {:?}, expected {SCHEMA:?}", m.schema),
            });
        }
        m.spec.validate(&p)?;
        if m.spec.node(m.node_id).is_none() {
            return Err(Error::Spec {
                path: p,
                problem: format!("node {} is not in the cluster", m.node_id),
            });
        }
        Ok(m)
    }
}

/// The common name of node `n`'s certificate: also its user name in etcd
/// (`crate::access`), which takes a client certificate's common name as the
/// user.
pub fn node_subject(spec: &ClusterSpec, n: &NodeSpec) -> String {
    format!("{} node {}", spec.name, n.name)
}

fn names_of(n: &NodeSpec) -> Vec<String> {
    let mut v = vec![n.name.clone(), "localhost".into(), "127.0.0.1".into()];
    for a in [Some(n.agent), n.etcd_client, n.etcd_peer]
        .into_iter()
        .flatten()
    {
        v.push(a.ip().to_string());
    }
    v.sort();
    v.dedup();
    v
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    let r = if secret {
        qutil::fs::write_secret(path, bytes)
    } else {
        qutil::fs::write_atomic(path, bytes)
    };
    r.map_err(io_err("writing", path))
}

/// Creates the cluster's files under `out` (which must not exist or be empty).
/// Returns each node's directory, in the spec's order.
pub fn create(spec: &ClusterSpec, out: &Path) -> Result<Vec<NodeDir>, Error> {
    spec.validate(out)?;
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Exists(out.to_owned()));
    }
    let ca = Ca::new(&spec.name)?;
    let mut token_key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut token_key)
        .map_err(|_| Error::Io {
            op: "generating the token key",
            path: out.to_owned(),
            source: std::io::Error::other("the system random generator failed"),
        })?;
    let ca_dir = out.join("ca");
    std::fs::create_dir_all(&ca_dir).map_err(io_err("creating", &ca_dir))?;
    write(&ca_dir.join("ca.crt"), ca.cert_pem().as_bytes(), false)?;
    write(&ca_dir.join("ca.key"), ca.key_pem().as_bytes(), true)?;
    let mut dirs = vec![];
    for n in &spec.nodes {
        let d = NodeDir::new(&out.join(&n.name));
        std::fs::create_dir_all(&d.dir).map_err(io_err("creating", &d.dir))?;
        let issued = ca.issue(&node_subject(spec, n), &names_of(n))?;
        write(&d.ca(), ca.cert_pem().as_bytes(), false)?;
        write(&d.cert(), issued.cert_pem.as_bytes(), false)?;
        write(&d.key(), issued.key_pem.as_bytes(), true)?;
        write(&d.token_key(), &token_key, true)?;
        let m = Membership {
            schema: SCHEMA.into(),
            node_id: n.id,
            spec: spec.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&m).map_err(|e| Error::Spec {
            path: d.membership(),
            problem: e.to_string(),
        })?;
        bytes.push(b'\n');
        write(&d.membership(), &bytes, false)?;
        dirs.push(d);
    }
    Ok(dirs)
}

/// One node's renewed certificate ([`reissue`]).
#[derive(Clone, Debug)]
pub struct Reissued {
    /// The node.
    pub node: NodeSpec,
    /// Its directory under the cluster's, with the new `node.crt` (and with
    /// new keys, `node.key`).
    pub dir: NodeDir,
    /// The new certificate's last second (Unix).
    pub expires: i64,
}

/// Renews the certificate of every node of the cluster `create` wrote under
/// `out` from its CA (`out/ca/ca.crt` and the operator's `ca.key`), for
/// [`crate::pki::NODE_CERT_DAYS`] from now; `new_keys`: with a new key each
/// (written before its certificate), else keeping each node's key. Every node
/// directory is checked before anything is written.
pub fn reissue(out: &Path, new_keys: bool) -> Result<Vec<Reissued>, Error> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err("reading", p));
    let ca_dir = out.join("ca");
    let ca = Ca::load(
        &read(&ca_dir.join("ca.crt"))?,
        &read(&ca_dir.join("ca.key"))?,
    )?;
    let spec = first_membership(out)?.spec;
    let mut dirs = vec![];
    for n in &spec.nodes {
        let d = NodeDir::new(&out.join(&n.name));
        let m = d.load()?;
        if m.spec != spec || m.node_id != n.id {
            return Err(Error::Spec {
                path: d.membership(),
                problem: format!("not node {} of the cluster {}", n.id, spec.name),
            });
        }
        let key = if new_keys {
            None
        } else {
            Some(read(&d.key())?)
        };
        dirs.push((n, d, key));
    }
    let mut done = vec![];
    for (n, d, key) in dirs {
        let subject = node_subject(&spec, n);
        let issued = match key {
            Some(k) => ca.renew(&subject, &names_of(n), &k)?,
            None => ca.issue(&subject, &names_of(n))?,
        };
        if new_keys {
            write(&d.key(), issued.key_pem.as_bytes(), true)?;
        }
        write(&d.cert(), issued.cert_pem.as_bytes(), false)?;
        let (expires, _) = crate::pki::expiry(&issued.cert_pem)?;
        done.push(Reissued {
            node: n.clone(),
            dir: d,
            expires,
        });
    }
    Ok(done)
}

/// The membership of any node directory under `out` (they share the spec).
pub(crate) fn first_membership(out: &Path) -> Result<Membership, Error> {
    let entries = std::fs::read_dir(out).map_err(io_err("reading", out))?;
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("cluster.json").is_file())
        .collect();
    names.sort();
    let first = names.first().ok_or_else(|| Error::Spec {
        path: out.to_owned(),
        problem: "no node directory (with cluster.json) here: give the directory `qimgd cluster create` wrote".into(),
    })?;
    NodeDir::new(first).load()
}
