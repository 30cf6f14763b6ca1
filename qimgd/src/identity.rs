//! The node's identity: its UUID and its cluster's, generated on first start and
//! kept in the agent's state directory (`identity.json`).

use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_err};

/// Node and cluster ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// This node's UUID.
    pub node_uuid: String,
    /// The cluster's UUID.
    pub cluster_uuid: String,
}

/// A random (version 4) UUID.
pub fn uuid4() -> Result<String, Error> {
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).map_err(|_| Error::Key {
        what: "identity",
        path: "/dev/urandom".into(),
        problem: "the system random generator failed".into(),
    })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Identity {
    /// Loads `path`, creating it on first start.
    pub fn load_or_create(path: &Path) -> Result<Identity, Error> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Key {
                what: "identity",
                path: path.to_owned(),
                problem: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity {
                    node_uuid: uuid4()?,
                    cluster_uuid: uuid4()?,
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
                }
                qutil::fs::write_json(path, &id).map_err(io_err("writing", path))?;
                Ok(id)
            }
            Err(e) => Err(io_err("reading", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("identity.json");
        let a = Identity::load_or_create(&p).unwrap();
        assert_eq!(a.node_uuid.len(), 36);
        assert_eq!(&a.node_uuid[14..15], "4");
        assert_ne!(a.node_uuid, a.cluster_uuid);
        assert_eq!(Identity::load_or_create(&p).unwrap(), a);
    }
}
