//! The persisted upgrade record: one JSON file (`upgrade.json` in the node's state
//! directory), rewritten atomically (temporary file, fsync, rename, fsync of the
//! directory) at every transition, and the lock file held by the process running a
//! prepare or commit. Killing that process at any point leaves the last record
//! written; the next command sees the lock free and recovers ([`crate::recovery`]).
//!
//! The file holds [`crate::wire::Record`]; the engine only ever handles the typed
//! [`crate::state::NodeState`], and [`Store`] converts both ways.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
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
        let field = e.path().to_string();
        damaged(field, Damage::Syntax(e.into_inner().to_string()))
    })?;
    NodeState::try_from(record).map_err(|(field, source)| damaged(field.into(), source))
}

/// How long [`Store::lock`] tries again when this process seems to hold the lock.
pub const SELF_HELD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The state directory: the record and the lock.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Holds the upgrade lock while alive.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

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
        let mut bytes = serde_json::to_vec_pretty(&r).expect("a record always serializes");
        bytes.push(b'\n');
        qutil::fs::write_atomic(&self.path(), &bytes).map_err(io_err("writing", self.path()))?;
        bootctl::crashpoint::reached(&format!("state:{}", r.state.name()));
        if let Some(step) = &r.step {
            bootctl::crashpoint::reached(&format!("step:{step}"));
        }
        Ok(())
    }

    fn lock_file(&self) -> Result<(File, PathBuf), Error> {
        let p = self.dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_err("opening", &p))?;
        Ok((f, p))
    }

    fn holder(p: &Path) -> Block {
        let pid = std::fs::read_to_string(p).unwrap_or_default();
        let pid = pid.trim();
        Block::Locked {
            pid: (!pid.is_empty()).then(|| pid.to_owned()),
        }
    }

    /// Takes the upgrade lock (an open-file-description lock on `lock`, released
    /// when the process ends however it ends, and held against other threads of
    /// this process too), or says who holds it.
    ///
    /// A lock this process released can stay held for a moment: a child forked by
    /// another thread (to exec a container or a tool) shares the open file
    /// description until its exec closes it. So when the holder is this process,
    /// the lock is tried again for up to [`SELF_HELD_RETRY`] before the answer is
    /// "blocked".
    pub fn lock(&self) -> Result<Lock, Error> {
        let (mut f, p) = self.lock_file()?;
        let deadline = std::time::Instant::now() + SELF_HELD_RETRY;
        loop {
            let mut fl = whole_file(libc::F_WRLCK);
            // SAFETY: fcntl on a descriptor we own with a valid flock struct.
            if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } == 0 {
                break;
            }
            let holder = Store::holder(&p);
            let ours = holder
                == Block::Locked {
                    pid: Some(std::process::id().to_string()),
                };
            if !ours || std::time::Instant::now() >= deadline {
                return Err(Error::Blocked(holder));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        f.set_len(0).map_err(io_err("writing", &p))?;
        write!(f, "{}", std::process::id()).map_err(io_err("writing", &p))?;
        Ok(Lock { _file: f })
    }

    /// Who holds the lock, if anyone. Only tests the lock (F_OFD_GETLK), so it
    /// never gets in the way of a process taking it.
    pub fn lock_holder(&self) -> Option<Block> {
        let (f, p) = self.lock_file().ok()?;
        let mut fl = whole_file(libc::F_WRLCK);
        // SAFETY: as in `lock`.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
            return None;
        }
        (i32::from(fl.l_type) != libc::F_UNLCK).then(|| Store::holder(&p))
    }
}

fn whole_file(kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
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
