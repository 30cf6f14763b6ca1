//! The persisted upgrade record: one JSON file (`upgrade.json` in the node's state
//! directory), rewritten atomically (temporary file, fsync, rename, fsync of the
//! directory) at every transition, and the lock file held by the process running a
//! prepare or commit. Killing that process at any point leaves the last record
//! written; the next command sees the lock free and recovers ([`crate::recovery`]).
//!
//! The file holds [`crate::wire::Record`]; the engine only ever handles the typed
//! [`crate::state::NodeState`], and [`Store`] converts both ways.

use std::path::{Path, PathBuf};

use crate::error::{Block, Damage, Error, io_err};
use crate::state::NodeState;
use crate::wire::Record;

/// Parses record bytes into the typed state; the error names the field.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<NodeState, Error> {
    let damaged = |field: String, source: Damage| Error::StateDamaged {
        path: path.to_owned(),
        field,
        source,
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let record: Record = serde_path_to_error::deserialize(de).map_err(|e| {
        // An unknown key named "" has an empty path: name it so the message has one.
        let field = match e.path().to_string() {
            p if p.is_empty() => "\"\"".to_owned(),
            p => p,
        };
        damaged(field, Damage::Syntax(e.into_inner().to_string()))
    })?;
    NodeState::try_from(record).map_err(|(field, source)| damaged(field.into(), source))
}

/// The state directory: the record and the lock.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Holds the upgrade lock while alive.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] qutil::lock::Lock);

impl Store {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(io_err("creating state directory", dir))?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record's file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("upgrade.json")
    }

    /// The typed state (a fresh one when none was written yet). A damaged record is
    /// [`Error::StateDamaged`] naming the field; nothing is changed.
    pub fn load(&self) -> Result<NodeState, Error> {
        let p = self.path();
        match std::fs::read(&p) {
            Ok(b) => parse(&p, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(io_err("reading", p)(e)),
        }
    }

    /// Writes `s` atomically. A crash point named `state:<STATE>` (and
    /// `step:<step>` when there is a step) follows every write, for tests.
    pub fn put(&self, s: &mut NodeState) -> Result<(), Error> {
        s.updated_at = crate::now();
        let r = Record::from(&*s);
        qutil::fs::write_json(&self.path(), &r).map_err(io_err("writing", self.path()))?;
        bootctl::crashpoint::reached(&format!("state:{}", r.state.name()));
        if let Some(step) = &r.step {
            bootctl::crashpoint::reached(&format!("step:{step}"));
        }
        Ok(())
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Takes the node's upgrade lock (`qutil::lock`: released when the process ends
    /// however it ends, exclusive between threads too), or says who holds it.
    pub fn lock(&self) -> Result<Lock, Error> {
        let p = self.lock_path();
        match qutil::lock::try_lock(&p).map_err(io_err("locking", &p))? {
            Ok(l) => Ok(Lock(l)),
            Err(h) => Err(Error::Blocked(Block::Locked { pid: h.pid })),
        }
    }

    /// Who holds the lock, if anyone (only tests it).
    pub fn lock_holder(&self) -> Option<Block> {
        qutil::lock::holder(&self.lock_path()).map(|h| Block::Locked { pid: h.pid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Mode, Plan, Release, Stage};

    #[test]
    fn records_round_trip_and_the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap(), NodeState::default());
        let rel = |v: &str, slot| Release {
            version: v.parse().unwrap(),
            platform_version: "7.0".parse().unwrap(),
            slot,
        };
        let mut st = NodeState {
            stage: Stage::Prepared(Plan {
                mode: Mode::Platform,
                from: rel("7.0", bootctl::layout::Slot::A),
                to: rel("7.1", bootctl::layout::Slot::B),
            }),
            ..NodeState::default()
        };
        s.put(&mut st).unwrap();
        assert_eq!(s.load().unwrap(), st);
        let held = s.lock().unwrap();
        assert!(matches!(
            s.lock(),
            Err(Error::Blocked(Block::Locked { .. }))
        ));
        assert_eq!(
            s.lock_holder(),
            Some(Block::Locked {
                pid: Some(std::process::id().to_string())
            })
        );
        drop(held);
        assert!(s.lock_holder().is_none());
        std::fs::write(d.path().join("upgrade.json"), b"{").unwrap();
        assert!(matches!(s.load(), Err(Error::StateDamaged { .. })));
    }
}
