//! The store of a node alone (a cluster of one): the part of etcd's data model
//! the cluster uses — keys with create and modification revisions from one
//! counter, compare-and-swap, leases that take their keys along, a watch from a
//! revision — held by the agent's own process, as k3s's single server keeps
//! the Kubernetes API on kine instead of etcd. The same `Store` code runs over
//! it (`super::kv`), so one node and many take one upgrade path.
//!
//! Durable when given a file: every change is written to it (atomically,
//! through `qutil::fs`), so a plan survives the agent's restart and the node's
//! reboot. Keys under a lease are not written: a lease is the life of the
//! process that holds it, and a new process starts without one, as an etcd
//! lease expires when its keeper is gone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, io_err};

/// The file's format.
pub const LOCAL_SCHEMA: &str = "qimg-local-store/1";

/// What a watcher may fall behind by before its watch ends (it starts again
/// from a fresh read, as after etcd's compaction).
const WATCH_BACKLOG: usize = 1024;

/// A condition on a key, checked with the write in one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    /// No condition.
    Always,
    /// The key does not exist (etcd: create revision 0).
    Absent,
    /// The key was last modified at this revision.
    ModRev(i64),
    /// The key holds this value under this lease.
    Held(Vec<u8>, i64),
}

/// Keys read under a prefix: key, value, modification revision.
pub type Kvs = Vec<(String, Vec<u8>, i64)>;

/// A watcher's end of the changes.
pub type Watch = tokio::sync::broadcast::Receiver<Arc<Vec<Change>>>;

/// One change a watcher hears of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `key` holds `value` since revision `rev`.
    Put {
        /// The key.
        key: String,
        /// Its value.
        value: Vec<u8>,
        /// Its modification revision.
        rev: i64,
    },
    /// `key` was deleted at revision `rev`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        rev: i64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Item {
    value: String,
    create_revision: i64,
    mod_revision: i64,
    #[serde(skip)]
    lease: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    schema: String,
    revision: i64,
    keys: BTreeMap<String, Item>,
    #[serde(skip)]
    leases: HashMap<i64, (Duration, Instant)>,
    #[serde(skip)]
    next_lease: i64,
}

/// The store of a node alone.
pub struct Local {
    state: Mutex<State>,
    changes: tokio::sync::broadcast::Sender<Arc<Vec<Change>>>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("file", &self.file).finish()
    }
}

impl Local {
    /// A store in memory only (tests, and clusters of one in one process).
    pub fn memory() -> Arc<Local> {
        Arc::new(Local::with(State::default(), None))
    }

    /// The store kept in `file` (created on the first change); what it held
    /// before, without the keys of leases (they went with their process).
    pub fn open(file: &Path) -> Result<Arc<Local>, Error> {
        let state = match std::fs::read(file) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| Error::Damaged {
                    key: file.display().to_string(),
                    problem: e.to_string(),
                })?;
                if s.schema != LOCAL_SCHEMA {
                    return Err(Error::Damaged {
                        key: file.display().to_string(),
                        problem: format!("schema {:?}, expected {LOCAL_SCHEMA:?}", s.schema),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err("reading", file)(e)),
        };
        Ok(Arc::new(Local::with(state, Some(file.to_owned()))))
    }

    fn with(mut state: State, file: Option<PathBuf>) -> Local {
        state.schema = LOCAL_SCHEMA.into();
        state.next_lease = 0x10;
        Local {
            state: Mutex::new(state),
            changes: tokio::sync::broadcast::channel(WATCH_BACKLOG).0,
            file,
        }
    }

    /// Runs `f` on the state with expired leases gone; writes the file and tells
    /// the watchers when it changed something.
    fn with_state<T>(&self, f: impl FnOnce(&mut State, &mut Vec<Change>) -> T) -> Result<T, Error> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changes = Vec::new();
        s.expire(Instant::now(), &mut changes);
        let out = f(&mut s, &mut changes);
        if !changes.is_empty() {
            if let Some(file) = &self.file {
                let bytes = s.saved();
                qutil::fs::write_atomic(file, &bytes).map_err(io_err("writing", file))?;
            }
            let _ = self.changes.send(Arc::new(changes));
        }
        Ok(out)
    }

    /// `key`'s value, modification revision and lease (0: none).
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64, i64)>, Error> {
        self.with_state(|s, _| {
            s.keys
                .get(key)
                .map(|i| (i.value.clone().into_bytes(), i.mod_revision, i.lease))
        })
    }

    /// Every key under `prefix` (key, value, modification revision) and the
    /// store's revision.
    pub fn range(&self, prefix: &str) -> Result<(Kvs, i64), Error> {
        self.with_state(|s, _| (s.under(prefix), s.revision))
    }

    /// Writes `value` under `key` (under `lease` when given) if `cond` holds:
    /// the write's revision, or `None` when the condition failed.
    pub fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
        cond: &Cond,
    ) -> Result<Option<i64>, Error> {
        let value = String::from_utf8(value.to_vec()).map_err(|e| Error::Damaged {
            key: key.into(),
            problem: format!("not UTF-8: {e}"),
        })?;
        self.with_state(|s, ch| {
            if let Some(l) = lease
                && !s.leases.contains_key(&l)
            {
                return Err(Error::NoLease {
                    op: format!("writing {key}"),
                    lease: l,
                });
            }
            if !s.holds(key, cond) {
                return Ok(None);
            }
            s.revision += 1;
            let rev = s.revision;
            let create_revision = s.keys.get(key).map_or(rev, |i| i.create_revision);
            s.keys.insert(
                key.into(),
                Item {
                    value: value.clone(),
                    create_revision,
                    mod_revision: rev,
                    lease: lease.unwrap_or(0),
                },
            );
            ch.push(Change::Put {
                key: key.into(),
                value: value.into_bytes(),
                rev,
            });
            Ok(Some(rev))
        })?
    }

    /// Deletes `key` if it exists and `cond` holds; true when it did.
    pub fn delete_if(&self, key: &str, cond: &Cond) -> Result<bool, Error> {
        self.with_state(|s, ch| {
            if !s.keys.contains_key(key) || !s.holds(key, cond) {
                return false;
            }
            s.revision += 1;
            s.keys.remove(key);
            ch.push(Change::Delete {
                key: key.into(),
                rev: s.revision,
            });
            true
        })
    }

    /// Grants a lease of `ttl`.
    pub fn grant(&self, ttl: Duration) -> Result<i64, Error> {
        self.with_state(|s, _| {
            s.next_lease += 1;
            let id = s.next_lease;
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            id
        })
    }

    /// Renews `lease` for its TTL; false when it is gone.
    pub fn renew(&self, lease: i64) -> Result<bool, Error> {
        self.with_state(|s, _| match s.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                true
            }
            None => false,
        })
    }

    /// Revokes `lease`: its keys go at once.
    pub fn revoke(&self, lease: i64) -> Result<(), Error> {
        self.with_state(|s, ch| {
            if s.leases.remove(&lease).is_none() {
                return Err(Error::NoLease {
                    op: "revoking a lease".into(),
                    lease,
                });
            }
            s.drop_keys_of(&[lease], ch);
            Ok(())
        })?
    }

    /// Every key under `prefix`, the revision they were read at, and every
    /// change after it (nothing is missed in between: one step).
    pub fn watch(&self, prefix: &str) -> Result<(Kvs, i64, Watch), Error> {
        self.with_state(|s, _| (s.under(prefix), s.revision, self.changes.subscribe()))
    }
}

/// What the file holds: the keys that are not under a lease.
#[derive(Serialize)]
struct Saved<'a> {
    schema: &'a str,
    revision: i64,
    keys: BTreeMap<&'a String, &'a Item>,
}

impl State {
    fn saved(&self) -> Vec<u8> {
        serde_json::to_vec(&Saved {
            schema: LOCAL_SCHEMA,
            revision: self.revision,
            keys: self.keys.iter().filter(|(_, i)| i.lease == 0).collect(),
        })
        .expect("plain data serializes")
    }

    fn under(&self, prefix: &str) -> Kvs {
        self.keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, i)| (k.clone(), i.value.clone().into_bytes(), i.mod_revision))
            .collect()
    }

    fn holds(&self, key: &str, cond: &Cond) -> bool {
        let item = self.keys.get(key);
        match cond {
            Cond::Always => true,
            Cond::Absent => item.is_none(),
            Cond::ModRev(r) => item.is_some_and(|i| i.mod_revision == *r),
            Cond::Held(v, l) => item.is_some_and(|i| i.value.as_bytes() == v && i.lease == *l),
        }
    }

    /// Leases past their deadline go, with their keys (in one revision, as etcd).
    fn expire(&mut self, now: Instant, ch: &mut Vec<Change>) {
        let gone: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(l, _)| *l)
            .collect();
        for l in &gone {
            self.leases.remove(l);
        }
        self.drop_keys_of(&gone, ch);
    }

    fn drop_keys_of(&mut self, leases: &[i64], ch: &mut Vec<Change>) {
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, i)| i.lease != 0 && leases.contains(&i.lease))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.revision += 1;
        for key in keys {
            self.keys.remove(&key);
            ch.push(Change::Delete {
                key,
                rev: self.revision,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_conditions_and_leases_as_etcd() {
        let l = Local::memory();
        assert_eq!(l.put("a", b"1", None, &Cond::Absent).unwrap(), Some(1));
        assert_eq!(l.put("a", b"2", None, &Cond::Absent).unwrap(), None);
        assert_eq!(l.put("a", b"2", None, &Cond::ModRev(7)).unwrap(), None);
        assert_eq!(l.put("a", b"2", None, &Cond::ModRev(1)).unwrap(), Some(2));
        assert_eq!(l.get("a").unwrap(), Some((b"2".to_vec(), 2, 0)));
        let lease = l.grant(Duration::from_secs(30)).unwrap();
        assert_eq!(
            l.put("b/x", b"x", Some(lease), &Cond::Always).unwrap(),
            Some(3)
        );
        assert!(
            !l.delete_if("b/x", &Cond::Held(b"x".to_vec(), lease + 1))
                .unwrap()
        );
        assert!(l.put("b/y", b"y", Some(lease + 9), &Cond::Always).is_err());
        let (kvs, rev) = l.range("b/").unwrap();
        assert_eq!((kvs, rev), (vec![("b/x".into(), b"x".to_vec(), 3)], 3));
        l.revoke(lease).unwrap();
        assert_eq!(l.get("b/x").unwrap(), None, "gone with its lease");
        assert!(!l.renew(lease).unwrap());
        assert!(l.revoke(lease).is_err());
    }

    #[test]
    fn an_expired_lease_takes_its_keys_and_watchers_hear_it() {
        let l = Local::memory();
        let lease = l.grant(Duration::from_millis(50)).unwrap();
        l.put("k", b"v", Some(lease), &Cond::Always).unwrap();
        let (kvs, rev, mut rx) = l.watch("").unwrap();
        assert_eq!((kvs.len(), rev), (1, 1));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!l.renew(lease).unwrap(), "expired");
        let ch = rx.try_recv().unwrap();
        assert_eq!(
            *ch,
            vec![Change::Delete {
                key: "k".into(),
                rev: 2
            }]
        );
    }

    #[test]
    fn the_file_keeps_plain_keys_not_leased_ones() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("store.json");
        let l = Local::open(&f).unwrap();
        l.put("plan", b"{}", None, &Cond::Absent).unwrap();
        let lease = l.grant(Duration::from_secs(30)).unwrap();
        l.put("coordinator", b"1", Some(lease), &Cond::Absent)
            .unwrap();
        drop(l);
        let again = Local::open(&f).unwrap();
        assert_eq!(again.get("plan").unwrap(), Some((b"{}".to_vec(), 1, 0)));
        assert_eq!(again.get("coordinator").unwrap(), None);
        assert_eq!(again.put("x", b"1", None, &Cond::Always).unwrap(), Some(3));
        std::fs::write(&f, br#"{"schema":"other/9","revision":0,"keys":{}}"#).unwrap();
        let e = Local::open(&f).unwrap_err();
        assert!(e.to_string().contains("other/9"), "{e}");
    }
}
