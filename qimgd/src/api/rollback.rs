//! `POST /v1/qimg/upgrade/rollback` and `POST /v1/qimg/upgrade/finalize` (qimg
//! extensions; `qapi::rollback`): a committed upgrade stays finalizable until
//! it is finalized (by the operator, or its `auto_finalize_after_secs`);
//! meanwhile any node accepts a rollback, which moves the plan from
//! `Committed` to `RollingBack` by compare-and-swap — the nodes go back batch
//! by batch under the data-safety gate, or all at once, as a rollback after a
//! failed commit does (`crate::coordinator`, `crate::member`) — and the plan
//! ends `RolledBack`. A finalize only records who finalized it: the previous
//! release may then be overwritten by the next prepare, which until then is
//! refused (`super::cluster_upgrade::may_start`).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use qapi::rollback::{Finality, RollbackRequest};
use qapi::types::ErrorClass;
use qcluster::{ClusterPlan, PlanMode, PlanPhase};

use super::body::{JsonBody, NoBody};
use super::cluster_upgrade::{plan, planned_batches, store};
use super::error::ApiError;
use super::{Caller, Shared};

/// 409 `upgrade_wrong_state_error`: `what` cannot be done to `p` (or to no
/// upgrade at all).
fn wrong_state(what: &str, p: Option<&ClusterPlan>) -> ApiError {
    let why = match p {
        None => "the cluster has no upgrade".to_string(),
        Some(
            p @ ClusterPlan {
                phase: PlanPhase::Committed,
                finalized: Some(f),
                ..
            },
        ) => format!(
            "the upgrade to {} (plan {}) was finalized by {}: its previous release may be overwritten",
            p.target_version, p.generation, f.by
        ),
        Some(p) => format!(
            "the cluster's upgrade to {} (plan {}) is {}, not committed",
            p.target_version,
            p.generation,
            p.phase.name()
        ),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorClass::UpgradeWrongState,
        format!("{what} is not possible: {why}"),
    )
}

/// A finalizable plan, and its revision.
async fn finalizable(app: &Shared, what: &str) -> Result<(ClusterPlan, i64), ApiError> {
    match plan(app).await? {
        Some((p, rev)) if p.finalizable() => Ok((p, rev)),
        other => Err(wrong_state(what, other.as_ref().map(|(p, _)| p))),
    }
}

pub(super) async fn rollback(
    State(app): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    RawQuery(q): RawQuery,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Result<StatusCode, ApiError> {
    super::upgrade_api::no_overrides(q)?;
    let (mut p, rev) = finalizable(&app, "a rollback").await?;
    let spec = &app.cluster.membership.spec;
    let rolling = p.mode == PlanMode::Platform
        && spec.nodes.len() > 1
        && req.do_rolling_reboot.unwrap_or(p.rolling);
    if req.num_nodes_to_reboot.is_some() && !rolling {
        return Err(ApiError::bad_request(
            "num_nodes_to_reboot applies to a rolling rollback of a platform upgrade only",
        ));
    }
    let k = req.num_nodes_to_reboot.or(p.nodes_per_batch).unwrap_or(1);
    if rolling {
        super::upgrade_api::check_nodes_per_batch(&app, Some(k))?;
        if app.safety == crate::restriper::Source::Missing {
            return Err(ApiError::blocked(format!(
                "a rolling rollback is refused: {}. Set restriper_probe, or roll every node back at once (do_rolling_reboot: false)",
                crate::restriper::MISSING
            )));
        }
    }
    let by = Caller::asked(caller);
    let batches = if rolling {
        planned_batches(&app, k).await?
    } else {
        vec![]
    };
    p.roll_back(batches, by.at_ms);
    p.rolling = rolling || (p.rolling && p.mode == PlanMode::Instant);
    p.nodes_per_batch = Some(k);
    p.rollback = Some(by);
    if !store(&app)?.put_plan_if(&p, Some(rev)).await? {
        return Err(ApiError::blocked(
            "another request changed the cluster's plan first: look at the status and try again",
        ));
    }
    crate::log(&format!(
        "plan {}: {} ({})",
        p.generation,
        p.rollback_reason(),
        if rolling {
            "batch by batch"
        } else {
            "every node at once"
        }
    ));
    Ok(StatusCode::ACCEPTED)
}

pub(super) async fn finalize(
    State(app): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    RawQuery(q): RawQuery,
    _: NoBody,
) -> Result<Json<Finality>, ApiError> {
    super::upgrade_api::no_overrides(q)?;
    // Finalized already: said again, nothing changed.
    if let Some((p, _)) = plan(&app).await?
        && p.phase == PlanPhase::Committed
        && p.finalized.is_some()
    {
        return Ok(Json(p.finality()));
    }
    let (mut p, rev) = finalizable(&app, "a finalize").await?;
    let who = Caller::asked(caller);
    let by = who.by.clone();
    p.finalized = Some(who);
    if !store(&app)?.put_plan_if(&p, Some(rev)).await? {
        return Err(ApiError::blocked(
            "another request changed the cluster's plan first: look at the status and try again",
        ));
    }
    crate::log(&format!(
        "plan {}: the upgrade to {} finalized by {by}",
        p.generation, p.target_version
    ));
    Ok(Json(p.finality()))
}
