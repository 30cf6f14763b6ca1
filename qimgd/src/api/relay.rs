//! A prepare through a node that lacks the bundle. Nodes share no file system:
//! the operator may name a file that only the node it uploaded to holds. The
//! node asked finds the first other node that has it (`HEAD
//! /v1/qimg/peer/images/{name}`) and hands the request to it (`POST
//! /v1/qimg/peer/upgrade/prepare`, mutual TLS with the cluster's node
//! certificates); that node verifies the file, pins it and writes the plan, as
//! any node may, and the nodes that lack the file fetch it (`crate::fetch`). Its
//! answer is the operator's. A relayed request is never relayed again.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use qapi::history::Started;
use qapi::types::{ErrorClass, PrepareRequest};

use super::body::JsonBody;
use super::error::ApiError;
use super::{Shared, blocking};
use crate::paths::{self, PathProblem};
use crate::peer::Peer;

/// The path another node hands a prepare to.
pub const PEER_PREPARE: &str = "/v1/qimg/peer/upgrade/prepare";

/// `Some(answer)` when the request's file is not on this node and another node
/// that has it took the request; `None` when this node answers itself (it has
/// the file, it is alone, or the path is not one a node serves).
pub(super) async fn elsewhere(
    app: &Shared,
    req: &PrepareRequest,
    started: &Started,
) -> Result<Option<StatusCode>, ApiError> {
    let Some(dir) = app.cluster.dir.clone() else {
        return Ok(None);
    };
    if !matches!(
        paths::resolve(&app.config.upgrade_dir, &req.image_path),
        Err(PathProblem::Missing(_))
    ) {
        return Ok(None);
    }
    let name = req.image_path.trim_start_matches('/').to_owned();
    if crate::images::check_name(&name).is_err() {
        return Ok(None);
    }
    let c = &app.cluster;
    let peers: Vec<qcluster::NodeSpec> =
        crate::fetch::peers(&c.membership.spec.nodes, c.membership.node_id)
            .into_iter()
            .cloned()
            .collect();
    let body = serde_json::to_vec(req).map_err(|e| ApiError::internal(e.to_string()))?;
    let shown = req.image_path.clone();
    // Who asked goes with the request: the record says who started the upgrade.
    let path = format!(
        "{PEER_PREPARE}?by={}&from={}",
        percent(&started.by),
        percent(&started.from)
    );
    blocking(move || {
        let refs: Vec<&qcluster::NodeSpec> = peers.iter().collect();
        let holder = crate::fetch::holder(&name, &dir, &refs).map_err(|why| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorClass::FsNoSuchEntry,
                format!(
                    "image_path {shown:?} does not exist on this node nor on the others: {why}"
                ),
            )
        })?;
        let unreachable = |e: qapi::Error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorClass::ClusterUnavailable,
                format!(
                    "node {} has {shown} but did not take the request: {}",
                    holder.id,
                    qutil::chain(&e)
                ),
            )
        };
        let r = crate::fetch::client_of(holder, &dir)
            .and_then(|mut cl| cl.request("POST", &path, Some(&body)))
            .map_err(unreachable)?;
        crate::log(&format!(
            "{shown} is on node {}, not here: it took the prepare ({})",
            holder.id, r.status
        ));
        if r.status == 202 {
            return Ok(Some(StatusCode::ACCEPTED));
        }
        let e: qapi::ErrorBody = serde_json::from_slice(&r.body).map_err(|e| {
            ApiError::internal(format!("node {}'s answer ({}): {e}", holder.id, r.status))
        })?;
        let class: ErrorClass = serde_json::from_value(serde_json::Value::String(e.error_class))
            .unwrap_or(ErrorClass::Internal);
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
        Err(ApiError::new(
            status,
            class,
            format!(
                "{} (node {}, which has the file, answered)",
                e.description, holder.id
            ),
        ))
    })
    .await
}

/// Who asked the node that handed a prepare over (`?by=…&from=…`).
#[derive(Debug, serde::Deserialize)]
pub(super) struct Asker {
    #[serde(default)]
    by: String,
    #[serde(default)]
    from: String,
}

/// `POST /v1/qimg/peer/upgrade/prepare`: a prepare another node of the cluster
/// handed over (only with its node certificate), answered as this node's own.
pub(super) async fn peer_prepare(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    Query(asker): Query<Asker>,
    JsonBody(req): JsonBody<PrepareRequest>,
) -> Result<StatusCode, ApiError> {
    super::images::peer_only(&peer, "hand a prepare over")?;
    super::upgrade_api::check_batch(&app, &req)?;
    let started = Started {
        at_ms: qcluster::plan::now_ms(),
        by: asker.by,
        from: asker.from,
    };
    let r = super::cluster_upgrade::prepare(&app, req, started).await;
    let status = r.as_ref().map_or_else(|e| e.status, |s| *s);
    super::audit(
        "another node",
        Some(&peer),
        &format!("POST {PEER_PREPARE} -> {}", status.as_u16()),
    );
    r
}

/// `s` for a query string: every byte but unreserved ones as `%XX`.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn who_asked_survives_the_query_string() {
        #[derive(serde::Deserialize)]
        struct Q {
            by: String,
            from: String,
        }
        let by = "user \"a&b=c\" ü";
        let from = "the local socket (uid 0)";
        let q = format!("by={}&from={}", super::percent(by), super::percent(from));
        assert!(q.bytes().all(|b| b.is_ascii_graphic()), "{q}");
        let uri: axum::http::Uri = format!("{}?{q}", super::PEER_PREPARE).parse().unwrap();
        let axum::extract::Query(back) = axum::extract::Query::<Q>::try_from_uri(&uri).unwrap();
        assert_eq!((back.by.as_str(), back.from.as_str()), (by, from));
    }
}
