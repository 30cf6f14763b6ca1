//! `POST /v1/qimg/upgrade/preview` (`qq upgrade_cluster … --dry-run`, the Web
//! UI's dialog): what a prepare with the same body would do — the mode, the
//! versions, the batches in order (the coordinator's node last) — and how long
//! each phase is expected to take from this cluster's history
//! (`qcluster::eta`). Refused as the prepare would be (an upgrade under way,
//! or one not finalized); nothing is written.

use axum::Json;
use axum::extract::{RawQuery, State};
use qapi::history::{PREVIEW_SCHEMA, Preview};
use qapi::types::{PlanMode, PrepareRequest};

use super::body::JsonBody;
use super::cluster_upgrade::{batch_size, plan, planned_batches, store};
use super::error::ApiError;
use super::{Shared, blocking};
use crate::paths;

pub(super) async fn preview(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
    JsonBody(req): JsonBody<PrepareRequest>,
) -> Result<Json<Preview>, ApiError> {
    super::upgrade_api::no_overrides(q)?;
    super::upgrade_api::check_batch(&app, &req)?;
    let img = paths::resolve(&app.config.upgrade_dir, &req.image_path)?;
    super::cluster_upgrade::may_start(plan(&app).await?.as_ref().map(|(p, _)| p))?;
    let a = app.clone();
    let shown = img.shown.clone();
    let v = blocking(move || Ok(a.agent.verify_from(&img.file.clone(), img.source())?)).await?;
    if let Some(why) = v.blocked {
        return Err(ApiError::blocked(why));
    }
    let spec = &app.cluster.membership.spec;
    let mode = v.plan.mode;
    let batches = match mode {
        PlanMode::Instant => vec![],
        PlanMode::Platform if req.do_rolling_reboot => {
            planned_batches(&app, batch_size(spec, &req)).await?
        }
        PlanMode::Platform => vec![spec.nodes.iter().map(|n| n.id).collect()],
    };
    let history = store(&app)?.history(qcluster::history::KEEP).await?;
    let shape = qcluster::eta::Shape {
        mode,
        batches: batches.len().max(1),
        bundle_size: Some(v.pin.size),
    };
    let phases = qcluster::eta::expected(&shape, &history);
    Ok(Json(Preview {
        schema: PREVIEW_SCHEMA.into(),
        image_path: shown,
        mode,
        from_version: Some(v.plan.from.version.to_string()),
        to_version: v.plan.to.version.to_string(),
        rolling: req.do_rolling_reboot && mode == PlanMode::Platform,
        batches,
        total_ms: phases.iter().map(|p| p.expected_ms).sum(),
        phases,
    }))
}
