//! The upgrade history in the store: one record per plan generation under
//! `history/<generation>` (no lease: it outlives every node's session),
//! written by compare-and-swap on its revision, the oldest beyond
//! [`crate::history::KEEP`] deleted when a new one is made.

use super::{Cond, Store};
use crate::error::Error;
use crate::history::UpgradeRecord;

impl Store {
    fn record_key(&self, generation: u64) -> String {
        self.key(&format!("{}{generation:020}", super::HISTORY))
    }

    /// The record of plan `generation` and its revision, as this process last
    /// saw it (the mirror while the watch is live, else etcd).
    pub async fn record_seen(
        &self,
        generation: u64,
    ) -> Result<Option<(UpgradeRecord, i64)>, Error> {
        self.seen_one("reading an upgrade record", &self.record_key(generation))
            .await
    }

    /// Writes `r` if its key is still at `revision` (`None`: no record yet).
    /// False when another writer came first. A new record makes room: the
    /// oldest records beyond [`crate::history::KEEP`] go.
    pub async fn put_record_if(
        &self,
        r: &UpgradeRecord,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        let key = self.record_key(r.generation);
        if !self
            .put_json_if("writing an upgrade record", &key, r, revision)
            .await?
        {
            return Ok(false);
        }
        if revision.is_none() {
            let prefix = self.key(super::HISTORY);
            let (kvs, _) = self
                .read_prefix("reading the upgrade history", &prefix)
                .await?;
            let mut keys: Vec<&String> = kvs.iter().map(|(k, _, _)| k).collect();
            keys.sort();
            let extra = keys.len().saturating_sub(crate::history::KEEP);
            for k in &keys[..extra] {
                self.delete_if("deleting an old upgrade record", k, Cond::Always)
                    .await?;
            }
        }
        Ok(true)
    }

    /// The newest `limit` records, newest first: from the mirror while the
    /// watch is live, else from etcd.
    pub async fn history(&self, limit: usize) -> Result<Vec<UpgradeRecord>, Error> {
        let prefix = self.key(super::HISTORY);
        let kvs = match self.seen_under(&prefix) {
            Some(kvs) => kvs,
            None => {
                let (kvs, _) = self
                    .read_prefix("reading the upgrade history", &prefix)
                    .await?;
                kvs.into_iter().map(|(k, v, _)| (k, v)).collect()
            }
        };
        let mut out: Vec<(String, Vec<u8>)> = kvs;
        // Keys are zero-padded generations: the byte order is the age.
        out.sort_by(|a, b| b.0.cmp(&a.0));
        out.into_iter()
            .take(limit)
            .map(|(k, v)| Self::parse(&k, &v))
            .collect()
    }
}
