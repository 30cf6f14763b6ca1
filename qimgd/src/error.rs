//! The agent library's one error type (the REST errors are in [`crate::api::error`]).
//! Messages carry the context; the cause is only in `#[source]`.

use std::path::PathBuf;

/// Errors of the agent outside a request: configuration, users, keys, TLS, binding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("config {path}: {problem}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The event webhook's URL cannot be used.
    #[error("the event webhook {url:?}: {problem}")]
    Webhook {
        /// The URL given.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The configuration cannot be parsed.
    #[error("config {path} cannot be parsed")]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
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
    /// The users document is damaged.
    #[error("the users in {at} are damaged: {problem}")]
    UsersDamaged {
        /// Where they are (the file, or the cluster's etcd key).
        at: String,
        /// What is wrong.
        problem: String,
    },
    /// `user add` of a user that exists.
    #[error("user {0} already exists")]
    UserExists(String),
    /// `user passwd|remove` of a user that does not exist.
    #[error("no user {0}")]
    NoSuchUser(String),
    /// A user name or password that may not be used.
    #[error("{0}")]
    BadCredentials(&'static str),
    /// Password hashing failed.
    #[error("hashing a password: {0}")]
    Hash(String),
    /// A key or certificate file is unusable.
    #[error("{what} {path}: {problem}")]
    Key {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// TLS could not be set up.
    #[error("TLS setup")]
    Tls(#[source] rustls::Error),
    /// A listen address could not be bound.
    #[error("listening on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration does not fit the node it runs on.
    #[error("the configuration does not fit this node: {problem}")]
    NodeConfig {
        /// What does not fit, naming the setting.
        problem: String,
    },
    /// The restriper probe failed or gave no usable answer.
    #[error("the restriper probe {program}: {problem}")]
    Probe {
        /// The probe's program.
        program: String,
        /// What went wrong.
        problem: String,
    },
    /// The upgrade engine failed.
    #[error("upgrade engine")]
    Engine(#[source] upgrade::Error),
    /// A document the cluster shares (its users, its token keys) could not be
    /// written: other writers kept changing it.
    #[error("the cluster's {what} changed under {tries} writes in a row; try again")]
    Contended {
        /// Which document.
        what: &'static str,
        /// Writes tried.
        tries: u32,
    },
    /// The cluster's token keys are unusable (`crate::token_keys`).
    #[error("the cluster's token keys: {problem}")]
    TokenKeys {
        /// What is wrong.
        problem: String,
    },
    /// The cluster's files or etcd failed.
    #[error("cluster")]
    Cluster(#[source] qcluster::Error),
}

impl Error {
    /// A stable identifier of the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config { .. }
            | Error::ConfigSyntax { .. }
            | Error::NodeConfig { .. }
            | Error::Webhook { .. } => "config",
            Error::Io { .. } => "io",
            Error::UsersDamaged { .. } => "users-damaged",
            Error::Contended { .. } => "contended",
            Error::TokenKeys { .. } => "token-keys",
            Error::UserExists(_) => "user-exists",
            Error::NoSuchUser(_) => "no-such-user",
            Error::BadCredentials(_) => "bad-credentials",
            Error::Hash(_) => "hash",
            Error::Key { .. } => "key",
            Error::Tls(_) => "tls",
            Error::Bind { .. } => "bind",
            Error::Probe { .. } => "probe",
            Error::Engine(_) => "engine",
            Error::Cluster(_) => "cluster",
        }
    }
}

/// `map_err` helper for file operations.
pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}
