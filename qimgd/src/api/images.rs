//! `PUT /v1/qimg/images/{name}` (qimg extension): a bundle uploaded to this
//! node's upgrade directory, verified whole as it arrives (`crate::images`).
//! 201 with the bundle's identity when it is new, 200 when it replaced a file of
//! that name (`?replace=true`), 409 when one exists and the upload does not
//! replace it.
//!
//! `GET /v1/qimg/peer/images/{name}`: a bundle of this node's upgrade directory
//! for another node of the cluster, which fetches what it lacks. Only a client
//! with the cluster's node certificate (mutual TLS) gets it; the operator's
//! login does not. `Range: bytes=N-` resumes a broken fetch (206); the node's
//! `peer_serve_mib_per_s` bounds every stream it serves together, and
//! [`images::MAX_SERVES`] run at once. The fetching node verifies every byte:
//! nothing is trusted because of where it came from.

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use qapi::types::ErrorClass;
use qapi::types::ImageInfo;
use std::time::Duration;
use tokio::sync::mpsc;

use super::{ApiError, Shared, blocking};
use crate::images::{self, UploadProblem};
use crate::peer::Peer;

/// How many chunks of the body wait for the receiving thread.
const QUEUE: usize = 16;

pub(super) async fn put(
    State(app): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ImageInfo>), ApiError> {
    let replace = images::replace_of(q.as_deref())?;
    let name = images::check_name(&name)?.to_owned();
    let limit_mib = app.config.upload_limit_mib;
    let limit = limit_mib.saturating_mul(1 << 20);
    let declared = content_length(&headers)?;
    if declared.is_some_and(|n| n > limit) {
        return Err(UploadProblem::TooLarge { limit_mib }.into());
    }
    let dir = app.config.upgrade_dir.clone();
    if !replace && dir.join(&name).symlink_metadata().is_ok() {
        return Err(UploadProblem::Exists(name).into());
    }
    let _slot = app.uploads.begin(&name)?;
    images::make_dir(&dir)?;
    images::room(&dir, declared.unwrap_or(0))?;
    let keys = app.agent.node().keys()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let d = dir.clone();
    let receiving = tokio::task::spawn_blocking(move || images::receive(&d, &keys, rx));
    let idle = Duration::from_secs(app.config.upload_idle_secs);
    let fed = feed(body, tx, (limit, limit_mib), idle).await;
    let received = receiving
        .await
        .map_err(|e| ApiError::internal(format!("the receiving thread failed: {e}")))?;
    // The body's own failure first: the receiver only saw it end early.
    fed?;
    let received = received?;
    let release = &received.manifest.release;
    let answer = ImageInfo {
        image_path: format!("/{name}"),
        name: name.clone(),
        size: received.pin.size,
        product: release.product.clone(),
        version: release.version.to_string(),
        platform_version: release.platform_version.to_string(),
        manifest_sha256: received.pin.manifest_sha256.to_string(),
        replaced: false,
    };
    let n = name.clone();
    let replaced = blocking(move || Ok(images::publish(received, &dir, &n, replace)?)).await?;
    crate::log(&format!(
        "uploaded {name}: {} {} ({} bytes, manifest SHA-256 {}){}",
        answer.product,
        answer.version,
        answer.size,
        answer.manifest_sha256,
        if replaced {
            ", replacing the file of that name"
        } else {
            ""
        }
    ));
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ImageInfo { replaced, ..answer })))
}

pub(super) async fn serve(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    peer_only(&peer, "fetch bundles here")?;
    let name = images::check_name(&name)?.to_owned();
    let path = app.config.upgrade_dir.join(&name);
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorClass::FsNoSuchEntry,
            format!("{name} is not in this node's upgrade directory"),
        )
    };
    let file = std::fs::File::open(&path).map_err(|_| missing())?;
    let len = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .ok_or_else(missing)?
        .len();
    let range = headers
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok());
    let from = images::range_from(range, len).map_err(|_| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorClass::InvalidRequest,
            format!("{name} has {len} bytes: the range starts at or past its end"),
        )
    })?;
    let permit = app.serving.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::UploadBusy,
            format!(
                "this node serves {} bundles to other nodes already: try again",
                images::MAX_SERVES
            ),
        )
        .retry_after(1)
    })?;
    let (tx, rx) = mpsc::channel(4);
    let a = app.clone();
    let start = from.unwrap_or(0);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        images::serve_file(file, start, &a.pacer, tx);
    });
    let mut r = Response::new(Body::from_stream(images::ChannelStream(rx)));
    let h = r.headers_mut();
    let value = |s: String| axum::http::HeaderValue::from_str(&s).expect("a header value");
    h.insert(
        axum::http::header::CONTENT_LENGTH,
        value((len - start).to_string()),
    );
    h.insert(
        axum::http::header::CONTENT_TYPE,
        value("application/octet-stream".into()),
    );
    h.insert(axum::http::header::ACCEPT_RANGES, value("bytes".into()));
    if let Some(f) = from {
        h.insert(
            axum::http::header::CONTENT_RANGE,
            value(format!("bytes {f}-{}/{len}", len - 1)),
        );
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(r)
}

/// Refuses (403) a caller that is not another node of the cluster (mutual TLS
/// with its node certificate): only nodes `what`.
pub(super) fn peer_only(peer: &Peer, what: &str) -> Result<(), ApiError> {
    if peer.cluster_node {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorClass::HttpForbidden,
        format!("only the cluster's nodes {what}: present the node's certificate (mutual TLS)"),
    ))
}

/// The request's `Content-Length`, if it has one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, UploadProblem> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                UploadProblem::Request("the Content-Length header is not a number".into())
            })
        })
        .transpose()
}

/// Sends the body's chunks to the receiving thread until the body ends (once
/// the receiver stopped, refusing what came, the rest is read and dropped), the
/// client sends nothing for `idle` or the body passes the limit (bytes, and MiB
/// as configured). Returns the body's length.
async fn feed(
    mut body: Body,
    tx: mpsc::Sender<axum::body::Bytes>,
    (limit, limit_mib): (u64, u64),
    idle: Duration,
) -> Result<u64, UploadProblem> {
    let mut got = 0u64;
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| UploadProblem::Idle {
                secs: idle.as_secs(),
                got,
            })?;
        let chunk = match frame {
            None => return Ok(got),
            Some(Err(e)) => {
                return Err(UploadProblem::BrokeOff {
                    got,
                    why: e.to_string(),
                });
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(c) => c,
                Err(_) => continue, // trailers
            },
        };
        got += chunk.len() as u64;
        if got > limit {
            return Err(UploadProblem::TooLarge { limit_mib });
        }
        // A receiver that stopped refused what came: the rest is read and
        // dropped (within the same limits), so that the client, still
        // sending, gets to read the answer instead of a reset connection.
        if !tx.is_closed() && tx.send(chunk).await.is_err() {
            crate::log("an upload was refused mid-body: the rest is read and dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` to a receiver that keeps reading: what `feed` answers.
    async fn fed(body: Body, limit: u64, idle: Duration) -> Result<u64, UploadProblem> {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let r = feed(body, tx, (limit, 1), idle).await;
        drain.await.unwrap();
        r
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_too_slow_is_cut_off() {
        let second = Duration::from_secs(1);
        assert_eq!(
            fed(Body::from(vec![1u8; 100]), 100, second).await.unwrap(),
            100
        );
        assert!(matches!(
            fed(Body::from(vec![1u8; 101]), 100, second).await,
            Err(UploadProblem::TooLarge { limit_mib: 1 })
        ));
        // A body that never ends and never sends.
        let (_keep, rx) = mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        let stalled = Body::from_stream(images::ChannelStream(rx));
        let t = std::time::Instant::now();
        assert!(matches!(
            fed(stalled, 100, Duration::from_millis(200)).await,
            Err(UploadProblem::Idle { got: 0, .. })
        ));
        assert!(t.elapsed() < second, "{:?}", t.elapsed());
    }
}
