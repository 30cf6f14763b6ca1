//! The upgrade endpoints of a node in a cluster: any node accepts them and writes
//! the cluster's plan in etcd (compare-and-swap); the coordinator and every
//! node's member loop carry it out (`crate::coordinator`, `crate::member`). The
//! status is the cluster's, read from the plan and the nodes' reports.

use axum::http::StatusCode;
use qapi::types::{
    Blocked, ClusterUpgrade, NodeProgress, PrepareRequest, UpgradeSettings, UpgradeState,
    UpgradeStatus, UpgradeType,
};
use qcluster::{ClusterPlan, NodeStep, PlanMode, PlanPhase, Store};

use super::error::ApiError;
use super::{Shared, blocking};
use crate::paths;

/// The cluster's etcd, or 503 `cluster_unavailable_error` while this node has
/// not reached it.
pub(crate) fn store(app: &Shared) -> Result<&Store, ApiError> {
    app.cluster
        .as_ref()
        .and_then(|c| c.store())
        .ok_or_else(super::error::no_etcd_yet)
}

/// The plan and its revision.
pub(crate) async fn plan(app: &Shared) -> Result<Option<(ClusterPlan, i64)>, ApiError> {
    store(app)?.plan().await.map_err(ApiError::from)
}

fn in_progress(p: &ClusterPlan) -> ApiError {
    ApiError::blocked(format!(
        "an upgrade to {} is in progress in the cluster (plan {}, {:?}): wait for it to end",
        p.target_version, p.generation, p.phase
    ))
}

/// `POST /v2/upgrade/prepare` in a cluster (its batch size checked by
/// `upgrade_api::check_batch`): checked against this node, then the plan
/// written for every node.
pub(super) async fn prepare(app: &Shared, req: PrepareRequest) -> Result<StatusCode, ApiError> {
    let spec = &app
        .cluster
        .as_ref()
        .expect("a cluster node")
        .membership
        .spec;
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
    let current = plan(app).await?;
    if let Some((p, _)) = &current
        && p.phase.is_active()
    {
        return Err(in_progress(p));
    }
    let a = app.clone();
    let file = img.file.clone();
    let v = blocking(move || Ok(a.agent.verify(&file)?)).await?;
    if let Some(why) = v.blocked {
        return Err(ApiError::blocked(why));
    }
    let mode = match v.plan.mode {
        upgrade::state::Mode::Instant => PlanMode::Instant,
        upgrade::state::Mode::Platform => PlanMode::Platform,
    };
    let generation = current.as_ref().map_or(1, |(p, _)| p.generation + 1);
    let next = ClusterPlan {
        auto_commit: req.auto_commit,
        rolling: req.do_rolling_reboot,
        nodes_per_batch: req
            .num_nodes_to_reboot
            .or(Some(spec.max_node_failures.saturating_sub(1).max(1))),
        on_failure: req.on_failure.unwrap_or_default(),
        from_version: v.plan.from.version.to_string(),
        ..ClusterPlan::new(generation, &img.shown, &v.plan.to.version.to_string(), mode)
    };
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
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v2/upgrade/commit` in a cluster.
pub(super) async fn commit(app: &Shared) -> Result<StatusCode, ApiError> {
    let Some((mut p, rev)) = plan(app).await? else {
        return Err(nothing_prepared("no upgrade"));
    };
    if p.phase != PlanPhase::Prepared {
        return Err(nothing_prepared(&format!("{:?}", p.phase)));
    }
    p.phase = PlanPhase::Committing;
    if !store(app)?.put_plan_if(&p, Some(rev)).await? {
        return Err(ApiError::blocked(
            "another request changed the cluster's plan first: look at the status",
        ));
    }
    crate::log(&format!("plan {}: commit on every node", p.generation));
    Ok(StatusCode::ACCEPTED)
}

fn nothing_prepared(state: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "upgrade_wrong_state_error",
        format!(
            "commit is not possible: the cluster's upgrade is {state}, not prepared (POST /v2/upgrade/prepare first)"
        ),
    )
}

/// `/v3/upgrade/status` in a cluster. The progress is the mean of the nodes',
/// never decreasing as this node reports it.
pub(super) async fn status(app: &Shared) -> Result<UpgradeStatus, ApiError> {
    let Some((p, _)) = plan(app).await? else {
        return Ok(UpgradeStatus {
            state: UpgradeState::Idle,
            progress: None,
            settings: None,
            error_info: None,
        });
    };
    let reports = store(app)?.reports().await?;
    let spec = &app
        .cluster
        .as_ref()
        .expect("a cluster node")
        .membership
        .spec;
    let sum: u32 = spec
        .nodes
        .iter()
        .map(|n| {
            reports
                .iter()
                .find(|(id, r)| *id == n.id && r.generation == p.generation)
                .map_or(0, |(_, r)| match r.step {
                    NodeStep::Preparing => u32::from(r.progress.min(99)),
                    _ => 100,
                })
        })
        .sum();
    let mean = (sum / spec.nodes.len().max(1) as u32) as u8;
    let state = match p.phase {
        PlanPhase::Preparing => UpgradeState::Preparing,
        PlanPhase::Prepared => UpgradeState::Prepared,
        PlanPhase::Committing if p.mode == PlanMode::Platform => UpgradeState::Rebooting,
        PlanPhase::Committing => UpgradeState::Committing,
        // Qumulo's lifecycle: a finished upgrade is IDLE again (see
        // `shape::upgrade_state`); the plan keeps it (`/v1/qimg/cluster/upgrade`).
        PlanPhase::Committed => UpgradeState::Idle,
        PlanPhase::RollingBack => UpgradeState::Committing,
        PlanPhase::Discarding | PlanPhase::Failed => UpgradeState::Idle,
    };
    let progress = match state {
        UpgradeState::Preparing => Some(app.cluster_progress(p.generation, mean.min(99))),
        UpgradeState::Idle => None,
        _ => Some(100),
    };
    Ok(UpgradeStatus {
        state,
        progress,
        settings: Some(UpgradeSettings {
            install_path: p.image_path.clone(),
            target_version: p.target_version.clone(),
            upgrade_type: Some(UpgradeType::from_platform(p.mode == PlanMode::Platform)),
            auto_commit: p.auto_commit,
            do_rolling_reboot: p.rolling,
            num_nodes_to_reboot: p.nodes_per_batch,
        }),
        error_info: p.error.clone().or_else(|| p.paused_error.clone()),
    })
}

/// `/v2/upgrade/blocked` in a cluster.
pub(super) async fn blocked(app: &Shared) -> Result<Blocked, ApiError> {
    let (is_blocked, blocked_reason) = match plan(app).await? {
        Some((p, _))
            if p.paused_error.is_some()
                && matches!(p.phase, PlanPhase::Committing | PlanPhase::RollingBack) =>
        {
            (
                true,
                format!(
                    "the rolling reboot paused on an error: {} (POST /v1/shutdown/reboot/resume to go on)",
                    p.paused_error.as_deref().unwrap_or_default()
                ),
            )
        }
        Some((p, _)) if p.phase.is_active() => (true, in_progress(&p).description),
        _ => (false, String::new()),
    };
    Ok(Blocked {
        is_blocked,
        cluster_degraded: false,
        blocked_reason,
    })
}

/// `GET /v1/qimg/cluster/upgrade`: the plan node by node (a qimg extension; 404
/// on a node in no cluster or before any upgrade).
pub(super) async fn nodes(
    axum::extract::State(app): axum::extract::State<Shared>,
) -> Result<axum::Json<ClusterUpgrade>, ApiError> {
    let Some(c) = &app.cluster else {
        return Err(ApiError::not_found("this node is in no cluster"));
    };
    let Some((p, _)) = plan(&app).await? else {
        return Err(ApiError::not_found("no upgrade yet in this cluster"));
    };
    let s = store(&app)?;
    let reports = s.reports().await?;
    let registered = s.nodes().await?;
    let nodes = c
        .membership
        .spec
        .nodes
        .iter()
        .map(|n| {
            let r = reports
                .iter()
                .find(|(id, r)| *id == n.id && r.generation == p.generation)
                .map(|(_, r)| r);
            let reg = registered.iter().find(|r| r.id == n.id);
            NodeProgress {
                id: n.id,
                name: n.name.clone(),
                online: reg.is_some(),
                step: r.map(|r| r.step),
                progress: r.map_or(0, |r| r.progress),
                error: r.and_then(|r| r.error.clone()),
                installed: reg.and_then(|r| r.installed.clone()),
            }
        })
        .collect();
    Ok(axum::Json(ClusterUpgrade {
        generation: p.generation,
        phase: p.phase,
        rolling: p.rolling,
        batches: p.batches.clone(),
        batch: p.batch,
        restriping: p.gating(
            qcluster::plan::now_ms(),
            matches!(app.safety, crate::restriper::Source::Simulated { .. }),
        ),
        nodes,
        mode: Some(p.mode),
        from_version: Some(p.from_version.clone()).filter(|v| !v.is_empty()),
        target_version: p.target_version.clone(),
        downtime_ms: p.downtime_ms,
    }))
}
