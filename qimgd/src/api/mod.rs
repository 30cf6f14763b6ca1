//! The REST API: routes, the shared application state, and authentication.
//!
//! Every route except the login and the Web UI's static files ([`webui`])
//! requires `Authorization: Bearer <token>`, or a connection from local root
//! ([`crate::peer::Peer::local_root`]). Handlers are thin: they parse, call the
//! engine's [`upgrade::Agent`] on a blocking thread or write the plan, and answer
//! with [`qapi::types`] (the upgrade's bodies shaped from the plan by `snapshot`).

use qapi::types::ErrorClass;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use upgrade::Agent;

use crate::config::Config;
use crate::identity::Identity;
use crate::jobs::Jobs;
use crate::peer::Peer;
use crate::throttle::Throttle;
use crate::users::Users;

pub mod assess;
pub mod body;
mod cluster_upgrade;
pub mod error;
mod history;
mod images;
mod node;
mod overview;
mod preview;
mod reboot;
pub(crate) mod redact;
mod relay;
mod rollback;
mod session;
mod snapshot;
mod upgrade_api;
mod webui;

use error::ApiError;
pub(crate) use node::hostname;

/// What every request handler shares.
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The node's upgrade engine.
    pub agent: Arc<Agent>,
    /// The product the node's slots belong to (from its ESP, read at start).
    pub product: String,
    /// The users file.
    pub users: PathBuf,
    /// The keys tokens are signed with (`crate::token_keys`).
    pub keys: crate::token_keys::Keys,
    /// Failed logins per address.
    pub throttle: Throttle,
    /// The connections held, capped per address and in all.
    pub admission: Arc<crate::admission::Admission>,
    /// The password checks in flight, by address and user.
    pub checks: crate::throttle::Checks,
    /// Places for password checks ([`crate::throttle::HASH_SLOTS`]).
    pub hashing: Arc<tokio::sync::Semaphore>,
    /// The running engine operation.
    pub jobs: Arc<Jobs>,
    /// Node and cluster ids.
    pub identity: Identity,
    /// True while a simulated node reboots: connections are dropped.
    pub down: AtomicBool,
    /// Set at shutdown: a running prepare stops and is undone.
    pub cancel: upgrade::Cancel,
    /// The cluster this node belongs to (a node in no cluster: a cluster of one).
    pub cluster: crate::cluster::ClusterCtx,
    /// Notified when a simulated node powers off (`[sim] reboot_exits`).
    pub power_off: tokio::sync::Notify,
    /// Ticks when the cluster's plan or a node's report changed (etcd's watch) or
    /// this node booted: the member and coordinator loops wake at once instead of
    /// at their next poll.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Ticks when the coordinator key went (etcd's watch): the nodes that are not
    /// coordinating campaign at once instead of at their next poll.
    pub vacancy: tokio::sync::watch::Sender<u64>,
    /// When this node last came up (Unix ms): the agent's start, or the end of a
    /// simulated boot (its boot check included). What a report of a step reached
    /// by booting says as its time.
    pub up_since_ms: std::sync::atomic::AtomicU64,
    /// Set by the member loop while this node is about to reboot (or reboots) for
    /// the plan: the coordinator loop steps down and does not campaign.
    pub stepping_down: AtomicBool,
    /// Whether this node holds the coordinator key (set by the coordinator
    /// loop; a clean stop says it resigned, `crate::coordinator::resign`).
    pub coordinating: AtomicBool,
    /// Where the data-safety gate gets its answer (a probe, the simulated
    /// restriper of a simulated node, or none).
    pub safety: crate::restriper::Source,
    /// The highest cluster progress this node reported, per plan generation.
    pub reported: std::sync::Mutex<(u64, u8)>,
    /// The bundle uploads running.
    pub uploads: crate::images::Uploads,
    /// The rate this node serves bundles to other nodes at, all streams together.
    pub pacer: crate::images::Pacer,
    /// Places for the bundles served to other nodes at once.
    pub serving: Arc<tokio::sync::Semaphore>,
}

impl App {
    /// `percent` for plan `generation`, never below what this node reported for it
    /// before (a client polling one node never sees the progress go back).
    pub fn cluster_progress(&self, generation: u64, percent: u8) -> u8 {
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if r.0 != generation {
            *r = (generation, 0);
        }
        r.1 = r.1.max(percent);
        r.1
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.cluster.membership.node_id
    }
}

/// The shared state.
pub type Shared = Arc<App>;

/// Runs blocking engine work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(join_failed)?
}

/// The answer when blocking work did not run to its end: cancelled, it never
/// started because the runtime is stopping (the node shuts down or reboots; a
/// client waiting through a commit asks again), 503 `agent_stopping_error`;
/// a panic is 500.
fn join_failed(e: tokio::task::JoinError) -> ApiError {
    if e.is_cancelled() {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            qapi::types::ErrorClass::AgentStopping,
            "the agent is stopping (its node shuts down or reboots); ask again once it is back",
        )
        .retry_after(5)
    } else {
        ApiError::internal(format!("a worker thread failed: {e}"))
    }
}

async fn authenticate(
    State(app): State<Shared>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let local_root = req.extensions().get::<Peer>().is_some_and(|p| p.local_root);
    let mut user = None;
    if !local_root {
        let token = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("Need to log in first to establish credentials.")
            })?;
        let refused =
            |r: crate::token::Rejected| ApiError::unauthorized(format!("{r}: log in again"));
        let check = |ring: &crate::token_keys::KeyRing| {
            ring.check(token, upgrade::now(), app.config.token_lifetime_secs)
        };
        let claims = match check(&*token_keys(&app, false).await?) {
            // Signed by no key this node's watch delivered: a key added a
            // moment ago on another node's rotation, or a forgery (etcd is
            // asked at most once a second for those).
            Err(crate::token::Rejected::Forged) if app.keys.may_refresh() => {
                check(&*token_keys(&app, true).await?)
            }
            r => r,
        }
        .map_err(refused)?;
        // Only a token this cluster signed may make the node ask etcd again
        // for a user its mirror does not know yet.
        let users = users_knowing(&app, &claims.user).await?;
        let claims = crate::token::admit(claims, &users).map_err(refused)?;
        user = Some(claims.user);
    }
    let who = user.map_or_else(|| "local root".to_string(), |u| format!("user {u:?}"));
    // Every call that may change something is in the log: who, from where,
    // what, and the answer.
    // Reads (the hot path: pollers) pay nothing for it.
    if [axum::http::Method::GET, axum::http::Method::HEAD].contains(req.method()) {
        return Ok(next.run(req).await);
    }
    let peer = req.extensions().get::<Peer>().cloned();
    req.extensions_mut().insert(Caller {
        who: who.clone(),
        from: from(peer.as_ref()),
    });
    let what = format!("{} {}", req.method(), req.uri().path());
    let r = next.run(req).await;
    audit(
        &who,
        peer.as_ref(),
        &format!("{what} -> {}", r.status().as_u16()),
    );
    Ok(r)
}

/// Who made a call that may change something, and from where (set by the
/// authentication for the handlers: an upgrade's record says who started it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// `user "admin"` or `local root`.
    pub who: String,
    /// [`from`].
    pub from: String,
}

impl Caller {
    /// Who asked (`caller`: `None` for a route that is not authenticated),
    /// from where, now: what the plan records of an upgrade, its finalize, its
    /// rollback.
    pub(crate) fn asked(caller: Option<axum::Extension<Caller>>) -> qapi::history::Started {
        let (by, from) = caller.map_or_else(Default::default, |c| (c.0.who, c.0.from));
        qapi::history::Started {
            at_ms: qcluster::plan::now_ms(),
            by,
            from,
        }
    }
}

/// Where a caller is: its address, or the local socket (with its uid).
pub(crate) fn from(peer: Option<&Peer>) -> String {
    match peer {
        Some(Peer { ip: Some(ip), .. }) => ip.to_string(),
        Some(Peer { uid: Some(uid), .. }) => format!("the local socket (uid {uid})"),
        _ => "the local socket".into(),
    }
}

/// One line of the audit trail: `audit: <who> from <where>: <what>`.
pub(crate) fn audit(who: &str, peer: Option<&Peer>, what: &str) {
    crate::log(&format!("audit: {who} from {}: {what}", from(peer)));
}

/// This node's users: the cluster's in a cluster (as etcd's watch delivered
/// them), else its users file.
pub(crate) async fn users(app: &Shared) -> Result<Users, ApiError> {
    if app.cluster.is_alone() {
        let path = app.users.clone();
        return blocking(move || Ok(Users::load(&path)?)).await;
    }
    Ok(crate::accounts::cluster_users(cluster_upgrade::store(app)?, false).await?)
}

/// The keys this node checks tokens against and signs them with: its file's
/// alone; in a cluster, the cluster's (as the watch delivered them, or from
/// etcd when `fresh`).
pub(crate) async fn token_keys(
    app: &Shared,
    fresh: bool,
) -> Result<std::sync::Arc<crate::token_keys::KeyRing>, ApiError> {
    let store = match app.cluster.is_alone() {
        true => None,
        false => Some(cluster_upgrade::store(app)?),
    };
    Ok(app.keys.ring(store, fresh).await?)
}

/// [`users`], knowing `name` if the cluster does: a user just added on another
/// node may not have reached this node's mirror yet (etcd's watch delivers it
/// a moment later), so an unknown name is looked up in etcd once more.
pub(crate) async fn users_knowing(app: &Shared, name: &str) -> Result<Users, ApiError> {
    let users = users(app).await?;
    if users.get(name).is_some() || app.cluster.is_alone() {
        return Ok(users);
    }
    Ok(crate::accounts::cluster_users(cluster_upgrade::store(app)?, true).await?)
}

/// The API's routes over `app`.
pub fn router(app: Shared) -> Router {
    let authed = Router::new()
        .route("/v1/version", get(node::version))
        .route("/v1/node/state", get(node::node_state))
        .route("/v1/cluster/nodes/", get(node::cluster_nodes))
        .route("/v1/cluster/nodes/{id}", get(node::cluster_node))
        .route("/v1/shutdown/reboot/status", get(reboot::status))
        .route("/v1/shutdown/reboot/pause", post(reboot::pause))
        .route("/v1/shutdown/reboot/resume", post(reboot::resume))
        .route(
            "/v1/cluster/protection/restriper/status",
            get(reboot::restriper),
        )
        .route("/v1/cluster/protection/status", get(reboot::protection))
        .route("/v1/qimg/cluster/upgrade", get(cluster_upgrade::nodes))
        .route("/v1/qimg/overview", get(overview::overview))
        .route("/v1/qimg/upgrade/history", get(history::history))
        .route("/v1/qimg/upgrade/preview", post(preview::preview))
        .route("/v1/qimg/upgrade/assess", post(assess::assess))
        .route("/v1/qimg/upgrade/rollback", post(rollback::rollback))
        .route("/v1/qimg/upgrade/finalize", post(rollback::finalize))
        .route("/v1/upgrade/status", get(upgrade_api::status_v1))
        .route("/v2/upgrade/status", get(upgrade_api::status))
        .route("/v3/upgrade/status", get(upgrade_api::status))
        .route("/v2/upgrade/blocked", get(upgrade_api::blocked))
        .route("/v2/upgrade/verify-image", post(upgrade_api::verify))
        .route("/v2/upgrade/prepare", post(upgrade_api::prepare))
        .route("/v2/upgrade/commit", post(upgrade_api::commit))
        .route("/v1/qimg/images/{name}", put(images::put))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/v1/session/login", post(session::login))
        .route("/v1/qimg/peer/images/{name}", get(images::serve))
        .route(relay::PEER_PREPARE, post(relay::peer_prepare))
        .route(assess::PEER_ASSESS, post(assess::peer_assess))
        .route("/", get(webui::index))
        .route("/ui/app.js", get(webui::app_js))
        .route("/ui/style.css", get(webui::style))
        .merge(authed)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                ErrorClass::HttpMethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(body::BODY_LIMIT))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_work_cut_by_a_stopping_agent_is_503_not_an_internal_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (cancelled, panicked) = rt.block_on(async {
            let h = tokio::spawn(std::future::pending::<()>());
            h.abort();
            let cancelled = h.await.unwrap_err();
            let panicked = tokio::spawn(async { panic!("a bug") }).await.unwrap_err();
            (cancelled, panicked)
        });
        let e = join_failed(cancelled);
        assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.class, qapi::types::ErrorClass::AgentStopping);
        assert_eq!(e.retry_after, Some(5));
        let e = join_failed(panicked);
        assert_eq!(e.status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.class, qapi::types::ErrorClass::Internal);
    }
}
