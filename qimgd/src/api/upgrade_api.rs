//! The upgrade endpoints: status (v1 = `qq upgrade_status`'s report, v2/v3 =
//! Qumulo's), blocked, verify-image, prepare, commit.
//!
//! Prepare and commit answer 202 once the engine has recorded its first state, so
//! a client polling right after sees `PREPARING` or `COMMITTING`, never the state
//! before. Everything that can refuse a request is decided before that answer,
//! with nothing changed: the body, the path, the job slot, the node's lock, the
//! state, and (prepare) the bundle's signature and its checks against the node.

use qapi::types::ErrorClass;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use upgrade::state::{NodeState, Stage, Status};
use upgrade::{CommitOutcome, Error, Verified};

use super::body::{JsonBody, NoBody};
use super::error::ApiError;
use super::shape;
use super::{Shared, blocking};
use crate::jobs::{Claim, JobKind, Observer};
use crate::paths;
use qapi::types::{Blocked, PrepareRequest, UpgradeStatus, VerifyRequest, VerifyResponse};

/// How long prepare/commit wait for the engine's first recorded state.
pub const START_LIMIT: Duration = Duration::from_secs(10);

fn no_overrides(q: Option<String>) -> Result<(), ApiError> {
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
    if app.cluster.is_some() {
        return Ok(Json(super::cluster_upgrade::status(&app).await?));
    }
    let agent = app.agent.clone();
    let st = blocking(move || Ok(agent.state()?)).await?;
    let verified = app.jobs.verified().map(|v| v.plan);
    Ok(Json(shape::upgrade_status(
        &st,
        verified.as_ref(),
        app.jobs.meter.percent(),
    )))
}

pub(super) async fn status_v1(State(app): State<Shared>) -> Result<Json<Status>, ApiError> {
    let agent = app.agent.clone();
    Ok(Json(blocking(move || Ok(agent.status()?)).await?))
}

pub(super) async fn blocked(State(app): State<Shared>) -> Result<Json<Blocked>, ApiError> {
    if app.cluster.is_some() {
        return Ok(Json(super::cluster_upgrade::blocked(&app).await?));
    }
    let agent = app.agent.clone();
    let s = blocking(move || Ok(agent.status()?)).await?;
    let (is_blocked, blocked_reason) = match app.jobs.running() {
        _ if s.is_blocked => (true, s.blocked_reason),
        Some(job) => (true, format!("{job} is running")),
        None => (false, String::new()),
    };
    Ok(Json(Blocked {
        is_blocked,
        cluster_degraded: false,
        blocked_reason,
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
    let v = blocking(move || Ok(agent.verify(&img.file)?)).await?;
    Ok(Json(VerifyResponse {
        target_version: v.plan.to.version.to_string(),
        upgrade_type: shape::upgrade_type(v.plan.mode),
        error: v.blocked,
    }))
}

fn busy(kind: JobKind) -> ApiError {
    ApiError::blocked(format!(
        "{kind} is running on this node: wait for it to finish (GET /v3/upgrade/status)"
    ))
}

/// Refuses when another process (a local `qq`) holds the node's upgrade lock.
fn lock_free(app: &Shared) -> Result<(), ApiError> {
    match app.agent.node().store()?.lock_holder() {
        Some(b) => Err(Error::Blocked(b).into()),
        None => Ok(()),
    }
}

fn record(app: &Shared) -> Option<Vec<u8>> {
    let p = app.agent.node().store().ok()?.path();
    std::fs::read(p).ok()
}

/// Waits until the engine recorded a state other than `before`, or the job ended.
async fn wait_started(app: &Shared, before: Option<Vec<u8>>, done: &AtomicBool) {
    let deadline = Instant::now() + START_LIMIT;
    while !done.load(Ordering::SeqCst) && record(app) == before {
        if Instant::now() >= deadline {
            crate::log(&format!(
                "the engine recorded no state within {START_LIMIT:?} of the request; answering anyway"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn log_outcome(what: JobKind, r: Result<Option<CommitOutcome>, Error>) {
    match r {
        Ok(Some(o)) => crate::log(&format!("{what} ended: {o:?}")),
        Ok(None) => crate::log(&format!("{what} ended: prepared")),
        Err(e) => crate::log(&format!("{what} failed: {}", upgrade::chain(&e))),
    }
}

/// Runs `job` on a blocking thread holding `claim`; answers once it started.
async fn start(
    app: &Shared,
    claim: Claim,
    what: JobKind,
    job: impl FnOnce() -> Result<Option<CommitOutcome>, Error> + Send + 'static,
) -> StatusCode {
    let before = record(app);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    tokio::task::spawn_blocking(move || {
        let _claim = claim;
        log_outcome(what, job());
        d.store(true, Ordering::SeqCst);
    });
    wait_started(app, before, &done).await;
    StatusCode::ACCEPTED
}

/// The batch size of a rolling reboot: only with `do_rolling_reboot`, from 1 to
/// the node failures the cluster permits (1 for a node in no cluster, a cluster
/// of one). The one check, for a node alone and in a cluster.
pub(super) fn check_batch(app: &Shared, req: &PrepareRequest) -> Result<(), ApiError> {
    let max = app
        .cluster
        .as_ref()
        .map_or(1, |c| c.membership.spec.max_node_failures.max(1));
    match req.num_nodes_to_reboot {
        Some(_) if !req.do_rolling_reboot => Err(ApiError::bad_request(
            "num_nodes_to_reboot applies to rolling reboots only: set do_rolling_reboot",
        )),
        Some(n) if n == 0 || n > max => Err(ApiError::bad_request(format!(
            "num_nodes_to_reboot must be between 1 and {max} (the node failures this cluster permits); got {n}"
        ))),
        _ => Ok(()),
    }
}

pub(super) async fn prepare(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
    JsonBody(req): JsonBody<PrepareRequest>,
) -> Result<StatusCode, ApiError> {
    no_overrides(q)?;
    check_batch(&app, &req)?;
    if app.cluster.is_some() {
        return super::cluster_upgrade::prepare(&app, req).await;
    }
    let img = paths::resolve(&app.config.upgrade_dir, &req.image_path)?;
    let claim = app.jobs.claim(JobKind::Prepare).map_err(busy)?;
    let a = app.clone();
    let file = img.file.clone();
    let v: Verified = blocking(move || {
        lock_free(&a)?;
        let st: NodeState = a.agent.state()?;
        if let Stage::Committing(..) = st.stage {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorClass::UpgradeWrongState,
                "a commit is in progress: commit again to finish it (POST /v2/upgrade/commit)",
            ));
        }
        Ok(a.agent.verify(&file)?)
    })
    .await?;
    if let Some(why) = &v.blocked {
        return Err(ApiError::blocked(why.clone()));
    }
    let size = std::fs::metadata(&img.file).map_or(1, |m| m.len());
    app.jobs.set_verified(Some(v));
    app.jobs.meter.reset(size);
    let engine_req = upgrade::PrepareRequest {
        path: img.file,
        auto_commit: req.auto_commit,
        rolling: req.do_rolling_reboot,
        nodes_per_batch: req.num_nodes_to_reboot,
        shown_as: Some(img.shown),
    };
    let a = app.clone();
    Ok(start(&app, claim, JobKind::Prepare, move || {
        a.agent
            .upgrade(&engine_req, &Observer(a.jobs.meter.clone()), &a.cancel)
    })
    .await)
}

pub(super) async fn commit(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    no_overrides(q)?;
    if app.cluster.is_some() {
        return super::cluster_upgrade::commit(&app).await;
    }
    let claim = app.jobs.claim(JobKind::Commit).map_err(busy)?;
    let a = app.clone();
    blocking(move || {
        lock_free(&a)?;
        match a.agent.state()?.stage {
            Stage::Prepared(_) | Stage::Committing(..) => Ok(()),
            s => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorClass::UpgradeWrongState,
                format!(
                    "commit is not possible in state {}: nothing is prepared (POST /v2/upgrade/prepare first)",
                    s.phase().name()
                ),
            )),
        }
    })
    .await?;
    let a = app.clone();
    Ok(start(&app, claim, JobKind::Commit, move || {
        a.agent.commit(&Observer(a.jobs.meter.clone())).map(Some)
    })
    .await)
}
