//! The cluster's plan, the documents the agents share (users, token keys) and
//! the nodes' reports: written with compare-and-swap on their revisions (a
//! report also plainly, by its node), read from etcd or, while the watch keeps
//! it current, from the mirror.

use serde::Serialize;

use super::{Cond, Store, report_key};
use crate::error::Error;
use crate::plan::{ClusterPlan, NodeReport};

impl Store {
    /// The plan and its modification revision (for compare-and-swap), from etcd.
    pub async fn plan(&self) -> Result<Option<(ClusterPlan, i64)>, Error> {
        self.get_one("reading the plan", &self.key(super::PLAN))
            .await
    }

    /// The plan as this process last saw it (see `crate::mirror`): no round trip
    /// while the watch is live; [`Store::plan`] otherwise.
    pub async fn plan_seen(&self) -> Result<Option<(ClusterPlan, i64)>, Error> {
        self.seen_one("reading the plan", &self.key(super::PLAN))
            .await
    }

    /// Writes `plan` if the plan is still at `revision` (`None`: no plan yet).
    /// False when another writer came first.
    pub async fn put_plan_if(
        &self,
        plan: &ClusterPlan,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        self.put_json_if("writing the plan", &self.key(super::PLAN), plan, revision)
            .await
    }

    /// A document the agents share (`d`; its schema is theirs) and its
    /// revision, from etcd.
    pub async fn doc<T: serde::de::DeserializeOwned>(
        &self,
        d: SharedDoc,
    ) -> Result<Option<(T, i64)>, Error> {
        self.get_one(d.reading(), &self.key(d.name())).await
    }

    /// [`Store::doc`] as this process last saw it (the mirror, no round trip
    /// while the watch is live); from etcd otherwise.
    pub async fn doc_seen<T: serde::de::DeserializeOwned>(
        &self,
        d: SharedDoc,
    ) -> Result<Option<(T, i64)>, Error> {
        self.seen_one(d.reading(), &self.key(d.name())).await
    }

    /// Writes document `d` if it is still at `revision` (`None`: none yet).
    /// False when another writer came first.
    pub async fn put_doc_if<T: Serialize>(
        &self,
        d: SharedDoc,
        value: &T,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        self.put_json_if(d.writing(), &self.key(d.name()), value, revision)
            .await
    }

    /// Writes node `id`'s report.
    pub async fn report(&self, id: u32, r: &NodeReport) -> Result<(), Error> {
        let key = self.key(&report_key(id));
        let value = Self::json(&key, r)?;
        self.write("writing a node report", &key, value, None, Cond::Always)
            .await?;
        Ok(())
    }

    /// Node `id`'s report and its revision (for [`Store::report_if`]), from etcd.
    pub async fn report_of(&self, id: u32) -> Result<Option<(NodeReport, i64)>, Error> {
        let key = self.key(&report_key(id));
        self.get_one("reading a node report", &key).await
    }

    /// Node `id`'s report as this process last saw it (see [`Store::plan_seen`]).
    pub async fn report_of_seen(&self, id: u32) -> Result<Option<(NodeReport, i64)>, Error> {
        let key = self.key(&report_key(id));
        self.seen_one("reading a node report", &key).await
    }

    /// Writes node `id`'s report if it is still at `revision` (compare-and-swap:
    /// a progress report never overwrites a report written meanwhile by another
    /// task). False when another write came first.
    pub async fn report_if(&self, id: u32, r: &NodeReport, revision: i64) -> Result<bool, Error> {
        let key = self.key(&report_key(id));
        let value = Self::json(&key, r)?;
        Ok(self
            .write(
                "writing a node report",
                &key,
                value,
                None,
                Cond::ModRev(revision),
            )
            .await?
            .is_some())
    }

    /// Every node's report, by node id, from the store.
    pub async fn reports(&self) -> Result<Vec<(u32, NodeReport)>, Error> {
        let prefix = self.key("reports/");
        let (kvs, _) = self
            .read_prefix("reading the node reports", &prefix)
            .await?;
        Self::parse_reports(
            &prefix,
            kvs.iter().map(|(k, v, _)| (k.clone(), v.as_slice())),
        )
    }

    /// Every node's report as this process last saw it (see [`Store::plan_seen`]).
    pub async fn reports_seen(&self) -> Result<Vec<(u32, NodeReport)>, Error> {
        let prefix = self.key("reports/");
        match self.seen_under(&prefix) {
            Some(kvs) => {
                Self::parse_reports(&prefix, kvs.iter().map(|(k, v)| (k.clone(), v.as_slice())))
            }
            None => self.reports().await,
        }
    }

    fn parse_reports<'a>(
        prefix: &str,
        kvs: impl Iterator<Item = (String, &'a [u8])>,
    ) -> Result<Vec<(u32, NodeReport)>, Error> {
        kvs.map(|(key, value)| {
            let id = key
                .strip_prefix(prefix)
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| Error::Damaged {
                    key: key.clone(),
                    problem: "not a node id".into(),
                })?;
            Ok((id, Self::parse(&key, value)?))
        })
        .collect()
    }
}

/// The documents the agents share through the store, each under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedDoc {
    /// The cluster's users (names and password hashes): `users`.
    Users,
    /// The keys login tokens are signed with: `token-keys`.
    TokenKeys,
}

impl SharedDoc {
    /// Its key under the cluster's prefix.
    pub fn name(self) -> &'static str {
        match self {
            SharedDoc::Users => "users",
            SharedDoc::TokenKeys => "token-keys",
        }
    }

    fn reading(self) -> &'static str {
        match self {
            SharedDoc::Users => "reading the users",
            SharedDoc::TokenKeys => "reading the token keys",
        }
    }

    fn writing(self) -> &'static str {
        match self {
            SharedDoc::Users => "writing the users",
            SharedDoc::TokenKeys => "writing the token keys",
        }
    }
}
