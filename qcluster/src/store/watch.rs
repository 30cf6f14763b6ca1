//! The watch of the cluster's prefix (etcd's, or a node alone's store's), from
//! the revision of one complete read + 1, feeding this process's mirror (`crate::mirror`) and waking its loops.

use super::Store;
use super::local::Change;
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
            self.key(super::PLAN),
            self.key("reports/"),
            self.key(super::COORDINATOR),
        );
        let (all, mut watcher) = self.watch_all().await?;
        self.mirror().reset(all);
        changes.send_modify(|n| *n += 1); // whatever changed while nobody watched
        while let Some(events) = watcher.next(&self.prefix).await? {
            let (mut state, mut vacant) = (false, false);
            {
                let mut m = self.mirror();
                for e in events {
                    let k = match e {
                        Change::Delete { key, rev } => {
                            m.deleted(&key, rev);
                            vacant |= key == coordinator;
                            key
                        }
                        Change::Put { key, value, rev } => {
                            m.saw(&key, &value, rev);
                            key
                        }
                    };
                    state |= k == plan || k.starts_with(&reports);
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
