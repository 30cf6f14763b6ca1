//! `qimgd cluster create|reissue|secure-etcd|member|voter|rotate-token-key`:
//! making a cluster once, renewing its certificates and turning etcd's access
//! control on (where the CA key is), running
//! this node's etcd member (systemd/qimg-etcd.service), whether it has one (the
//! unit's `ExecCondition`, so one image enables the unit on every node), and
//! rolling the key login tokens are signed with (`qimgd::token_keys`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Command {
    /// Make the cluster from its spec: the CA and one directory per node.
    Create {
        /// The spec (`cluster.toml`).
        #[arg(long)]
        spec: PathBuf,
        /// Where to write (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Renew every node's certificate (397 days from now) from the CA that
    /// `create` wrote, where its key is: then copy each node's `node.crt`
    /// (and `node.key`) to it. The agent serves the new one from its next
    /// connection; etcd from its next handshake.
    Reissue {
        /// The directory `create` wrote (`ca/` and one directory per node).
        #[arg(long)]
        out: PathBuf,
        /// A new key for every node too (else each keeps its key).
        #[arg(long)]
        new_keys: bool,
    },
    /// Turn etcd's authentication on, once the members run: a user and role
    /// per node (it reads the cluster's keys and writes only its own
    /// registration and report and the keys every node may write), `root`
    /// for the operator. Run where the CA key is (a `root` certificate is made
    /// for the run, never written); run again after adding nodes.
    SecureEtcd {
        /// The directory `create` wrote (`ca/` and one directory per node).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run this node's etcd member (voting nodes only): replaces this process.
    Member {
        /// etcd's data directory.
        #[arg(long, default_value = "/var/lib/qimgd/etcd")]
        data_dir: PathBuf,
    },
    /// Whether this node runs an etcd member: exit 0 if it is a voting member of
    /// its cluster, 1 if not (no cluster, or not a voter), 2 on an error.
    Voter,
    /// Roll the key login tokens are signed with, on every node: the new key
    /// is accepted everywhere first, then signs; the old one is still
    /// accepted for one token lifetime (nobody is logged out), then refused.
    RotateTokenKey {
        /// Refuse the old key at once (it leaked): everyone logs in again.
        #[arg(long)]
        retire_now: bool,
        /// How long every node has to see the new key before it signs.
        #[arg(long, default_value_t = 5)]
        grace_secs: u64,
    },
}

pub fn run(config: impl FnOnce() -> Result<qimgd::config::Config>, c: Command) -> Result<ExitCode> {
    match c {
        Command::Create { spec, out } => {
            let s = qcluster::ClusterSpec::load(&spec)?;
            let dirs = qcluster::create(&s, &out)?;
            for (n, d) in s.nodes.iter().zip(&dirs) {
                qutil::cli::out(&format!(
                    "node {} ({}): {}\n",
                    n.id,
                    n.name,
                    d.dir.display()
                ))?;
            }
            eprintln!(
                "qimgd: the CA key is {}: keep it off the nodes; copy each node's directory to it and set `cluster =` in its qimgd.toml",
                out.join("ca/ca.key").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Reissue { out, new_keys } => {
            for r in qcluster::reissue(&out, new_keys)? {
                qutil::cli::out(&format!(
                    "node {} ({}): {} valid until {} UTC\n",
                    r.node.id,
                    r.node.name,
                    r.dir.cert().display(),
                    qapi::history::utc(r.expires.max(0) as u64 * 1000)
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SecureEtcd { out } => {
            let done = crate::block_on(async {
                Ok(qcluster::access::secure(&out, qimgd::cluster::ETCD_LIMIT).await?)
            })?;
            for u in done.users {
                qutil::cli::out(&format!(
                    "etcd user {u:?}: its own keys and the shared ones\n"
                ))?;
            }
            eprintln!(
                "qimgd: etcd's authentication is on: only root and the nodes' users, by certificate"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Voter => {
            let config = config()?;
            let Some(dir) = config.cluster else {
                qutil::cli::out("this node is in no cluster: no etcd member\n")?;
                return Ok(ExitCode::from(1));
            };
            let m = qcluster::NodeDir::new(&dir).load()?;
            let voter = m.spec.voters().iter().any(|v| v.id == m.node_id);
            qutil::cli::out(&format!(
                "node {} is {}a voting member of {}\n",
                m.node_id,
                if voter { "" } else { "not " },
                m.spec.name
            ))?;
            Ok(ExitCode::from(if voter { 0 } else { 1 }))
        }
        Command::RotateTokenKey {
            retire_now,
            grace_secs,
        } => rotate_token_key(&config()?, retire_now, grace_secs),
        Command::Member { data_dir } => {
            let config = config()?;
            let dir = config
                .cluster
                .context("this node is in no cluster: set `cluster =` in qimgd.toml, or put its directory in <state>/cluster")?;
            let d = qcluster::NodeDir::new(&dir);
            let m = d.load()?;
            let Some(args) = qcluster::etcd::member_args(&m, &d, &data_dir) else {
                bail!(
                    "node {} is not a voting member of {}",
                    m.node_id,
                    m.spec.name
                );
            };
            let e = std::process::Command::new("etcd").args(&args).exec();
            Err(e).context("starting etcd")
        }
    }
}

fn rotate_token_key(
    config: &qimgd::config::Config,
    retire_now: bool,
    grace_secs: u64,
) -> Result<ExitCode> {
    let dir = config
        .cluster
        .as_ref()
        .context("this node is in no cluster: its token key is its own file (replace it, then restart the agent)")?;
    let file_key =
        qimgd::token::TokenKey::bytes_or_create(&qcluster::NodeDir::new(dir).token_key())?;
    let retire_after = if retire_now {
        0
    } else {
        config.token_lifetime_secs
    };
    let done = crate::block_on(async {
        let store = qimgd::accounts::connect(dir).await?;
        Ok(qimgd::token_keys::rotate(
            &store,
            &file_key,
            retire_after,
            std::time::Duration::from_secs(grace_secs),
            |s| eprintln!("qimgd: {s}"),
        )
        .await?)
    })?;
    qutil::cli::out(&format!("token key {} signs new logins\n", done.id))?;
    for (id, at) in done.retiring {
        qutil::cli::out(&format!(
            "token key {id} is refused from {} UTC\n",
            qapi::history::utc(at * 1000)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
