//! The upgrade endpoints' one flow, for a node in a cluster and a node alone (a
//! cluster of one): any node accepts them and writes the cluster's plan in its
//! store (compare-and-swap); the coordinator and every node's member loop carry
//! it out (`crate::coordinator`, `crate::member`). The
//! status is the cluster's, shaped from one [`Snapshot`] of the plan and its
//! generation's reports (`super::snapshot`).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use qapi::types::ErrorClass;
use qapi::types::{Blocked, ClusterUpgrade, PrepareRequest, UpgradeStatus};
use qcluster::{ClusterPlan, PlanPhase, Store};

use super::error::ApiError;
use super::snapshot::{self, Snapshot};
use super::{Shared, blocking};
use crate::paths;

/// How long prepare and commit wait for this node's engine to record the job.
pub const START_LIMIT: Duration = Duration::from_secs(10);

/// The cluster's etcd, or 503 `cluster_unavailable_error` while this node has
/// not reached it.
pub(crate) fn store(app: &Shared) -> Result<&Store, ApiError> {
    app.cluster.store().ok_or_else(super::error::no_etcd_yet)
}

/// The plan and its revision.
pub(crate) async fn plan(app: &Shared) -> Result<Option<(ClusterPlan, i64)>, ApiError> {
    store(app)?.plan().await.map_err(ApiError::from)
}

/// How long a prepare gives a plan in progress to end when no job runs on
/// this node: the engine says its outcome (a boot fell back) a moment before
/// the member has reported it and the coordinator ended the plan.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// The plan and its revision, once it is no longer in progress, or while a
/// job runs on this node, or after [`SETTLE_LIMIT`].
async fn settled_plan(app: &Shared) -> Result<Option<(ClusterPlan, i64)>, ApiError> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let current = plan(app).await?;
        let active = current.as_ref().is_some_and(|(p, _)| p.phase.is_active());
        if !active || app.jobs.running().is_some() || Instant::now() >= deadline {
            return Ok(current);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a new upgrade may start after `p` (the cluster's last plan): not
/// while one is under way (409 `upgrade_blocked_error`), nor while the last
/// committed one may still be rolled back (409 `upgrade_wrong_state_error`,
/// naming finalize).
pub(super) fn may_start(p: Option<&ClusterPlan>) -> Result<(), ApiError> {
    match p {
        Some(p) if p.phase.is_active() => Err(ApiError::blocked(snapshot::in_progress(p))),
        Some(p) if p.finalizable() => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorClass::UpgradeWrongState,
            qapi::rollback::not_finalized(&p.target_version.to_string(), p.generation),
        )),
        _ => Ok(()),
    }
}

/// `POST /v2/upgrade/prepare` (its batch size checked by
/// `upgrade_api::check_batch`, this node's engine by `engine_free`): checked
/// against this node, then the plan written for every node.
pub(super) async fn prepare(
    app: &Shared,
    req: PrepareRequest,
    started: qapi::history::Started,
) -> Result<StatusCode, ApiError> {
    let spec = spec(app);
    // Batches of a rolling reboot wait for the data to be safe between them: a
    // node with nothing to ask refuses rather than wait a timer.
    if req.do_rolling_reboot
        && spec.nodes.len() > 1
        && app.safety == crate::restriper::Source::Missing
    {
        return Err(ApiError::blocked(format!(
            "a rolling reboot is refused: {}. Set restriper_probe, or reboot every node at once (do_rolling_reboot: false)",
            crate::restriper::MISSING
        )));
    }
    let img = paths::resolve(&app.config.upgrade_dir, &req.image_path)?;
    let current = settled_plan(app).await?;
    may_start(current.as_ref().map(|(p, _)| p))?;
    super::upgrade_api::engine_free(app).await?;
    let a = app.clone();
    let shown = img.shown.clone();
    let v = blocking(move || Ok(a.agent.verify_from(&img.file.clone(), img.source())?)).await?;
    if let Some(why) = v.blocked {
        return Err(ApiError::blocked(why));
    }
    // Every node's checks and the cluster's (the payloads' digests are the
    // prepare's own); a failing one stops it unless overridden by name.
    let asked = qapi::assess::AssessRequest {
        image_path: req.image_path.clone(),
        num_nodes_to_reboot: req.do_rolling_reboot.then(|| batch_size(spec, &req)),
    };
    let a = super::assess::assessment(app, &asked, false).await?;
    let refusals = a.refusals(&req.overrides);
    if !refusals.is_empty() {
        let each: Vec<String> = refusals
            .iter()
            .map(|c| match c.node {
                Some(n) => format!("{} on node {n}: {}", c.name.name(), c.message),
                None => format!("{}: {}", c.name.name(), c.message),
            })
            .collect();
        return Err(ApiError::blocked(format!(
            "the assessment fails: {}. Fix it, or override a check by name (overrides: [\"{}\"])",
            each.join("; "),
            refusals[0].name.name()
        )));
    }
    // The engine's mode is the plan's (one enum, `qapi::status::Mode`).
    let mode = v.plan.mode;
    if req.canary.is_some() && mode != qcluster::PlanMode::Platform {
        return Err(ApiError::bad_request(
            "canary applies to platform upgrades (their nodes reboot batch by batch); this bundle is an instant upgrade",
        ));
    }
    let generation = current.as_ref().map_or(1, |(p, _)| p.generation + 1);
    let next = ClusterPlan {
        auto_commit: req.auto_commit,
        rolling: req.do_rolling_reboot,
        nodes_per_batch: Some(batch_size(spec, &req)),
        on_failure: req.on_failure.unwrap_or_default(),
        from_version: Some(v.plan.from.version.clone()),
        bundle: Some(v.pin),
        started: Some(started),
        overrides: req.overrides.clone(),
        canary: req.canary,
        soak_ms: req.soak_secs.unwrap_or(0).saturating_mul(1000),
        auto_finalize_ms: req.auto_finalize_after_secs.map(|s| s.saturating_mul(1000)),
        ..ClusterPlan::new(generation, &shown, v.plan.to.version.clone(), mode)
    };
    let before = record(app);
    let won = store(app)?
        .put_plan_if(&next, current.map(|(_, r)| r))
        .await?;
    if !won {
        return Err(ApiError::blocked(
            "another request changed the cluster's plan first: look at the status and try again",
        ));
    }
    crate::log(&format!(
        "plan {}: prepare {} on every node",
        next.generation, next.image_path
    ));
    wait_started(app, before, next.generation).await;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v2/upgrade/commit`.
pub(super) async fn commit(app: &Shared) -> Result<StatusCode, ApiError> {
    let Some((mut p, rev)) = plan(app).await? else {
        return Err(nothing_prepared("no upgrade"));
    };
    if p.phase != PlanPhase::Prepared {
        return Err(nothing_prepared(&format!("{:?}", p.phase)));
    }
    p.phase = PlanPhase::Committing;
    let before = record(app);
    if !store(app)?.put_plan_if(&p, Some(rev)).await? {
        return Err(ApiError::blocked(
            "another request changed the cluster's plan first: look at the status",
        ));
    }
    crate::log(&format!("plan {}: commit on every node", p.generation));
    // Every node commits at once unless the reboots roll (this node may then
    // come last).
    if !p.rolling || spec(app).nodes.len() == 1 {
        wait_started(app, before, p.generation).await;
    }
    Ok(StatusCode::ACCEPTED)
}

/// The engine's record as it is now (to see it change).
fn record(app: &Shared) -> Option<Vec<u8>> {
    let p = app.agent.node().store().ok()?.path();
    std::fs::read(p).ok()
}

/// Waits (at most [`START_LIMIT`]) until this node's engine recorded a state
/// other than `before`, or this node reported an end of generation `g` (a job
/// refused on it): a client reading this node's status right after the answer
/// sees the job, never the state before it, as from the engine's own CLI.
async fn wait_started(app: &Shared, before: Option<Vec<u8>>, g: u64) {
    let deadline = Instant::now() + START_LIMIT;
    let me = app.node_id();
    loop {
        if record(app) != before {
            return;
        }
        if let Ok(s) = store(app)
            && let Ok(Some((r, _))) = s.report_of_seen(me).await
            && r.generation == g
            && r.step == qcluster::NodeStep::Failed
        {
            return;
        }
        if Instant::now() >= deadline {
            crate::log(&format!(
                "plan {g}: this node's engine recorded no state within {START_LIMIT:?} of the request; answering anyway"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn nothing_prepared(state: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorClass::UpgradeWrongState,
        format!(
            "commit is not possible: the cluster's upgrade is {state}, not prepared (POST /v2/upgrade/prepare first)"
        ),
    )
}

/// `/v3/upgrade/status`. The progress is the mean of the nodes',
/// never decreasing as this node reports it.
pub(super) async fn status(app: &Shared) -> Result<UpgradeStatus, ApiError> {
    let s = Snapshot::load(app).await?;
    Ok(snapshot::status_body(s.as_ref(), spec(app), |g, p| {
        app.cluster_progress(g, p)
    }))
}

/// `/v2/upgrade/blocked`: the plan's.
pub(super) async fn blocked(app: &Shared) -> Result<Blocked, ApiError> {
    Ok(snapshot::blocked_body(Snapshot::load(app).await?.as_ref()))
}

/// `GET /v1/qimg/cluster/upgrade`: the plan node by node (a qimg extension; 404
/// before any upgrade).
pub(super) async fn nodes(
    axum::extract::State(app): axum::extract::State<Shared>,
) -> Result<axum::Json<ClusterUpgrade>, ApiError> {
    let Some(s) = Snapshot::load(&app).await? else {
        return Err(ApiError::not_found("no upgrade yet in this cluster"));
    };
    let registered = store(&app)?.nodes_seen().await?;
    let now = qcluster::plan::now_ms();
    let restriping = s.plan.gating(
        now,
        matches!(app.safety, crate::restriper::Source::Simulated { .. }),
    );
    let mut body = snapshot::nodes_body(&s, spec(&app), &registered, restriping);
    // The time left while it runs, from the cluster's history (the watch's
    // mirror); the batches a rolling commit will have, until it sets them.
    if matches!(
        s.plan.phase,
        PlanPhase::Preparing | PlanPhase::Prepared | PlanPhase::Committing
    ) {
        let history = store(&app)?.history(ETA_HISTORY).await?;
        let record = history.iter().find(|r| r.generation == s.plan.generation);
        let batches = match s.plan.nodes_per_batch {
            Some(k) if s.plan.in_batches() && s.plan.batches.is_empty() => {
                planned_batches(&app, k).await?.len()
            }
            _ => 1,
        };
        body.eta = qcluster::eta::eta(&s.plan, record, &history, batches, now);
    }
    Ok(axum::Json(body))
}

/// How many recent upgrades the time left is measured from (the page asks
/// every second: not all [`qcluster::history::KEEP`]).
const ETA_HISTORY: usize = 4 * qcluster::eta::LOOK_BACK;

/// Nodes per batch of a rolling reboot: the request's, else one less than the
/// node failures the cluster permits (at least 1).
pub(super) fn batch_size(spec: &qcluster::ClusterSpec, req: &PrepareRequest) -> u32 {
    req.num_nodes_to_reboot
        .unwrap_or(spec.max_node_failures.saturating_sub(1).max(1))
}

/// The batches a rolling commit of `k` nodes each would reboot in, were it to
/// start now: as the coordinator sets them (never a voter majority, its own
/// node last).
pub(super) async fn planned_batches(app: &Shared, k: u32) -> Result<Vec<Vec<u32>>, ApiError> {
    let spec = spec(app);
    let ids: Vec<u32> = spec.nodes.iter().map(|n| n.id).collect();
    let voters: Vec<u32> = spec.voters().iter().map(|n| n.id).collect();
    let coordinator = store(app)?.coordinator_seen().await?;
    Ok(qcluster::plan::batches(
        &ids,
        &voters,
        coordinator,
        k as usize,
    ))
}

/// The cluster's spec (of one node, for a node alone).
fn spec(app: &Shared) -> &qcluster::ClusterSpec {
    &app.cluster.membership.spec
}
