//! The reboot manager and data protection of a cluster: `/v1/shutdown/reboot/
//! status|pause|resume` (a rolling platform commit's batches), and
//! `/v1/cluster/protection/status` and `/restriper/status` (the data-safety gate).
//! On a node in no cluster, the reboot manager is idle and the data is safe.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use qapi::types::ErrorClass;
use qapi::types::{ProtectionStatus, RebootStatus, RestriperStatus};

use super::Shared;
use super::body::NoBody;
use super::cluster_upgrade::plan;
use super::error::ApiError;
use super::snapshot::{self, Snapshot};
use crate::restriper::Source;
use qcluster::plan::now_ms;

fn node_count(app: &Shared) -> u32 {
    app.cluster.membership.spec.nodes.len() as u32
}

pub(super) async fn status(State(app): State<Shared>) -> Result<Json<RebootStatus>, ApiError> {
    let s = Snapshot::load(&app).await?;
    Ok(Json(snapshot::reboot_body(s.as_ref(), node_count(&app))))
}

async fn set_paused(app: &Shared, pause: bool) -> Result<StatusCode, ApiError> {
    let store = super::cluster_upgrade::store(app)?;
    let Some((mut p, rev)) = plan(app).await? else {
        return Err(not_rolling());
    };
    if !snapshot::rebooting(&p) || !p.rolling {
        return Err(not_rolling());
    }
    p.paused = pause;
    if !pause {
        // Resuming clears an error pause, ends a canary soak, and gives the
        // batch its time again.
        p.paused_error = None;
        p.soaking = false;
        p.soak_until_ms = 0;
        p.batch_started_ms = now_ms();
    }
    if !store.put_plan_if(&p, Some(rev)).await? {
        return Err(ApiError::blocked(
            "the plan changed meanwhile: look at the reboot status and try again",
        ));
    }
    crate::log(&format!(
        "plan {}: rolling reboot {}",
        p.generation,
        if pause { "paused" } else { "resumed" }
    ));
    Ok(StatusCode::OK)
}

fn not_rolling() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorClass::RebootNotInProgress,
        "no rolling reboot is in progress",
    )
}

pub(super) async fn pause(State(app): State<Shared>, _: NoBody) -> Result<StatusCode, ApiError> {
    set_paused(&app, true).await
}

pub(super) async fn resume(State(app): State<Shared>, _: NoBody) -> Result<StatusCode, ApiError> {
    set_paused(&app, false).await
}

pub(super) async fn restriper(
    State(app): State<Shared>,
) -> Result<Json<RestriperStatus>, ApiError> {
    let finished = RestriperStatus {
        state: "FINISHED".into(),
        phase: String::new(),
        blocked_reason: String::new(),
        data_at_risk: false,
        elapsed_seconds: 0,
        percent_complete: 100,
        coordinator_node: app.node_id(),
    };
    let unavailable = |why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::RestriperUnavailable,
            why,
        )
    };
    let ms_per_node = match &app.safety {
        Source::Missing => return Err(unavailable(crate::restriper::MISSING.into())),
        Source::Simulated { ms_per_node } => *ms_per_node,
        Source::Probe(argv) => {
            let argv = argv.clone();
            // The storage software's own answer.
            return tokio::task::spawn_blocking(move || crate::restriper::probe(&argv))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map(Json)
                .map_err(|why| unavailable(why.to_string()));
        }
    };
    let Some((p, _)) = plan(&app).await? else {
        return Ok(Json(finished));
    };
    let now = now_ms();
    let running = p.gating(now, true);
    if !running {
        return Ok(Json(finished));
    }
    let batch = p.batches.get(p.batch).map_or(1, Vec::len) as u64;
    let total = (ms_per_node * batch).max(1);
    let started = p.gate_until_ms.saturating_sub(total);
    let elapsed = now.saturating_sub(started);
    Ok(Json(RestriperStatus {
        state: "RUNNING".into(),
        phase: "REPROTECT".into(),
        blocked_reason: String::new(),
        data_at_risk: true,
        elapsed_seconds: elapsed / 1000,
        percent_complete: (elapsed * 100 / total).min(99) as u8,
        coordinator_node: app.node_id(),
    }))
}

pub(super) async fn protection(
    State(app): State<Shared>,
) -> Result<Json<ProtectionStatus>, ApiError> {
    let c = &app.cluster;
    let max = c.membership.spec.max_node_failures;
    let online = match c.store() {
        Some(s) => s.nodes_seen().await.map(|n| n.len() as u32).unwrap_or(0),
        None => 0,
    };
    let offline = node_count(&app).saturating_sub(online);
    Ok(Json(ProtectionStatus {
        protection_system_type: "PROTECTION_SYSTEM_TYPE_EC".into(),
        max_node_failures: max,
        remaining_node_failures: max.saturating_sub(offline),
    }))
}
