//! The node's identity endpoints: version, node state, cluster membership.

use axum::Json;
use axum::extract::{Path, State};

use super::error::ApiError;
use super::{Shared, blocking};
use qapi::types::{ClusterNode, NodeStateInfo, VersionInfo};

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
            .map_or_else(|| "unknown".into(), |v| v.to_string());
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
        node_id: app.node_id(),
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
        software_version: app
            .agent
            .node()
            .containers()
            .installed()
            .ok()
            .and_then(|i| i.active)
            .map(|v| v.to_string()),
        boot_slot: None,
        api_address: None,
    }
}

/// The host name (`/proc/sys/kernel/hostname`).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Every node of the cluster: the registered ones online with what they
/// registered, the others offline (their lease expired or they never started).
async fn all_nodes(app: &Shared) -> Result<Vec<ClusterNode>, ApiError> {
    let c = &app.cluster;
    if c.is_alone() {
        // Itself, as it answers now (no registration to wait for).
        return Ok(vec![this_node(app, true)]);
    }
    let store = super::cluster_upgrade::store(app)?;
    let registered = store.nodes_seen().await?;
    Ok(c.membership
        .spec
        .nodes
        .iter()
        .map(|n| {
            let offline = ClusterNode {
                id: n.id,
                node_status: "offline".into(),
                node_name: n.name.clone(),
                uuid: String::new(),
                label: String::new(),
                model_number: String::new(),
                serial_number: String::new(),
                mac_address: String::new(),
                software_version: None,
                boot_slot: None,
                api_address: Some(n.agent.to_string()),
            };
            match registered.iter().find(|r| r.id == n.id) {
                Some(r) => ClusterNode {
                    node_status: "online".into(),
                    uuid: r.uuid.clone(),
                    model_number: r.model.clone(),
                    software_version: r.installed.as_ref().map(ToString::to_string),
                    boot_slot: r.slot.clone(),
                    ..offline
                },
                None => offline,
            }
        })
        .collect())
}

pub(super) async fn cluster_nodes(
    State(app): State<Shared>,
) -> Result<Json<Vec<ClusterNode>>, ApiError> {
    Ok(Json(all_nodes(&app).await?))
}

pub(super) async fn cluster_node(
    State(app): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<ClusterNode>, ApiError> {
    let n: Option<u32> = id.parse().ok();
    all_nodes(&app)
        .await?
        .into_iter()
        .find(|c| Some(c.id) == n)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no node {id} in this cluster")))
}
