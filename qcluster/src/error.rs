//! The cluster library's one error type.

use std::path::PathBuf;

/// Errors of the cluster: spec, certificates, etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `cluster.toml` is invalid.
    #[error("cluster spec {path}: {problem}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be made.
    #[error("making the certificate of {subject}")]
    Cert {
        /// Whose.
        subject: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate or key that cannot be used.
    #[error("{subject}: {problem}")]
    BadCert {
        /// Whose.
        subject: String,
        /// What is wrong.
        problem: String,
    },
    /// `cluster create` into a directory that holds a cluster already.
    #[error("{0} is not empty: a cluster is created once (its CA would be replaced)")]
    Exists(PathBuf),
    /// etcd refused or could not be reached.
    #[error("etcd: {op}")]
    Etcd {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer in time.
    #[error("etcd: {op}: no answer within {secs} s")]
    Timeout {
        /// What was being done.
        op: String,
        /// The limit.
        secs: u64,
    },
    /// etcd ended a watch (e.g. its start revision was compacted away).
    #[error("etcd cancelled the watch of {prefix}: {reason}")]
    WatchCancelled {
        /// The watched prefix.
        prefix: String,
        /// etcd's reason.
        reason: String,
    },
    /// A write under, or a revocation of, a lease that is gone (a node alone's
    /// store; etcd says so in its own words, [`Error::Etcd`]).
    #[error("{op}: lease {lease:x} is gone")]
    NoLease {
        /// What was being done.
        op: String,
        /// The lease.
        lease: i64,
    },
    /// What the store holds cannot be used (a key in etcd, or a node alone's
    /// store file).
    #[error("the cluster's state at {key}: {problem}")]
    Damaged {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl Error {
    /// A stable identifier of the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Spec { .. } => "spec",
            Error::Io { .. } => "io",
            Error::Cert { .. } | Error::BadCert { .. } => "cert",
            Error::Exists(_) => "exists",
            Error::Etcd { .. } => "etcd",
            Error::Timeout { .. } => "timeout",
            Error::WatchCancelled { .. } => "watch_cancelled",
            Error::NoLease { .. } => "no_lease",
            Error::Damaged { .. } => "damaged",
        }
    }
}

pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}
