//! `qimgd`, the node agent: the upgrade engine ([`upgrade::Agent`]) behind an
//! HTTPS REST API shaped as Qumulo's, so Qumulo's own `qq` client (and ours, and
//! the Web UI) drive a node through it.
//!
//! - [`config`]: the configuration file, `qimgd.toml`.
//! - [`cluster`]: this node's membership and its etcd connection; [`member`]: the
//!   loop that carries out the cluster's plan on this node; [`coordinator`]: the
//!   loop of the elected node that moves the plan on from the nodes' reports;
//!   [`restriper`]: the data-safety gate's source (a probe, or the simulated one);
//!   [`events`]: the upgrade's events, told to the journal.
//! - [`daemon`]: start-up (certificate, token key, identity), serving, shutdown;
//!   [`power`]: the reboots of a machine whose power button is software (a
//!   simulated node, set up by `[sim]`).
//! - [`server`]: TLS and Unix-socket listeners and connections; [`peer`]: who
//!   the peer is (local root or not).
//! - [`api`]: routes, authentication, handlers (the upgrade's bodies shaped
//!   from the plan, one flow for one node and many); [`api::error`] the JSON
//!   errors with stable classes; [`api::body`] strict JSON bodies.
//! - [`jobs`]: the one engine operation at a time on a blocking thread, and its
//!   never-decreasing progress.
//! - [`users`], [`token`], [`throttle`]: Argon2id password hashes, HMAC tokens,
//!   failed logins slowed per address; [`token_keys`]: the keys tokens are
//!   signed with and their rotation; [`accounts`]: where the users live (the
//!   users file, or the cluster's etcd). [`tls`]: certificates. [`identity`]: node
//!   and cluster ids. [`paths`]: `image_path` resolved inside the upgrade directory.
#![deny(missing_docs)]

pub mod accounts;
pub mod admission;
pub mod api;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod daemon;
pub mod error;
pub mod events;
pub mod fetch;
pub mod identity;
pub mod images;
pub mod jobs;
pub mod member;
pub mod paths;
pub mod peer;
pub mod power;
pub mod restriper;
pub mod server;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod token_keys;
pub mod users;

pub use error::Error;

/// The agent's log: one line on stderr (the journal, under systemd). The only
/// place the library writes; results go to clients. Outside the journal (which
/// stamps lines itself) each line starts with the UTC time of day to the
/// millisecond, so the logs of a cluster's nodes can be read as one timeline.
pub fn log(line: &str) {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some()) {
        eprintln!("qimgd: {line}");
    } else {
        eprintln!("{} qimgd: {line}", time_of_day());
    }
}

/// `HH:MM:SS.mmm`, UTC.
fn time_of_day() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}
