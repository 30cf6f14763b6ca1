//! The upgrade endpoints: status (v1 = `qq upgrade_status`'s report, v2/v3 =
//! Qumulo's), blocked, verify-image, prepare, commit.
//!
//! One flow for a node alone and a node in a cluster (a cluster of one or of
//! many): prepare and commit write the plan (`super::cluster_upgrade`), which
//! every node's member carries out; they answer 202 once this node's engine
//! recorded the job (`cluster_upgrade::wait_started`; a rolling commit, where
//! this node may come last, once the plan is written), so
//! a client polling right after sees `PREPARING` or `COMMITTING`, never the state
//! before. Everything that can refuse a request is decided before that answer,
//! with nothing changed: the body, the path, the node's lock and engine, the
//! plan, and (prepare) the bundle's signature and its checks against the node.

use qapi::types::ErrorClass;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use upgrade::Error;
use upgrade::state::{Stage, Status};

use super::body::{JsonBody, NoBody};
use super::error::ApiError;
use super::{Shared, blocking};
use crate::paths;
use qapi::types::{Blocked, PrepareRequest, UpgradeStatus, VerifyRequest, VerifyResponse};

pub(super) fn no_overrides(q: Option<String>) -> Result<(), ApiError> {
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("override_compatibility_check", v) if v.eq_ignore_ascii_case("false") => {}
            ("override_compatibility_check", _) => {
                return Err(ApiError::bad_request(
                    "override_compatibility_check is not supported: this agent never skips the checks of a bundle against the node",
                ));
            }
            (k, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {k:?}"
                )));
            }
        }
    }
    Ok(())
}

pub(super) async fn status(State(app): State<Shared>) -> Result<Json<UpgradeStatus>, ApiError> {
    Ok(Json(super::cluster_upgrade::status(&app).await?))
}

pub(super) async fn status_v1(State(app): State<Shared>) -> Result<Json<Status>, ApiError> {
    let agent = app.agent.clone();
    Ok(Json(blocking(move || Ok(agent.status()?)).await?))
}

pub(super) async fn blocked(State(app): State<Shared>) -> Result<Json<Blocked>, ApiError> {
    let b = super::cluster_upgrade::blocked(&app).await?;
    if b.is_blocked {
        return Ok(Json(b));
    }
    // A local `qq` working on this node's engine holds its lock.
    let a = app.clone();
    let holder = blocking(move || Ok(a.agent.node().store()?.lock_holder())).await?;
    Ok(Json(match holder {
        Some(h) => Blocked {
            is_blocked: true,
            cluster_degraded: false,
            blocked_reason: Error::Blocked(h).to_string(),
        },
        None => b,
    }))
}

pub(super) async fn verify(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
    JsonBody(req): JsonBody<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    no_overrides(q)?;
    let img = paths::resolve(&app.config.upgrade_dir, &req.image_path)?;
    let agent = app.agent.clone();
    let v = blocking(move || Ok(agent.verify_from(&img.file.clone(), img.source())?)).await?;
    Ok(Json(VerifyResponse {
        target_version: v.plan.to.version.to_string(),
        upgrade_type: v.plan.mode.into(),
        error: v.blocked,
    }))
}

/// Refuses when a job of this agent runs, another process (a local `qq`) holds
/// the node's upgrade lock, or the engine is in the middle of a commit.
pub(super) async fn engine_free(app: &Shared) -> Result<(), ApiError> {
    if let Some(job) = app.jobs.running() {
        return Err(ApiError::blocked(format!(
            "{job} is running on this node: wait for it to finish (GET /v3/upgrade/status)"
        )));
    }
    let a = app.clone();
    blocking(move || {
        if let Some(b) = a.agent.node().store()?.lock_holder() {
            return Err(Error::Blocked(b).into());
        }
        if let Stage::Committing(..) = a.agent.state()?.stage {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorClass::UpgradeWrongState,
                "a commit is in progress on this node: wait for it to finish (GET /v3/upgrade/status)",
            ));
        }
        Ok(())
    })
    .await
}

/// The batch size of a rolling reboot: only with `do_rolling_reboot`, from 1 to
/// the node failures the cluster permits (1 for a node in no cluster, a cluster
/// of one). The one check, for a node alone and in a cluster.
pub(super) fn check_batch(app: &Shared, req: &PrepareRequest) -> Result<(), ApiError> {
    let max = app.cluster.membership.spec.max_node_failures.max(1);
    let nodes = app.cluster.membership.spec.nodes.len() as u32;
    match (req.canary, req.soak_secs) {
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "soak_secs is how long canaries soak: set canary",
            ));
        }
        (Some(_), _) if !req.do_rolling_reboot => {
            return Err(ApiError::bad_request(
                "canary applies to rolling reboots: set do_rolling_reboot",
            ));
        }
        (Some(n), _) if n == 0 || n > max || n >= nodes => {
            return Err(ApiError::bad_request(format!(
                "canary must be between 1 and {} (at most the node failures this cluster permits, {max}, and fewer than its {nodes} nodes); got {n}",
                max.min(nodes.saturating_sub(1))
            )));
        }
        _ => {}
    }
    match req.num_nodes_to_reboot {
        Some(_) if !req.do_rolling_reboot => Err(ApiError::bad_request(
            "num_nodes_to_reboot applies to rolling reboots only: set do_rolling_reboot",
        )),
        n => check_nodes_per_batch(app, n),
    }
}

/// Nodes per batch of a rolling reboot (forward or back): from 1 to the node
/// failures the cluster permits.
pub(super) fn check_nodes_per_batch(app: &Shared, n: Option<u32>) -> Result<(), ApiError> {
    let max = app.cluster.membership.spec.max_node_failures.max(1);
    match n {
        Some(n) if n == 0 || n > max => Err(ApiError::bad_request(format!(
            "num_nodes_to_reboot must be between 1 and {max} (the node failures this cluster permits); got {n}"
        ))),
        _ => Ok(()),
    }
}

pub(super) async fn prepare(
    State(app): State<Shared>,
    caller: Option<Extension<super::Caller>>,
    RawQuery(q): RawQuery,
    JsonBody(req): JsonBody<PrepareRequest>,
) -> Result<StatusCode, ApiError> {
    no_overrides(q)?;
    check_batch(&app, &req)?;
    let started = super::Caller::asked(caller);
    if let Some(answer) = super::relay::elsewhere(&app, &req, &started).await? {
        return Ok(answer);
    }
    super::cluster_upgrade::prepare(&app, req, started).await
}

pub(super) async fn commit(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    no_overrides(q)?;
    super::cluster_upgrade::commit(&app).await
}
