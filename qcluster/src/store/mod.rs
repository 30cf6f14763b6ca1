//! The cluster's state in etcd, through `etcd-client` over mutual TLS, or, for
//! a node alone (a cluster of one), in its own [`local::Local`] store; split by
//! job: the connection and its keys (here: every etcd call has a time limit,
//! names what it waited for and is tried again on another member while one is
//! unreachable), the few key-value operations over either backend ([`kv`]),
//! this node's one lease ([`session`]), its registration under it
//! ([`registry`]), the coordinator's election ([`election`]), the plan, the
//! users and the nodes' reports written with compare-and-swap ([`plans`]), and
//! etcd's watch feeding this process's mirror of the keys ([`watch`]).

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Serialize;

use crate::create::{Membership, NodeDir};
use crate::error::{Error, io_err};
use crate::mirror::Mirror;

pub mod election;
pub mod history;
mod kv;
pub mod local;
pub mod plans;
pub mod registry;
pub mod session;
pub mod watch;

pub use local::{Cond, Local};
pub use plans::SharedDoc;
pub use registry::NodeInfo;
pub use session::{Session, stay_registered};

/// A connection to the cluster's etcd, or a node alone's store.
#[derive(Clone)]
pub struct Store {
    kv: kv::Kv,
    prefix: String,
    limit: Duration,
    /// What this process saw of the keys (`crate::mirror`), shared by its clones.
    seen: std::sync::Arc<std::sync::Mutex<Mirror>>,
}

/// The pause before a call is tried again on another member.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// True for errors that another try may not have: a member that cannot be
/// reached, an election under way, or etcd's authentication changed under a
/// request.
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
                    // Authentication changed between etcd's check of a request
                    // and its apply (right after `secure-etcd`, a role granted):
                    // etcd's own client tries again.
                    "revision of auth store is old",
                ]
                .iter()
                .any(|t| m.contains(t))
        }
        _ => false,
    }
}

/// Node `id`'s registration, under the cluster's prefix.
pub(crate) fn node_key(id: u32) -> String {
    format!("nodes/{id:08}")
}

/// Node `id`'s report, under the cluster's prefix.
pub(crate) fn report_key(id: u32) -> String {
    format!("reports/{id:08}")
}

/// The coordinator's key (the election), under the cluster's prefix.
pub(crate) const COORDINATOR: &str = "coordinator";

/// The plan, under the cluster's prefix.
pub(crate) const PLAN: &str = "plan";

/// The upgrade records, under the cluster's prefix.
pub(crate) const HISTORY: &str = "history/";

pub(crate) fn etcd_err(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Error {
    let op = op.into();
    move |source| Error::Etcd { op, source }
}

/// An etcd client of `endpoints` over mutual TLS: the cluster's CA
/// (`ca_pem`) and `identity`; every call limited to `limit`.
pub(crate) async fn client(
    endpoints: &[String],
    ca_pem: Vec<u8>,
    identity: Identity,
    limit: Duration,
) -> Result<Client, Error> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(identity);
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(limit)
        .with_timeout(limit);
    let op = format!("connecting to {}", endpoints.join(","));
    tokio::time::timeout(limit, Client::connect(endpoints, Some(opts)))
        .await
        .map_err(|_| Error::Timeout {
            op: op.clone(),
            secs: limit.as_secs(),
        })?
        .map_err(etcd_err(op))
}

impl Store {
    /// Connects to the cluster's etcd members with this node's certificate; every
    /// call is limited to `limit`.
    pub async fn connect(m: &Membership, files: &NodeDir, limit: Duration) -> Result<Store, Error> {
        let read = |p: std::path::PathBuf| std::fs::read(&p).map_err(io_err("reading", &p));
        let client = client(
            &m.spec.endpoints(),
            read(files.ca())?,
            Identity::from_pem(read(files.cert())?, read(files.key())?),
            limit,
        )
        .await?;
        Ok(Store {
            kv: kv::Kv::Etcd(Box::new(client)),
            prefix: m.spec.prefix(),
            limit,
            seen: Default::default(),
        })
    }

    /// The store of a node alone (a cluster of one) over `local`, its keys
    /// under `prefix`. Each call makes a store with a mirror of its own, as a
    /// connection of another process would have.
    pub fn local(local: std::sync::Arc<Local>, prefix: &str) -> Store {
        Store {
            kv: kv::Kv::Local(local),
            prefix: prefix.into(),
            limit: Duration::from_secs(5),
            seen: Default::default(),
        }
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
    async fn call<T, Fut>(
        &self,
        client: &Client,
        op: &str,
        f: impl Fn(Client) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = tokio::time::timeout(left, f(client.clone()))
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

    /// One key read from the store (and noted in the mirror), with its revision.
    async fn get_one<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        key: &str,
    ) -> Result<Option<(T, i64)>, Error> {
        match self.read(op, key).await? {
            None => Ok(None),
            Some((v, rev, _)) => Ok(Some((Self::parse(key, &v)?, rev))),
        }
    }

    /// The keys under `prefix` as the mirror has them, while a watch keeps it
    /// current (`None` otherwise: read the store).
    fn seen_under(&self, prefix: &str) -> Option<Vec<(String, Vec<u8>)>> {
        let m = self.mirror();
        m.is_live().then(|| {
            m.under(prefix)
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect()
        })
    }

    /// One key as the mirror has it while a watch keeps it current, else from
    /// the store.
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

    /// Writes `value` as JSON under `key` if the key is still at `revision`
    /// (`None`: it does not exist yet). False when another writer came first.
    async fn put_json_if<T: Serialize>(
        &self,
        op: &str,
        key: &str,
        value: &T,
        revision: Option<i64>,
    ) -> Result<bool, Error> {
        let cond = match revision {
            Some(r) => Cond::ModRev(r),
            None => Cond::Absent,
        };
        let value = Self::json(key, value)?;
        Ok(self.write(op, key, value, None, cond).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable;

    #[test]
    fn what_is_tried_again_and_what_is_not() {
        let status = |code: tonic::Code, m: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::new(code, m.to_owned()))
        };
        let table = [
            (tonic::Code::Unavailable, "connection refused", true),
            (tonic::Code::Unknown, "etcdserver: leader changed", true),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
                true,
            ),
            (
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied",
                false,
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: requested lease not found",
                false,
            ),
        ];
        for (code, m, again) in table {
            assert_eq!(unreachable(&status(code, m)), again, "{code:?} {m}");
        }
    }
}
