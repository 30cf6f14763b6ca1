//! Error responses, shaped as Qumulo's: JSON with a stable `error_class` (what a
//! client branches on) and a `description`, plus the engine's `code` when the
//! engine said no. Qumulo's client prints `Error <status>: <class>: <description>`.
//! A description never names the node's own directories (`super::redact`): the
//! journal has it in full.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qapi::types::ErrorClass;
use serde::Serialize;

use crate::images::UploadProblem;
use crate::paths::PathProblem;

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable error class.
    pub class: ErrorClass,
    /// What happened, in words.
    pub description: String,
    /// The engine's error code, when the engine answered.
    pub code: Option<&'static str>,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
}

/// The JSON body.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// Who answered.
    pub module: &'static str,
    /// Stable error class.
    pub error_class: &'a str,
    /// In words.
    pub description: &'a str,
    /// The engine's error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    /// Always true: every description is meant for the operator.
    pub user_visible: bool,
    /// Qumulo's servers send a backtrace; ours is empty.
    pub stack: [&'a str; 0],
}

impl ApiError {
    /// An error of `class` with `status`.
    pub fn new(status: StatusCode, class: ErrorClass, description: impl Into<String>) -> Self {
        ApiError {
            status,
            class,
            description: description.into(),
            code: None,
            retry_after: None,
        }
    }

    /// The same error, asking the client to try again after `secs` (`Retry-After`).
    pub fn retry_after(self, secs: u64) -> Self {
        ApiError {
            retry_after: Some(secs),
            ..self
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorClass::InvalidRequest,
            description,
        )
    }

    /// 401 `http_unauthorized_error`.
    pub fn unauthorized(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorClass::HttpUnauthorized,
            description,
        )
    }

    /// 404 `http_not_found_error`.
    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorClass::HttpNotFound, description)
    }

    /// 409 `upgrade_blocked_error`.
    pub fn blocked(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            ErrorClass::UpgradeBlocked,
            description,
        )
    }

    /// 500 `internal_error`.
    pub fn internal(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::Internal,
            description,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The node's own layout stays in the journal (`super::redact`).
        let shown = super::redact::redact(&self.description);
        if shown.is_some() {
            crate::log(&format!(
                "answered {} {}: {}",
                self.status.as_u16(),
                self.class.as_str(),
                self.description
            ));
        }
        let body = ErrorBody {
            module: "qimgd",
            error_class: self.class.as_str(),
            description: shown.as_deref().unwrap_or(&self.description),
            code: self.code,
            user_visible: true,
            stack: [],
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = s.to_string().parse()
        {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<upgrade::Error> for ApiError {
    fn from(e: upgrade::Error) -> Self {
        use upgrade::Error as E;
        let (status, class) = match &e {
            E::Refused { .. } => (StatusCode::BAD_REQUEST, ErrorClass::UpgradeImageRefused),
            E::Bundle { .. } => (StatusCode::BAD_REQUEST, ErrorClass::UpgradeImageDamaged),
            E::BundleOpen { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                (StatusCode::NOT_FOUND, ErrorClass::FsNoSuchEntry)
            }
            E::BundleOpen { .. } => (StatusCode::BAD_REQUEST, ErrorClass::UpgradeImageUnreadable),
            E::Blocked(_) => (StatusCode::CONFLICT, ErrorClass::UpgradeBlocked),
            E::WrongState { .. } => (StatusCode::CONFLICT, ErrorClass::UpgradeWrongState),
            E::Cancelled => (StatusCode::CONFLICT, ErrorClass::UpgradeCancelled),
            E::StateDamaged { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorClass::UpgradeStateDamaged,
            ),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorClass::UpgradeEngine),
        };
        ApiError {
            status,
            class,
            description: upgrade::chain(&e),
            code: Some(e.code()),
            retry_after: None,
        }
    }
}

/// The one mapping of the cluster's errors to HTTP: etcd that cannot be reached
/// or did not answer is 503 `cluster_unavailable_error` (a client may retry), a
/// damaged value in etcd 500 `cluster_state_damaged_error`, the rest 500.
impl From<qcluster::Error> for ApiError {
    fn from(e: qcluster::Error) -> Self {
        use qcluster::Error as E;
        let (status, class) = match &e {
            E::Etcd { .. } | E::Timeout { .. } | E::WatchCancelled { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorClass::ClusterUnavailable,
            ),
            E::Damaged { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorClass::ClusterStateDamaged,
            ),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorClass::Internal),
        };
        ApiError::new(
            status,
            class,
            format!("the cluster's state: {}", upgrade::chain(&e)),
        )
    }
}

/// The agent's own errors: the cluster's as above, the rest 500.
impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Cluster(c) => c.into(),
            e => ApiError::internal(upgrade::chain(&e)),
        }
    }
}

/// 503 `cluster_unavailable_error` while this node has not reached etcd.
pub fn no_etcd_yet() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::ClusterUnavailable,
        "the cluster's state cannot be reached: this node has not reached etcd yet",
    )
}

/// An upload's problems: the client's (400, 408, 409, 413, 429), the node's
/// room (507), a bundle that does not verify (400, the engine's class), the
/// file system's (500).
impl From<UploadProblem> for ApiError {
    fn from(p: UploadProblem) -> Self {
        use UploadProblem as P;
        let (status, class) = match &p {
            P::BadName(_) | P::Request(_) | P::BrokeOff { .. } => {
                (StatusCode::BAD_REQUEST, ErrorClass::InvalidRequest)
            }
            P::Exists(_) => (StatusCode::CONFLICT, ErrorClass::FsEntryExists),
            P::InProgress(_) => (StatusCode::CONFLICT, ErrorClass::UploadBusy),
            P::TooMany => (StatusCode::TOO_MANY_REQUESTS, ErrorClass::UploadBusy),
            P::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorClass::HttpPayloadTooLarge,
            ),
            P::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, ErrorClass::FsNoSpace),
            P::Idle { .. } => (StatusCode::REQUEST_TIMEOUT, ErrorClass::HttpRequestTimeout),
            P::Bundle(e) if e.is_verification_failure() => {
                (StatusCode::BAD_REQUEST, ErrorClass::UpgradeImageDamaged)
            }
            P::Bundle(_) => (StatusCode::BAD_REQUEST, ErrorClass::UpgradeImageUnreadable),
            P::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorClass::Internal),
        };
        let e = ApiError::new(status, class, upgrade::chain(&p));
        if matches!(p, P::TooMany) {
            e.retry_after(5)
        } else {
            e
        }
    }
}

impl From<PathProblem> for ApiError {
    fn from(p: PathProblem) -> Self {
        match p {
            PathProblem::Missing(_) => Self::new(
                StatusCode::NOT_FOUND,
                ErrorClass::FsNoSuchEntry,
                p.to_string(),
            ),
            PathProblem::Dir(_) => Self::internal(p.to_string()),
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                ErrorClass::UpgradeInvalidImagePath,
                p.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clusters_errors_map_to_one_status_each() {
        let timeout = qcluster::Error::Timeout {
            op: "reading the plan".into(),
            secs: 5,
        };
        let e = ApiError::from(timeout);
        assert_eq!(
            (e.status, e.class),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorClass::ClusterUnavailable
            )
        );
        assert!(e.description.contains("reading the plan"), "{e:?}");
        let cancelled = qcluster::Error::WatchCancelled {
            prefix: "/qimg/c/".into(),
            reason: "compacted".into(),
        };
        assert_eq!(
            ApiError::from(cancelled).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let damaged = qcluster::Error::Damaged {
            key: "/qimg/c/plan".into(),
            problem: "not JSON".into(),
        };
        let e = ApiError::from(damaged);
        assert_eq!(
            (e.status, e.class),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorClass::ClusterStateDamaged
            )
        );
        // Through the agent's own error, the same.
        let wrapped = crate::Error::Cluster(qcluster::Error::Timeout {
            op: "x".into(),
            secs: 1,
        });
        assert_eq!(
            ApiError::from(wrapped).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(no_etcd_yet().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(no_etcd_yet().class, ErrorClass::ClusterUnavailable);
    }
}
