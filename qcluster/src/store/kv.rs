//! The few key-value operations the store is made of — read a key, read a
//! prefix, write under a condition (and a lease), delete under a condition,
//! leases, a watch from a read's revision — over either backend: the cluster's
//! etcd, or a node alone's [`Local`] store. Everything above (plan, reports,
//! registry, election, session, watch, mirror) is written once over these.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp};

use super::local::{Change, Cond, Kvs, Local, Watch};
use super::{Store, etcd_err};
use crate::error::Error;

/// Where the keys live.
#[derive(Clone)]
pub(crate) enum Kv {
    /// The cluster's etcd.
    Etcd(Box<Client>),
    /// A node alone's store.
    Local(Arc<Local>),
}

/// A key read: value, modification revision, lease (0: none).
pub(crate) type Read = (Vec<u8>, i64, i64);

fn compare(key: &str, cond: &Cond) -> Vec<Compare> {
    match cond {
        Cond::Always => vec![],
        Cond::Absent => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
        Cond::ModRev(r) => vec![Compare::mod_revision(key, CompareOp::Equal, *r)],
        Cond::Held(v, l) => vec![
            Compare::value(key, CompareOp::Equal, v.clone()),
            Compare::lease(key, CompareOp::Equal, *l),
        ],
    }
}

/// A watch: the changes after the read it started from.
pub(crate) enum Watcher {
    Etcd(Box<etcd_client::WatchStream>),
    Local(Watch),
}

impl Watcher {
    /// The next changes; `None` when the watch ended.
    pub(crate) async fn next(&mut self, prefix: &str) -> Result<Option<Vec<Change>>, Error> {
        match self {
            Watcher::Etcd(s) => {
                let Some(r) = s.message().await.map_err(etcd_err("watching"))? else {
                    return Ok(None);
                };
                if r.canceled() {
                    return Err(Error::WatchCancelled {
                        prefix: prefix.into(),
                        reason: r.cancel_reason().to_owned(),
                    });
                }
                Ok(Some(
                    r.events()
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv()?;
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            Some(if e.event_type() == EventType::Delete {
                                Change::Delete {
                                    key,
                                    rev: kv.mod_revision(),
                                }
                            } else {
                                Change::Put {
                                    key,
                                    value: kv.value().to_vec(),
                                    rev: kv.mod_revision(),
                                }
                            })
                        })
                        .collect(),
                ))
            }
            Watcher::Local(rx) => match rx.recv().await {
                Ok(c) => Ok(Some(c.to_vec())),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => Ok(None),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    Err(Error::WatchCancelled {
                        prefix: prefix.into(),
                        reason: format!("{n} changes behind; reading again"),
                    })
                }
            },
        }
    }
}

impl Store {
    /// Whether etcd's access control confines this connection
    /// (`crate::access`): a read outside every cluster's prefix is refused. A
    /// node alone's store: true (nobody else reaches it).
    pub async fn confined(&self) -> Result<bool, Error> {
        let Kv::Etcd(c) = &self.kv else {
            return Ok(true);
        };
        let op = "probing etcd's access control (reading the key /)";
        let r = self
            .call(c, op, |mut c| async move { c.get("/", None).await })
            .await;
        match r {
            Ok(_) => Ok(false),
            Err(Error::Etcd { source, .. }) if source.to_string().contains("permission denied") => {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// One key (noted in the mirror).
    pub(crate) async fn read(&self, op: &str, key: &str) -> Result<Option<Read>, Error> {
        let got = match &self.kv {
            Kv::Etcd(c) => {
                let r = self
                    .call(c, op, |mut c| {
                        let key = key.to_owned();
                        async move { c.get(key, None).await }
                    })
                    .await?;
                r.kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.lease()))
            }
            Kv::Local(l) => l.get(key)?,
        };
        if let Some((v, rev, _)) = &got {
            self.mirror().saw(key, v, *rev);
        }
        Ok(got)
    }

    /// Every key under `prefix` (noted in the mirror), and the revision read at.
    pub(crate) async fn read_prefix(&self, op: &str, prefix: &str) -> Result<(Kvs, i64), Error> {
        let (kvs, at) = match &self.kv {
            Kv::Etcd(c) => {
                let r = self
                    .call(c, op, |mut c| {
                        let prefix = prefix.to_owned();
                        async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
                    })
                    .await?;
                let kvs = r
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            kv.value().to_vec(),
                            kv.mod_revision(),
                        )
                    })
                    .collect();
                (kvs, r.header().map_or(0, |h| h.revision()))
            }
            Kv::Local(l) => l.range(prefix)?,
        };
        {
            let mut m = self.mirror();
            for (k, v, r) in &kvs {
                m.saw(k, v, *r);
            }
        }
        Ok((kvs, at))
    }

    /// Writes `value` under `key` (under `lease` when given) if `cond` holds,
    /// noted in the mirror: the write's revision, `None` when the condition
    /// failed.
    pub(crate) async fn write(
        &self,
        op: &str,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
        cond: Cond,
    ) -> Result<Option<i64>, Error> {
        let rev = match &self.kv {
            Kv::Etcd(c) => {
                let opts = lease.map(|l| PutOptions::new().with_lease(l));
                let txn = Txn::new().when(compare(key, &cond)).and_then([TxnOp::put(
                    key,
                    value.clone(),
                    opts,
                )]);
                let r = self
                    .call(c, op, |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
                r.succeeded()
                    .then(|| r.header().map_or(0, |h| h.revision()))
            }
            Kv::Local(l) => l.put(key, &value, lease, &cond)?,
        };
        if let Some(r) = rev {
            self.mirror().saw(key, &value, r);
        }
        Ok(rev)
    }

    /// Deletes `key` if `cond` holds; true when it did.
    pub(crate) async fn delete_if(&self, op: &str, key: &str, cond: Cond) -> Result<bool, Error> {
        match &self.kv {
            Kv::Etcd(c) => {
                let txn = Txn::new()
                    .when(compare(key, &cond))
                    .and_then([TxnOp::delete(key, None)]);
                let r = self
                    .call(c, op, |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
                Ok(r.succeeded())
            }
            Kv::Local(l) => l.delete_if(key, &cond),
        }
    }

    /// Grants a lease of `ttl_secs`.
    pub async fn lease(&self, ttl_secs: i64) -> Result<i64, Error> {
        match &self.kv {
            Kv::Etcd(c) => Ok(self
                .call(c, "granting a lease", |mut c| async move {
                    c.lease_grant(ttl_secs, None).await
                })
                .await?
                .id()),
            Kv::Local(l) => l.grant(Duration::from_secs(ttl_secs.max(1) as u64)),
        }
    }

    /// Revokes `lease` (its keys go at once).
    pub async fn revoke(&self, lease: i64) -> Result<(), Error> {
        match &self.kv {
            Kv::Etcd(c) => {
                self.call(c, "revoking a lease", |mut c| async move {
                    c.lease_revoke(lease).await
                })
                .await?;
                Ok(())
            }
            Kv::Local(l) => l.revoke(lease),
        }
    }

    /// Every key under the store's prefix, and a watch of the changes after
    /// that read (etcd: from its revision + 1; nothing is missed in between).
    pub(crate) async fn watch_all(&self) -> Result<(Kvs, Watcher), Error> {
        match &self.kv {
            Kv::Etcd(c) => {
                let (all, at) = self
                    .read_prefix("reading the cluster's state", &self.prefix)
                    .await?;
                let mut c = c.clone();
                let stream = self
                    .timed(
                        "watching the plan and the reports",
                        c.watch(
                            self.prefix.clone(),
                            Some(
                                etcd_client::WatchOptions::new()
                                    .with_prefix()
                                    .with_start_revision(at + 1),
                            ),
                        ),
                    )
                    .await?;
                Ok((all, Watcher::Etcd(Box::new(stream))))
            }
            Kv::Local(l) => {
                let (all, _, rx) = l.watch(&self.prefix)?;
                Ok((all, Watcher::Local(rx)))
            }
        }
    }
}
