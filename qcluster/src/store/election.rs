//! The coordinator's election, as etcd's own `concurrency.Election`: the
//! coordinator key is created under the campaigner's session lease only if it
//! does not exist, goes with that lease, and is deleted by its holder when it
//! steps down ([`Store::resign`]), so the others, watching it, campaign at once.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::Store;
use crate::error::Error;

impl Store {
    /// Becomes the coordinator if nobody is: the key is created under `lease`
    /// only if it does not exist (it goes with the lease). True when `me` holds it
    /// under `lease` (a key of this node's under another lease, left by an earlier
    /// run of the agent, goes with that lease: not a lead to count on).
    pub async fn try_lead(&self, me: u32, lease: i64) -> Result<bool, Error> {
        let key = self.key("coordinator");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                me.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self
            .call("campaigning for coordinator", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if r.succeeded() {
            return Ok(true);
        }
        let me = me.to_string();
        Ok(r.op_responses().iter().any(|o| match o {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .iter()
                .any(|kv| kv.lease() == lease && kv.value() == me.as_bytes()),
            _ => false,
        }))
    }

    /// The coordinator's node id, if there is one, from etcd.
    pub async fn coordinator(&self) -> Result<Option<u32>, Error> {
        let key = self.key("coordinator");
        Ok(self
            .get_one::<u32>("reading the coordinator", &key)
            .await?
            .map(|(id, _)| id))
    }

    /// The coordinator's node id as this process last saw it (the mirror while
    /// the watch is live, no round trip); [`Store::coordinator`] otherwise.
    pub async fn coordinator_seen(&self) -> Result<Option<u32>, Error> {
        let key = self.key("coordinator");
        Ok(self
            .seen_one::<u32>("reading the coordinator", &key)
            .await?
            .map(|(id, _)| id))
    }

    /// Steps down: deletes the coordinator key if it is `me`'s under `lease` (a
    /// transaction comparing both; a key of another node, or of an earlier run,
    /// is left alone). True when it was deleted.
    pub async fn resign(&self, me: u32, lease: i64) -> Result<bool, Error> {
        let key = self.key("coordinator");
        let txn = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, me.to_string()),
                Compare::lease(key.clone(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::delete(key.clone(), None)]);
        let r = self
            .call("resigning as coordinator", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(r.succeeded())
    }
}
