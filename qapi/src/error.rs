//! The client's one error type.

use serde::{Deserialize, Serialize};

/// An error response's body, as the agent (and Qumulo's servers) send it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable error class (`upgrade_blocked_error`, `http_unauthorized_error`, …).
    pub error_class: String,
    /// What happened, in words.
    pub description: String,
    /// The engine's error code, when the engine answered.
    #[serde(default)]
    pub code: Option<String>,
}

/// Errors of the REST client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent could not be reached (refused, reset, timed out, closed).
    #[error("cannot reach {target}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-request.
    #[error("{op} {target}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("TLS to {target}")]
    Tls {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The agent answered with an error.
    #[error("{method} {path}: HTTP {status}: {}: {}", .body.error_class, .body.description)]
    Http {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The error's body.
        body: ErrorBody,
    },
    /// The answer is not HTTP or not the JSON expected.
    #[error("{method} {path}: the answer cannot be used: {problem}")]
    Protocol {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The credentials file cannot be read or written.
    #[error("credentials {path}: {problem}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// No check of the assessment has this name.
    #[error("no check is named {name:?}; the checks: {known}")]
    UnknownCheck {
        /// The name given.
        name: String,
        /// Every check's name.
        known: String,
    },
}

impl Error {
    /// A stable identifier of the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "connect",
            Error::Io { .. } => "io",
            Error::Tls { .. } => "tls",
            Error::Http { .. } => "http",
            Error::Protocol { .. } => "protocol",
            Error::Credentials { .. } => "credentials",
            Error::UnknownCheck { .. } => "unknown_check",
        }
    }

    /// True when the agent could not be reached or the connection broke: what a
    /// rebooting node looks like.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Io { .. })
    }

    /// True when the agent is away for now: unreachable, or answering 503 (it
    /// is stopping, or not yet serving its cluster). A client following a commit
    /// through a reboot waits through these, within its limit.
    pub fn is_away(&self) -> bool {
        self.is_unreachable() || self.status() == Some(503)
    }

    /// The error class of an error answer.
    pub fn class(&self) -> Option<&str> {
        match self {
            Error::Http { body, .. } => Some(&body.error_class),
            _ => None,
        }
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}
