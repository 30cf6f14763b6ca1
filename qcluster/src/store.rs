//! The cluster's state in etcd, through `etcd-client` over mutual TLS: node
//! registrations under leases (a node whose agent stops renewing disappears after
//! the lease's TTL), the coordinator's key (under its lease), the plan (written
//! with compare-and-swap) and the nodes' reports. Every call has a time limit and
//! names what it waited for.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::create::{Membership, NodeDir};
use crate::error::{Error, io_err};
use crate::mirror::Mirror;
use crate::plan::{ClusterPlan, NodeReport};

/// A node as it registered itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: u32,
    /// Node name.
    pub name: String,
    /// Node UUID.
    pub uuid: String,
    /// The agent's address.
    pub address: String,
    /// Hardware model.
    pub model: String,
    /// The installed release.
    pub installed: Option<String>,
    /// The booted slot.
    pub slot: Option<String>,
    /// `online`, or what is wrong.
    pub health: String,
}

/// A connection to the cluster's etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    limit: Duration,
    /// What this process saw of the keys (`crate::mirror`), shared by its clones.
    seen: std::sync::Arc<std::sync::Mutex<Mirror>>,
}

/// The pause before a call is tried again on another member.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// True for errors that another try may not have: a member that cannot be
/// reached, or an election under way.
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // gRPC codes: 1 cancelled, 2 unknown (a broken connection), 14 unavailable;
        // and etcd's own transient answers while a leader is elected.
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            (matches!(s.code() as i32, 1 | 2 | 14) && !m.contains("etcdserver"))
                || [
                    "leader changed",
                    "no leader",
                    "request timed out",
                    "too many requests",
                ]
                .iter()
                .any(|t| m.contains(t))
        }
        _ => false,
    }
}

fn etcd_err(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Error {
    let op = op.into();
    move |source| Error::Etcd { op, source }
}

impl Store {
    /// Connects to the cluster's etcd members with this node's certificate; every
    /// call is limited to `limit`.
    pub async fn connect(m: &Membership, files: &NodeDir, limit: Duration) -> Result<Store, Error> {
        let read = |p: std::path::PathBuf| std::fs::read(&p).map_err(io_err("reading", &p));
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(files.ca())?))
            .identity(Identity::from_pem(read(files.cert())?, read(files.key())?));
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(limit)
            .with_timeout(limit);
        let endpoints = m.spec.endpoints();
        let client = tokio::time::timeout(limit, Client::connect(&endpoints, Some(opts)))
            .await
            .map_err(|_| Error::Timeout {
                op: format!("connecting to {}", endpoints.join(",")),
                secs: limit.as_secs(),
            })?
            .map_err(etcd_err(format!("connecting to {}", endpoints.join(","))))?;
        Ok(Store {
            client,
            prefix: m.spec.prefix(),
            limit,
            seen: Default::default(),
        })
    }

    async fn timed<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.limit, f)
            .await
            .map_err(|_| Error::Timeout {
                op: op.into(),
                secs: self.limit.as_secs(),
            })?
            .map_err(etcd_err(op))
    }

    /// One etcd call, tried again on another connection while a member is
    /// unreachable (the client balances over every member; a dead one fails the
    /// calls routed to it until it is noticed), all within the time limit.
    async fn call<T, Fut>(&self, op: &str, f: impl Fn(Client) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = tokio::time::timeout(left, f(self.client.clone()))
                .await
                .map_err(|_| Error::Timeout {
                    op: op.into(),
                    secs: self.limit.as_secs(),
                })?;
            match r {
                Ok(v) => return Ok(v),
                Err(e)
                    if unreachable(&e) && tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                Err(e) => return Err(etcd_err(op)(e)),
            }
        }
    }

    fn node_key(&self, id: u32) -> String {
        format!("{}nodes/{id:08}", self.prefix)
    }

    /// Grants a lease of `ttl_secs` and writes `info` under it; returns the lease.
    pub async fn register(&self, info: &NodeInfo, ttl_secs: i64) -> Result<i64, Error> {
        let lease = self
            .call("granting a lease", |mut c| async move {
                c.lease_grant(ttl_secs, None).await
            })
            .await?
            .id();
        self.put_info(info, lease).await?;
        Ok(lease)
    }

    /// Rewrites `info` under `lease`.
    pub async fn put_info(&self, info: &NodeInfo, lease: i64) -> Result<(), Error> {
        let key = self.node_key(info.id);
        let value = serde_json::to_vec(info).map_err(|e| Error::Damaged {
            key: key.clone(),
            problem: e.to_string(),
        })?;
        self.call("registering the node", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Renews `lease` once; false when it is gone (expired or revoked).
    pub async fn renew(&self, lease: i64) -> Result<bool, Error> {
        let r = async {
            let mut c = self.client.clone();
            let (mut keeper, mut stream) = self
                .timed("renewing the lease", c.lease_keep_alive(lease))
                .await?;
            self.timed("renewing the lease", keeper.keep_alive())
                .await?;
            self.timed("renewing the lease", stream.message()).await
        }
        .await;
        match r {
            Ok(r) => Ok(r.is_some_and(|r| r.ttl() > 0)),
            // etcd 3.4 answers a renewal of an expired lease with this error rather
            // than with TTL 0 (what the client crate expects from 3.5+).
            Err(Error::Etcd {
                source: etcd_client::Error::LeaseKeepAliveError(m),
                ..
            }) if m.contains("not found") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The registered nodes, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let prefix = format!("{}nodes/", self.prefix);
        let r = self
            .call("listing the nodes", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        r.kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|e| Error::Damaged {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    problem: e.to_string(),
                })
            })
            .collect()
    }
}

impl Store {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn parse<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(v).map_err(|e| Error::Damaged {
            key: key.into(),
            problem: e.to_string(),
        })
    }

    fn json<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(v).map_err(|e| Error::Damaged {
            key: key.into(),
            problem: e.to_string(),
        })
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One key read from etcd (and noted in the mirror), with its revision.
    async fn get_one<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        key: &str,
    ) -> Result<Option<(T, i64)>, Error> {
        let r = self
            .call(op, |mut c| {
                let key = key.to_owned();
                async move { c.get(key, None).await }
            })
            .await?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                self.mirror().saw(key, kv.value(), kv.mod_revision());
                Ok(Some((Self::parse(key, kv.value())?, kv.mod_revision())))
            }
        }
    }

    /// One key as the mirror has it while a watch keeps it current, else from etcd.
    async fn seen_one<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        key: &str,
    ) -> Result<Option<(T, i64)>, Error> {
        let hit = {
            let m = self.mirror();
            m.is_live()
                .then(|| m.get(key).map(|(v, r)| (v.to_vec(), r)))
        };
        match hit {
            Some(None) => Ok(None),
            Some(Some((v, r))) => Ok(Some((Self::parse(key, &v)?, r))),
            None => self.get_one(op, key).await,
        }
    }

    /// The plan and its modification revision (for compare-and-swap), from etcd.
    pub async fn plan(&self) -> Result<Option<(ClusterPlan, i64)>, Error> {
        self.get_one("reading the plan", &self.key("plan")).await
    }

    /// The plan as this process last saw it (see `crate::mirror`): no round trip
    /// while the watch is live; [`Store::plan`] otherwise.
    pub async fn plan_seen(&self) -> Result<Option<(ClusterPlan, i64)>, Error> {
        self.seen_one("reading the plan", &self.key("plan")).await
    }

    /// Writes `plan` if the plan is still at `revision` (`None`: no plan yet).
    /// False when another writer came first.
    pub async fn put_plan_if(
        &self,
        plan: &ClusterPlan,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        self.put_json_if("writing the plan", &self.key("plan"), plan, revision)
            .await
    }

    /// The cluster's users (a document the agents define: names and password
    /// hashes) and its revision, from etcd.
    pub async fn users<T: serde::de::DeserializeOwned>(&self) -> Result<Option<(T, i64)>, Error> {
        self.get_one("reading the users", &self.key("users")).await
    }

    /// The users as this process last saw them (the mirror, no round trip while
    /// the watch is live); [`Store::users`] otherwise.
    pub async fn users_seen<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Option<(T, i64)>, Error> {
        self.seen_one("reading the users", &self.key("users")).await
    }

    /// Writes the users if they are still at `revision` (`None`: none yet).
    /// False when another writer came first.
    pub async fn put_users_if<T: Serialize>(
        &self,
        users: &T,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        self.put_json_if("writing the users", &self.key("users"), users, revision)
            .await
    }

    /// Writes `value` as JSON under `key` if the key is still at `revision`
    /// (`None`: it does not exist yet).
    async fn put_json_if<T: Serialize>(
        &self,
        op: &str,
        key: &str,
        value: &T,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        let cmp = match revision {
            Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let value = Self::json(key, value)?;
        self.put_if(op, key, value, cmp).await
    }

    /// Writes `value` under `key` if `cmp` holds (a transaction); notes a
    /// successful write in the mirror. False when the comparison failed.
    async fn put_if(
        &self,
        op: &str,
        key: &str,
        value: Vec<u8>,
        cmp: Compare,
    ) -> Result<bool, Error> {
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, value.clone(), None)]);
        let r = self
            .call(op, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        self.wrote(key, &value, r.succeeded(), r.header());
        Ok(r.succeeded())
    }

    /// Notes a successful write of this process in the mirror.
    fn wrote(
        &self,
        key: &str,
        value: &[u8],
        succeeded: bool,
        header: Option<&etcd_client::ResponseHeader>,
    ) {
        if let (true, Some(h)) = (succeeded, header) {
            self.mirror().saw(key, value, h.revision());
        }
    }

    /// Writes node `id`'s report.
    pub async fn report(&self, id: u32, r: &NodeReport) -> Result<(), Error> {
        let key = self.key(&format!("reports/{id:08}"));
        let value = Self::json(&key, r)?;
        let r = self
            .call("writing a node report", |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
        self.wrote(&key, &value, true, r.header());
        Ok(())
    }

    /// Node `id`'s report and its revision (for [`Store::report_if`]), from etcd.
    pub async fn report_of(&self, id: u32) -> Result<Option<(NodeReport, i64)>, Error> {
        let key = self.key(&format!("reports/{id:08}"));
        self.get_one("reading a node report", &key).await
    }

    /// Node `id`'s report as this process last saw it (see [`Store::plan_seen`]).
    pub async fn report_of_seen(&self, id: u32) -> Result<Option<(NodeReport, i64)>, Error> {
        let key = self.key(&format!("reports/{id:08}"));
        self.seen_one("reading a node report", &key).await
    }

    /// Writes node `id`'s report if it is still at `revision` (compare-and-swap:
    /// a progress report never overwrites a report written meanwhile by another
    /// task). False when another write came first.
    pub async fn report_if(&self, id: u32, r: &NodeReport, revision: i64) -> Result<bool, Error> {
        let key = self.key(&format!("reports/{id:08}"));
        let cmp = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
        let value = Self::json(&key, r)?;
        self.put_if("writing a node report", &key, value, cmp).await
    }

    /// Every node's report, by node id, from etcd.
    pub async fn reports(&self) -> Result<Vec<(u32, NodeReport)>, Error> {
        let prefix = self.key("reports/");
        let r = self
            .call("reading the node reports", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        {
            let mut m = self.mirror();
            for kv in r.kvs() {
                m.saw(
                    &String::from_utf8_lossy(kv.key()),
                    kv.value(),
                    kv.mod_revision(),
                );
            }
        }
        Self::parse_reports(
            &prefix,
            r.kvs()
                .iter()
                .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value())),
        )
    }

    /// Every node's report as this process last saw it (see [`Store::plan_seen`]).
    pub async fn reports_seen(&self) -> Result<Vec<(u32, NodeReport)>, Error> {
        let prefix = self.key("reports/");
        let hit: Option<Vec<(String, Vec<u8>)>> = {
            let m = self.mirror();
            m.is_live().then(|| {
                m.under(&prefix)
                    .map(|(k, v)| (k.to_owned(), v.to_vec()))
                    .collect()
            })
        };
        match hit {
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

    /// The coordinator's node id, if there is one.
    pub async fn coordinator(&self) -> Result<Option<u32>, Error> {
        let key = self.key("coordinator");
        let r = self
            .call("reading the coordinator", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(r.kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok()))
    }

    /// Grants a lease of `ttl_secs`.
    pub async fn lease(&self, ttl_secs: i64) -> Result<i64, Error> {
        Ok(self
            .call("granting a lease", |mut c| async move {
                c.lease_grant(ttl_secs, None).await
            })
            .await?
            .id())
    }

    /// Revokes `lease` (its keys go at once).
    pub async fn revoke(&self, lease: i64) -> Result<(), Error> {
        self.call("revoking a lease", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await?;
        Ok(())
    }
}

/// Keeps `info()` registered under a lease of `ttl`: renews it every third of the
/// TTL, rewrites the info when it changed (after an upgrade), and starts over with a
/// new lease when the old one is lost or etcd was away. Runs until dropped.
pub async fn stay_registered(
    store: Store,
    ttl: Duration,
    info: impl Fn() -> NodeInfo,
    log: impl Fn(&str),
) {
    let secs = ttl.as_secs().max(1) as i64;
    let mut lease: Option<i64> = None;
    // What etcd holds: written again only when it changed (each write wakes
    // every node's watch).
    let mut written: Option<NodeInfo> = None;
    loop {
        let r = match lease {
            None => {
                let now = info();
                store.register(&now, secs).await.map(|l| {
                    log(&format!(
                        "registered in the cluster (lease {l:x}, {secs} s)"
                    ));
                    lease = Some(l);
                    written = Some(now);
                })
            }
            Some(l) => match store.renew(l).await {
                Ok(true) => {
                    let now = info();
                    if written.as_ref() == Some(&now) {
                        Ok(())
                    } else {
                        let r = store.put_info(&now, l).await;
                        if r.is_ok() {
                            written = Some(now);
                        }
                        r
                    }
                }
                Ok(false) => {
                    log("the cluster lease expired; registering again");
                    lease = None;
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = r {
            log(&format!("cluster registration: {e}"));
        }
        tokio::time::sleep(ttl / 3).await;
    }
}
