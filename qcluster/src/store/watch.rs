//! etcd's watch of the cluster's prefix, from the revision of one complete read
//! + 1, feeding this process's mirror (`crate::mirror`) and waking its loops.

use etcd_client::{EventType, GetOptions, WatchOptions};

use super::{Store, etcd_err};
use crate::error::Error;

impl Store {
    /// Keeps the mirror (`crate::mirror`) current from one read of the prefix and
    /// etcd's watch after it; ticks `changes` whenever the plan or a node's report
    /// changes, and `vacancy` whenever the coordinator key goes (revoked or its
    /// lease expired), until the watch ends or fails (then the mirror is no longer
    /// trusted and the caller starts this again). A source of wake-ups, not a wait:
    /// whoever listens also polls.
    pub async fn watch_changes(
        &self,
        changes: &tokio::sync::watch::Sender<u64>,
        vacancy: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), Error> {
        // Not trusted once this ends, however it ends (dropped included).
        struct Lost<'a>(&'a Store);
        impl Drop for Lost<'_> {
            fn drop(&mut self) {
                self.0.mirror().lost();
            }
        }
        let _lost = Lost(self);
        self.follow(changes, vacancy).await
    }

    async fn follow(
        &self,
        changes: &tokio::sync::watch::Sender<u64>,
        vacancy: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), Error> {
        let (plan, reports, coordinator) = (
            self.key("plan"),
            self.key("reports/"),
            self.key("coordinator"),
        );
        let all = self
            .call("reading the cluster's state", |mut c| {
                let prefix = self.prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let at = all.header().map_or(0, |h| h.revision());
        let mut c = self.client.clone();
        let mut stream = self
            .timed(
                "watching the plan and the reports",
                c.watch(
                    self.prefix.clone(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(at + 1),
                    ),
                ),
            )
            .await?;
        self.mirror().reset(all.kvs().iter().map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
                kv.mod_revision(),
            )
        }));
        changes.send_modify(|n| *n += 1); // whatever changed while nobody watched
        while let Some(r) = stream.message().await.map_err(etcd_err("watching"))? {
            if r.canceled() {
                return Err(Error::WatchCancelled {
                    prefix: self.prefix.clone(),
                    reason: r.cancel_reason().to_owned(),
                });
            }
            let (mut state, mut vacant) = (false, false);
            {
                let mut m = self.mirror();
                for e in r.events() {
                    let Some(kv) = e.kv() else { continue };
                    let k = String::from_utf8_lossy(kv.key());
                    if e.event_type() == EventType::Delete {
                        m.deleted(&k, kv.mod_revision());
                    } else {
                        m.saw(&k, kv.value(), kv.mod_revision());
                    }
                    state |= k == plan || k.starts_with(&reports);
                    vacant |= k == coordinator && e.event_type() == EventType::Delete;
                }
            }
            if state {
                changes.send_modify(|n| *n += 1);
            }
            if vacant {
                vacancy.send_modify(|n| *n += 1);
            }
        }
        Ok(())
    }
}
