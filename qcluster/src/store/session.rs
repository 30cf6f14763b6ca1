//! This node's one lease, as etcd's own `concurrency.Session`: everything the
//! node keeps in etcd while it is up — its registration, the coordinator key
//! while it coordinates — lives under it, so all of it goes together when the
//! node goes (the lease expires) or stops cleanly ([`Session::close`] revokes
//! it). One keeper ([`Session::keep`]) renews it every third of its TTL and
//! grants a new one when it was lost (etcd away longer than the TTL); whoever
//! put keys under the old one puts them again under the new one
//! ([`Session::subscribe`] says when).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{NodeInfo, Store};
use crate::error::Error;

/// A lease's keep-alive stream, kept open across renewals (etcd's own clients
/// keep one per lease; opening one per renewal costs a stream setup each time);
/// over a node alone's store, the lease itself.
pub struct Renewer<'a> {
    store: &'a Store,
    how: Renew,
}

enum Renew {
    Etcd {
        keeper: etcd_client::LeaseKeeper,
        stream: Box<etcd_client::LeaseKeepAliveStream>,
    },
    Local(std::sync::Arc<super::Local>, i64),
}

impl Renewer<'_> {
    /// Renews the lease once; false when it is gone (expired or revoked).
    pub async fn renew(&mut self) -> Result<bool, Error> {
        let (keeper, stream) = match &mut self.how {
            Renew::Local(l, lease) => return l.renew(*lease),
            Renew::Etcd { keeper, stream } => (keeper, stream),
        };
        let r = async {
            self.store
                .timed("renewing the lease", keeper.keep_alive())
                .await?;
            self.store
                .timed("renewing the lease", stream.message())
                .await
        }
        .await;
        match r {
            Ok(r) => Ok(r.is_some_and(|r| r.ttl() > 0)),
            Err(e) if gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// etcd 3.4 answers a keep-alive of an expired lease with this error, at the
/// stream's opening or at a renewal, rather than with TTL 0 (what the client
/// crate expects from 3.5+).
fn gone(e: &Error) -> bool {
    matches!(e, Error::Etcd {
        source: etcd_client::Error::LeaseKeepAliveError(m),
        ..
    } if m.contains("not found"))
}

impl Store {
    /// Opens `lease`'s keep-alive stream.
    pub async fn renewer(&self, lease: i64) -> Result<Renewer<'_>, Error> {
        let how = match &self.kv {
            super::kv::Kv::Local(l) => Renew::Local(l.clone(), lease),
            super::kv::Kv::Etcd(c) => {
                let mut c = c.clone();
                let (keeper, stream) = self
                    .timed("opening the lease's keep-alive", c.lease_keep_alive(lease))
                    .await?;
                Renew::Etcd {
                    keeper,
                    stream: Box::new(stream),
                }
            }
        };
        Ok(Renewer { store: self, how })
    }

    /// Renews `lease` once, on a stream of its own; false when it is gone.
    pub async fn renew(&self, lease: i64) -> Result<bool, Error> {
        match self.renewer(lease).await {
            Ok(mut r) => r.renew().await,
            Err(e) if gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// This node's session: its one lease, kept by one keeper.
#[derive(Clone)]
pub struct Session {
    ttl: Duration,
    lease: Arc<tokio::sync::watch::Sender<Option<i64>>>,
    closed: Arc<AtomicBool>,
}

impl Session {
    /// A session whose lease will live `ttl` (at least a second) unless renewed.
    pub fn new(ttl: Duration) -> Session {
        Session {
            ttl: ttl.max(Duration::from_secs(1)),
            lease: Arc::new(tokio::sync::watch::Sender::new(None)),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lease now: `None` before the first grant, while a lost one is being
    /// replaced, and once closed.
    pub fn lease(&self) -> Option<i64> {
        *self.lease.borrow()
    }

    /// Changes when the lease does (granted, lost, replaced, closed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        self.lease.subscribe()
    }

    /// The keeper: grants the lease, renews it every third of the TTL, and
    /// grants a new one when it was lost. Runs until dropped or closed; `log`
    /// hears what happened (each error as it happens).
    pub async fn keep(&self, store: &Store, log: impl Fn(&str)) {
        let secs = self.ttl.as_secs() as i64;
        // The lease's keep-alive stream, open across renewals; opened again
        // after an error.
        let mut renewer: Option<(i64, Renewer<'_>)> = None;
        while !self.closed.load(Ordering::SeqCst) {
            let r = match self.lease() {
                None => store.lease(secs).await.map(|l| {
                    log(&format!("this node's session: lease {l:x}, {secs} s"));
                    self.lease.send_replace(Some(l));
                }),
                Some(l) => {
                    let renewed = match &mut renewer {
                        Some((rl, r)) if *rl == l => r.renew().await,
                        _ => match store.renewer(l).await {
                            Ok(r) => renewer.insert((l, r)).1.renew().await,
                            Err(e) if gone(&e) => Ok(false),
                            Err(e) => Err(e),
                        },
                    };
                    match renewed {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            log(
                                "this node's lease expired (etcd was away longer than its TTL); granting a new one",
                            );
                            renewer = None;
                            self.lease.send_replace(None);
                            continue;
                        }
                        Err(e) => {
                            renewer = None;
                            Err(e)
                        }
                    }
                }
            };
            if let Err(e) = r {
                log(&format!("keeping this node's lease: {e}"));
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }

    /// Ends the session on a clean stop: revokes the lease, so everything
    /// under it goes at once (the others see the node leave and, if it
    /// coordinated, campaign now rather than after the TTL). The keeper grants
    /// no new one. True when there was a lease to revoke.
    pub async fn close(&self, store: &Store) -> Result<bool, Error> {
        self.closed.store(true, Ordering::SeqCst);
        match self.lease.send_replace(None) {
            Some(l) => store.revoke(l).await.map(|()| true),
            None => Ok(false),
        }
    }
}

/// Keeps `info()` registered under the session's lease: written when the lease
/// is new (the registration under a lost one went with it) and when the info
/// changed (after an upgrade), looked at every third of the TTL, whenever the
/// lease changes and whenever `poke` changes (a job ended: the node list
/// shows the new release at once, not up to a third of the TTL later). Runs
/// until dropped.
pub async fn stay_registered(
    store: Store,
    session: Session,
    info: impl Fn() -> NodeInfo,
    mut poke: Option<tokio::sync::watch::Receiver<u64>>,
    log: impl Fn(&str),
) {
    let mut changed = session.subscribe();
    // What etcd holds, under which lease: written again only when either
    // changed (each write wakes every node's watch).
    let mut written: Option<(i64, NodeInfo)> = None;
    loop {
        if let Some(l) = session.lease() {
            let now = info();
            let same = written
                .as_ref()
                .is_some_and(|(wl, wi)| *wl == l && *wi == now);
            if !same {
                match store.put_info(&now, l).await {
                    Ok(()) => {
                        if written.as_ref().is_none_or(|(wl, _)| *wl != l) {
                            log(&format!("registered in the cluster (lease {l:x})"));
                        }
                        written = Some((l, now));
                    }
                    Err(e) => log(&format!("cluster registration: {e}")),
                }
            }
        }
        let poked = async {
            match poke.as_mut() {
                Some(p) => p.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(session.ttl() / 3) => {}
            r = changed.changed() => {
                if r.is_err() {
                    return; // the session is gone
                }
            }
            alive = poked => {
                if !alive {
                    poke = None; // its sender is gone: the timer alone
                }
            }
        }
    }
}
