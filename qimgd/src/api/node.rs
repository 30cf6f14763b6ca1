//! The node's identity and health endpoints: version, node state, cluster
//! membership (one node until the cluster issue), reboot status.

use axum::Json;
use axum::extract::{Path, State};
use upgrade::state::{CommitStep, Stage};

use super::error::ApiError;
use super::{Shared, blocking};
use qapi::types::{ClusterNode, NodeStateInfo, RebootStatus, VersionInfo};

/// The installed release is the active container's (an atomically replaced
/// record), so answering never reads the ESP a commit may be changing.
pub(super) async fn version(State(app): State<Shared>) -> Result<Json<VersionInfo>, ApiError> {
    let a = app.clone();
    blocking(move || {
        let release = a
            .agent
            .node()
            .containers()
            .installed()?
            .active
            .unwrap_or_else(|| "unknown".into());
        Ok(Json(VersionInfo {
            revision_id: format!("{} {release}", a.product),
            build_id: release,
            flavor: "release".into(),
            build_date: String::new(),
        }))
    })
    .await
}

fn container_running(app: &Shared) -> Result<bool, ApiError> {
    Ok(app.agent.runtime().running()?.is_some())
}

pub(super) async fn node_state(State(app): State<Shared>) -> Result<Json<NodeStateInfo>, ApiError> {
    let a = app.clone();
    let running = blocking(move || container_running(&a)).await?;
    Ok(Json(NodeStateInfo {
        node_id: app.config.node_id,
        state: if running { "ACTIVE" } else { "STOPPED" }.into(),
        cluster_id: app.identity.cluster_uuid.clone(),
    }))
}

fn this_node(app: &Shared, online: bool) -> ClusterNode {
    ClusterNode {
        id: app.config.node_id,
        node_status: if online { "online" } else { "offline" }.into(),
        node_name: app.config.node_name.clone().unwrap_or_else(hostname),
        uuid: app.identity.node_uuid.clone(),
        label: String::new(),
        model_number: app.agent.node().config.model.clone(),
        serial_number: String::new(),
        mac_address: String::new(),
    }
}

/// The host name (`/proc/sys/kernel/hostname`).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub(super) async fn cluster_nodes(
    State(app): State<Shared>,
) -> Result<Json<Vec<ClusterNode>>, ApiError> {
    Ok(Json(vec![this_node(&app, true)]))
}

pub(super) async fn cluster_node(
    State(app): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<ClusterNode>, ApiError> {
    match id.parse::<u32>() {
        Ok(n) if n == app.config.node_id => Ok(Json(this_node(&app, true))),
        _ => Err(ApiError::not_found(format!("no node {id} in this cluster"))),
    }
}

pub(super) async fn reboot_status(
    State(app): State<Shared>,
) -> Result<Json<RebootStatus>, ApiError> {
    let agent = app.agent.clone();
    let st = blocking(move || Ok(agent.state()?)).await?;
    let rebooting = matches!(
        st.stage,
        Stage::Committing(_, CommitStep::Reboot { .. } | CommitStep::Fallback { .. })
    );
    Ok(Json(RebootStatus {
        state: if rebooting {
            "REBOOT_IN_PROGRESS"
        } else {
            "REBOOT_IDLE"
        }
        .into(),
        rolling: rebooting && st.settings.rolling,
        upgrade_initiated: rebooting,
        total_node_count: 1,
        rebooted_node_count: 0,
        error_message: String::new(),
    }))
}
