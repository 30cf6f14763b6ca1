//! `GET /v1/qimg/overview`: the Web UI's one request. Each part is what its own
//! endpoint answers, computed in this process (the cluster's parts from the
//! watch's mirror, no etcd round trip while it is live); a part its endpoint
//! refuses is `null`. The status is the one part that must be there.

use axum::Json;
use axum::extract::{RawQuery, State};
use qapi::overview::Overview;

use super::error::ApiError;
use super::{Shared, cluster_upgrade, history, node, reboot, upgrade_api};

/// How many upgrades the page lists.
const HISTORY: &str = "limit=5";

pub(super) async fn overview(State(app): State<Shared>) -> Result<Json<Overview>, ApiError> {
    let s = || State(app.clone());
    let (version, status, blocked, nodes, plan, reboot, restriper, protection, history) = tokio::join!(
        node::version(s()),
        upgrade_api::status(s()),
        upgrade_api::blocked(s()),
        node::cluster_nodes(s()),
        cluster_upgrade::nodes(s()),
        reboot::status(s()),
        reboot::restriper(s()),
        reboot::protection(s()),
        history::history(s(), RawQuery(Some(HISTORY.into()))),
    );
    Ok(Json(Overview {
        version: version?.0,
        status: status?.0,
        blocked: blocked.ok().map(|j| j.0),
        nodes: nodes.map(|j| j.0).unwrap_or_default(),
        plan: plan.ok().map(|j| j.0),
        reboot: reboot.ok().map(|j| j.0),
        restriper: restriper.ok().map(|j| j.0),
        protection: protection.ok().map(|j| j.0),
        history: history.ok().map(|j| j.0),
    }))
}
