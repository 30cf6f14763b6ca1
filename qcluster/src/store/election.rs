//! The coordinator's election, as etcd's own `concurrency.Election`: the
//! coordinator key is created under the campaigner's session lease only if it
//! does not exist, goes with that lease, and is deleted by its holder when it
//! steps down ([`Store::resign`]), so the others, watching it, campaign at once.

use super::{Cond, Store};
use crate::error::Error;

impl Store {
    /// Becomes the coordinator if nobody is: the key is created under `lease`
    /// only if it does not exist (it goes with the lease). True when `me` holds it
    /// under `lease` (a key of this node's under another lease, left by an earlier
    /// run of the agent, goes with that lease: not a lead to count on).
    pub async fn try_lead(&self, me: u32, lease: i64) -> Result<bool, Error> {
        let key = self.key(super::COORDINATOR);
        let me = me.to_string().into_bytes();
        let op = "campaigning for coordinator";
        if self
            .write(op, &key, me.clone(), Some(lease), Cond::Absent)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        Ok(self
            .read(op, &key)
            .await?
            .is_some_and(|(v, _, l)| l == lease && v == me))
    }

    /// The coordinator's node id, if there is one, from etcd.
    pub async fn coordinator(&self) -> Result<Option<u32>, Error> {
        let key = self.key(super::COORDINATOR);
        Ok(self
            .get_one::<u32>("reading the coordinator", &key)
            .await?
            .map(|(id, _)| id))
    }

    /// The coordinator's node id as this process last saw it (the mirror while
    /// the watch is live, no round trip); [`Store::coordinator`] otherwise.
    pub async fn coordinator_seen(&self) -> Result<Option<u32>, Error> {
        let key = self.key(super::COORDINATOR);
        Ok(self
            .seen_one::<u32>("reading the coordinator", &key)
            .await?
            .map(|(id, _)| id))
    }

    /// Steps down: deletes the coordinator key if it is `me`'s under `lease` (a
    /// transaction comparing both; a key of another node, or of an earlier run,
    /// is left alone). True when it was deleted.
    pub async fn resign(&self, me: u32, lease: i64) -> Result<bool, Error> {
        let key = self.key(super::COORDINATOR);
        self.delete_if(
            "resigning as coordinator",
            &key,
            Cond::Held(me.to_string().into_bytes(), lease),
        )
        .await
    }
}
