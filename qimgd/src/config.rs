//! `qimgd.toml`: where the agent listens, which node it serves, where its users,
//! keys and certificate live, and where operators put upgrade files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The agent's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTPS listen addresses (default `[::]:8000`, both IPv6 and IPv4: Qumulo's
    /// REST port).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// A Unix socket serving plain HTTP to local processes (Qumulo's client uses one
    /// with `--socket-path`); peers with uid 0 are trusted without a token.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The node's `node.toml` (the upgrade engine's node config).
    pub node: PathBuf,
    /// The agent's own state: generated certificate, token key, node identity.
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// The users file (`qimgd user add` writes it).
    #[serde(default = "default_users")]
    pub users: PathBuf,
    /// The directory `image_path`s are resolved in (the cluster's file namespace
    /// for upgrade files).
    pub upgrade_dir: PathBuf,
    /// TLS certificate chain (PEM); with `tls_key`. Without both, a self-signed
    /// certificate is generated on first start and kept in `state`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// How long a login token is valid.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u64,
    /// Trust local root without a token: connections from a loopback address and a
    /// privileged source port (900–1023, only root can bind them), as Qumulo's
    /// client makes when run as root against localhost, and Unix-socket peers with
    /// uid 0.
    #[serde(default = "yes")]
    pub trust_local_root: bool,
    /// This node's id in the cluster.
    #[serde(default = "default_node_id")]
    pub node_id: u32,
    /// This node's name (default: the host name).
    #[serde(default)]
    pub node_name: Option<String>,
    /// This node's cluster directory (made by `qimgd cluster create`): the spec,
    /// its certificate, the shared token key. Unset, it is [`JOINED`] under
    /// `state` when that holds a `cluster.json` (an appliance's root is read-only:
    /// a node joins by receiving its directory on the data partition); without
    /// either the node is a cluster of one.
    #[serde(default)]
    pub cluster: Option<PathBuf>,
    /// The TTL of this node's registration in the cluster.
    #[serde(default = "default_lease")]
    pub cluster_lease_secs: u64,
    /// How long a batch of a rolling reboot may take to come back healthy before
    /// the reboots pause with `PAUSED_DUE_TO_ERROR`.
    #[serde(default = "default_batch_limit")]
    pub batch_limit_secs: u64,
    /// The storage software's restriper, asked by the data-safety gate: a command
    /// (argv) printing Qumulo's restriper status JSON. A real node in a cluster
    /// needs it for rolling reboots (see [`crate::restriper::Source`]); on a
    /// simulated node without it the simulated restriper answers.
    #[serde(default)]
    pub restriper_probe: Option<Vec<String>>,
    /// How long the data-safety gate may wait for the restriper before the
    /// reboots pause with `PAUSED_DUE_TO_ERROR`.
    #[serde(default = "default_data_safety_limit")]
    pub data_safety_limit_secs: u64,
    /// The largest bundle `PUT /v1/qimg/images/{name}` takes, in MiB.
    #[serde(default = "default_upload_limit")]
    pub upload_limit_mib: u64,
    /// How long an upload's client may send nothing before the upload is
    /// dropped (408), in seconds.
    #[serde(default = "default_upload_idle")]
    pub upload_idle_secs: u64,
    /// The rate at which this node serves bundles to the cluster's other nodes,
    /// every stream together, in MiB/s (0: not limited).
    #[serde(default = "default_peer_serve")]
    pub peer_serve_mib_per_s: u64,
    /// The journal's native socket: the upgrade events (`crate::events`) go
    /// there with their fields (`MESSAGE_ID`, `QIMG_*`); without a journal, to
    /// the log.
    #[serde(default = "default_journal_socket")]
    pub journal_socket: PathBuf,
    /// An `https://` URL each upgrade event is also posted to, as JSON (schema
    /// `qimg.upgrade_event/1`), by the node that coordinates: a few tries, never
    /// holding the upgrade up.
    #[serde(default)]
    pub event_webhook: Option<String>,
    /// The CA (PEM) the webhook's certificate must chain to; without it the
    /// certificate is not verified (as Qumulo's client does with nodes').
    #[serde(default)]
    pub event_webhook_ca: Option<PathBuf>,
    /// The simulator's settings (`[sim]`): only for a node whose `node.toml` says
    /// `simulated`; refused on a real node.
    #[serde(default)]
    pub sim: Option<Sim>,
}

/// `[sim]`: how a simulated node's hardware behaves. Everything simulated is
/// here, in one table a real node never has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sim {
    /// How long its shutdown takes once a reboot is asked for (the API still
    /// answers, `REBOOTING`, as while systemd stops a node's units).
    #[serde(default = "default_sim_shutdown_ms")]
    pub shutdown_ms: u64,
    /// How long its reboot keeps the API away.
    #[serde(default = "default_sim_boot_ms")]
    pub boot_ms: u64,
    /// Its reboot powers the agent off (the process ends; whoever plays the
    /// hardware starts it again, and the start runs the boot), instead of the
    /// agent playing the reboot itself.
    #[serde(default)]
    pub reboot_exits: bool,
    /// Its restriper: how long the data-safety gate holds the next batch back,
    /// per node of the batch that rebooted (used without `restriper_probe`).
    #[serde(default = "default_sim_restripe_ms")]
    pub restripe_ms: u64,
}

impl Default for Sim {
    fn default() -> Sim {
        Sim {
            shutdown_ms: default_sim_shutdown_ms(),
            boot_ms: default_sim_boot_ms(),
            reboot_exits: false,
            restripe_ms: default_sim_restripe_ms(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    // Both families on one socket: nobody else can take the IPv6 port (where
    // `localhost` may resolve first for other clients) while the agent runs.
    vec![SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 8000))]
}
fn default_state() -> PathBuf {
    "/var/lib/qimgd".into()
}
fn default_users() -> PathBuf {
    "/etc/qimgd/users.json".into()
}
fn default_token_lifetime() -> u64 {
    10 * 3600
}
fn yes() -> bool {
    true
}
fn default_node_id() -> u32 {
    1
}
fn default_batch_limit() -> u64 {
    1800
}
fn default_data_safety_limit() -> u64 {
    6 * 3600
}
fn default_upload_limit() -> u64 {
    16 * 1024
}
fn default_upload_idle() -> u64 {
    30
}
fn default_peer_serve() -> u64 {
    200
}
fn default_journal_socket() -> PathBuf {
    "/run/systemd/journal/socket".into()
}
fn default_lease() -> u64 {
    4
}
fn default_sim_shutdown_ms() -> u64 {
    2000
}
fn default_sim_boot_ms() -> u64 {
    500
}
fn default_sim_restripe_ms() -> u64 {
    2000
}

/// The default config file.
pub const DEFAULT_PATH: &str = "/etc/qimgd/qimgd.toml";

/// Where, under `state`, a node keeps the cluster directory it was given when
/// `cluster` is not set.
pub const JOINED: &str = "cluster";

impl Config {
    /// The simulator's settings for a node (`simulated`: its `node.toml` says
    /// so): the `[sim]` table or its defaults on a simulated node, none on a
    /// real one, where a `[sim]` table is refused.
    pub fn sim_of(&self, simulated: bool) -> Result<Option<Sim>, Error> {
        match (&self.sim, simulated) {
            (Some(s), true) => Ok(Some(s.clone())),
            (None, true) => Ok(Some(Sim::default())),
            (None, false) => Ok(None),
            (Some(_), false) => Err(Error::NodeConfig {
                problem: "the [sim] table applies to simulated nodes only (this node's node.toml is not simulated): remove it; a real node's rolling reboots need restriper_probe".into(),
            }),
        }
    }

    /// Loads `path`; relative paths inside are relative to its directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "reading",
            path: path.to_owned(),
            source,
        })?;
        let mut c: Config = toml::from_str(&text).map_err(|source| Error::ConfigSyntax {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.node,
            &mut c.state,
            &mut c.users,
            &mut c.upgrade_dir,
            &mut c.journal_socket,
        ] {
            *p = base.join(&*p);
        }
        for p in [
            &mut c.socket,
            &mut c.tls_cert,
            &mut c.tls_key,
            &mut c.cluster,
            &mut c.event_webhook_ca,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        if c.cluster.is_none() {
            let joined = c.state.join(JOINED);
            if joined.join("cluster.json").is_file() {
                c.cluster = Some(joined);
            }
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(Error::Config {
                path: path.to_owned(),
                problem: "tls_cert and tls_key go together".into(),
            });
        }
        if c.listen.is_empty() && c.socket.is_none() {
            return Err(Error::Config {
                path: path.to_owned(),
                problem: "nothing to listen on: set listen or socket".into(),
            });
        }
        if let Some(url) = &c.event_webhook
            && let Err(why) = crate::events::WebhookUrl::parse(url)
        {
            return Err(Error::Config {
                path: path.to_owned(),
                problem: format!("event_webhook: {why}"),
            });
        }
        if c.token_lifetime_secs == 0 {
            return Err(Error::Config {
                path: path.to_owned(),
                problem: "token_lifetime_secs must be positive".into(),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_and_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qimgd.toml");
        std::fs::write(&p, "node = \"node\"\nupgrade_dir = \"/up\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.node, d.path().join("node"));
        assert_eq!(c.upgrade_dir, PathBuf::from("/up"));
        assert_eq!(c.listen, default_listen());
        assert!(c.trust_local_root);
        assert_eq!(c.token_lifetime_secs, 36000);
    }

    #[test]
    fn the_shipped_example_is_valid_and_the_unit_uses_its_path() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let c = Config::load(&root.join("systemd/qimgd.toml")).unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.socket.as_deref(), Some(Path::new("/run/qimgd/rest.sock")));
        let unit = std::fs::read_to_string(root.join("systemd/qimgd.service")).unwrap();
        assert!(
            unit.contains(&format!("--config {DEFAULT_PATH} serve")),
            "{unit}"
        );
        assert!(
            unit.contains("RuntimeDirectory=qimgd"),
            "the socket's directory"
        );
    }

    #[test]
    fn a_webhook_that_is_not_https_refuses_the_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qimgd.toml");
        let base = "node = \"n\"\nupgrade_dir = \"u\"\n";
        std::fs::write(&p, format!("{base}event_webhook = \"http://h/x\"\n")).unwrap();
        let e = Config::load(&p).unwrap_err();
        assert_eq!(e.code(), "config");
        assert!(e.to_string().contains("event_webhook"), "{e}");
        std::fs::write(
            &p,
            format!("{base}event_webhook = \"https://h/x\"\nevent_webhook_ca = \"ca.crt\"\n"),
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(
            c.event_webhook_ca,
            Some(d.path().join("ca.crt")),
            "relative to the file"
        );
    }

    #[test]
    fn a_cluster_directory_under_state_joins_the_node() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qimgd.toml");
        std::fs::write(&p, "node = \"n\"\nupgrade_dir = \"u\"\nstate = \"s\"\n").unwrap();
        assert_eq!(
            Config::load(&p).unwrap().cluster,
            None,
            "no directory: alone"
        );
        let joined = d.path().join("s").join(JOINED);
        std::fs::create_dir_all(&joined).unwrap();
        assert_eq!(
            Config::load(&p).unwrap().cluster,
            None,
            "an empty directory is not a cluster"
        );
        std::fs::write(joined.join("cluster.json"), "{}").unwrap();
        assert_eq!(Config::load(&p).unwrap().cluster, Some(joined.clone()));
        std::fs::write(
            &p,
            "node = \"n\"\nupgrade_dir = \"u\"\nstate = \"s\"\ncluster = \"/c\"\n",
        )
        .unwrap();
        assert_eq!(
            Config::load(&p).unwrap().cluster,
            Some(PathBuf::from("/c")),
            "the setting wins"
        );
    }

    #[test]
    fn refuses_unknown_fields_and_half_tls() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qimgd.toml");
        std::fs::write(&p, "node = \"n\"\nupgrade_dir = \"u\"\nport = 1\n").unwrap();
        let e = Config::load(&p).unwrap_err();
        assert_eq!(e.code(), "config");
        std::fs::write(&p, "node = \"n\"\nupgrade_dir = \"u\"\ntls_cert = \"c\"\n").unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
    }

    #[test]
    fn everything_simulated_is_in_the_sim_table() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qimgd.toml");
        let base = "node = \"n\"\nupgrade_dir = \"u\"\n";
        std::fs::write(
            &p,
            format!("{base}[sim]\nrestripe_ms = 300\nreboot_exits = true\n"),
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(
            c.sim,
            Some(Sim {
                restripe_ms: 300,
                reboot_exits: true,
                ..Sim::default()
            })
        );
        // The flat keys of before, and unknown keys in the table, are refused.
        for bad in ["sim_restripe_ms = 300\n", "[sim]\nrestripe = 300\n"] {
            std::fs::write(&p, format!("{base}{bad}")).unwrap();
            let e = Config::load(&p).unwrap_err();
            assert_eq!(e.code(), "config", "{bad}: {e}");
        }
        // A simulated node without the table gets its defaults; a real one none.
        std::fs::write(&p, base).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.sim_of(true).unwrap(), Some(Sim::default()));
        assert_eq!(c.sim_of(false).unwrap(), None);
    }
}
