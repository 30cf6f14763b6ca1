//! `qq`: node upgrades, spelled as in the upgrade reference and Qumulo's `qq`. A
//! client of the node agent's REST API (`qimgd`), or, with `--node`, the engine
//! itself on a simulated node (local mode: tests and the demo). One module per
//! subcommand, each with its `Args` and `run`.
//!
//! ```text
//! qq [--host H] [--port P] login -u USER [-p PASSWORD]        token kept for later commands
//! qq [--host H] [--port P] logout
//! qq [--host H] [--port P] version
//! qq [TARGET] upgrade_cluster --path P [--rolling [--num-nodes-to-reboot N]] [--no-monitor]
//! qq [TARGET] upgrade_cluster prepare --path P [--rolling] [--auto-commit] [--no-monitor]
//! qq [TARGET] upgrade_cluster commit [--no-monitor]
//! qq [TARGET] upgrade_cluster rollback [--rolling [--num-nodes-to-reboot N] | --all-at-once] [--no-monitor]
//! qq [TARGET] upgrade_cluster finalize
//! qq [TARGET] upgrade_status [--json]
//! qq [TARGET] upgrade_verify_image --path P
//! qq [TARGET] upgrade_blocked
//! qq [TARGET] upgrade_history [--json] [--limit N]            the cluster's upgrades
//! qq [TARGET] upgrade_assess --path P [--num-nodes-to-reboot N] [--json]   checks before an upgrade
//! qq [TARGET] upgrade_upload --file F [--name N] [--replace]   the bundle to the node
//! qq [--host H] reboot_status | reboot_pause | reboot_resume | nodes_list
//! qq --node DIR upgrade_mode --to BUNDLE [--from VERSION]
//! qq --node DIR boot_check                 (run at boot by qimg-boot-check.service)
//! qq sim_create --dir D --disk IMG --bundle B --key K --model M   (a simulated node)
//! qq --node DIR sim_poweroff
//! ```
//!
//! TARGET: `--node DIR` (local mode), or the agent: `--socket-path S`, `--host H
//! [--port P]`, else the agent's Unix socket when it exists, else `localhost`.
//!
//! Results (JSON) on stdout; progress and logs on stderr. Exit codes: 0 done, 1 a
//! negative answer (refused, blocked, failed or rolled back and recorded), 2 an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use qutil::cli::{EXIT_NO, print_json};
use upgrade::node::{DEFAULT_CONFIG, Node};
use upgrade::{Agent, CommitOutcome, Error, chain};

mod boot_check;
mod factory_install;
mod login;
mod reboot;
mod remote;
mod sim_create;
mod sim_poweroff;
mod upgrade_assess;
mod upgrade_blocked;
mod upgrade_cluster;
mod upgrade_history;
mod upgrade_mode;
mod upgrade_rollback;
mod upgrade_status;
mod upgrade_upload;
mod upgrade_verify_image;
mod version;

#[derive(Parser)]
#[command(name = "qq", version, about = "Node upgrades: prepare, commit, status")]
struct Cli {
    /// The node: a directory with node.toml (a simulated node) or a node.toml;
    /// default /etc/qimg/node.toml.
    #[arg(long, global = true, env = "QQ_NODE")]
    node: Option<PathBuf>,
    /// The agent's host (HTTPS).
    #[arg(long, global = true, env = "QQ_HOST", conflicts_with = "node")]
    host: Option<String>,
    /// The agent's port.
    #[arg(long, global = true, default_value_t = qapi::client::DEFAULT_PORT)]
    port: u16,
    /// The agent's Unix socket (plain HTTP; root is trusted without a token).
    #[arg(long, global = true, conflicts_with_all = ["node", "host"])]
    socket_path: Option<PathBuf>,
    /// Where the login token is kept (default: Qumulo's client's place,
    /// ~/.config/qumulo/credentials/HOST_PORT).
    #[arg(long, global = true)]
    credentials_store: Option<PathBuf>,
    /// Verify the agent's certificate against this CA (default: not verified, as
    /// with Qumulo's client; appliance certificates are self-signed).
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// Seconds each request may take.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// The agent's Unix socket on a node.
pub const AGENT_SOCKET: &str = "/run/qimgd/rest.sock";

#[derive(Subcommand)]
enum Command {
    /// Upgrade: prepare then commit, or one phase.
    #[command(name = "upgrade_cluster", args_conflicts_with_subcommands = true)]
    UpgradeCluster(upgrade_cluster::Args),
    /// The upgrade's state (JSON).
    #[command(name = "upgrade_status")]
    UpgradeStatus(upgrade_status::Args),
    /// What a prepare of a bundle would do, or why it is refused.
    #[command(name = "upgrade_verify_image")]
    UpgradeVerifyImage(upgrade_verify_image::Args),
    /// Send a bundle to the node's upgrade directory (verified as it arrives).
    #[command(name = "upgrade_upload")]
    UpgradeUpload(upgrade_upload::Args),
    /// Whether an upgrade may start now.
    #[command(name = "upgrade_blocked")]
    UpgradeBlocked,
    /// The checks every node and the cluster make before an upgrade; exit 1 when one fails.
    #[command(name = "upgrade_assess")]
    UpgradeAssess(upgrade_assess::Args),
    /// The cluster's upgrades, newest first: who, when, from -> to, each node, the result.
    #[command(name = "upgrade_history")]
    UpgradeHistory(upgrade_history::Args),
    /// Log in to the agent; the token is kept for later commands.
    Login(login::Args),
    /// Forget the kept token.
    Logout,
    /// The agent's version.
    Version,
    /// The cluster's reboot manager: state and count of a rolling reboot.
    #[command(name = "reboot_status")]
    RebootStatus,
    /// Pause a rolling reboot after the batch in progress.
    #[command(name = "reboot_pause")]
    RebootPause,
    /// Resume a paused rolling reboot (also one paused on an error).
    #[command(name = "reboot_resume")]
    RebootResume,
    /// Every node of the cluster and whether it is online.
    #[command(name = "nodes_list")]
    NodesList,
    /// Instant or platform, and why.
    #[command(name = "upgrade_mode")]
    UpgradeMode(upgrade_mode::Args),
    /// After a boot: finish a platform commit, or start the active container.
    #[command(name = "boot_check")]
    BootCheck,
    /// A node fresh from a disk image: install and start its release's container.
    #[command(name = "factory_install")]
    FactoryInstall(factory_install::Args),
    /// Power a simulated node off (stop its container).
    #[command(name = "sim_poweroff")]
    SimPoweroff,
    /// Create a simulated node from a disk image made by `imagebuild disk`.
    #[command(name = "sim_create")]
    SimCreate(sim_create::Args),
}

/// What every subcommand gets.
pub struct Ctx {
    node: Option<PathBuf>,
    quiet: bool,
    host: Option<String>,
    port: u16,
    socket_path: Option<PathBuf>,
    credentials_store: Option<PathBuf>,
    options: qapi::Options,
}

impl Ctx {
    /// The agent to talk to, or `None` in local mode (`--node`).
    fn remote(&self) -> Result<Option<remote::Remote>> {
        if self.node.is_some() {
            return Ok(None);
        }
        let socket = self.socket_path.clone().or_else(|| {
            let s = PathBuf::from(AGENT_SOCKET);
            (self.host.is_none() && s.exists()).then_some(s)
        });
        let (target, host) = match socket {
            Some(s) => (qapi::Target::Unix(s), "localhost".to_string()),
            None => {
                let host = self.host.clone().unwrap_or_else(|| "localhost".into());
                (
                    qapi::Target::Tcp {
                        host: host.clone(),
                        port: self.port,
                    },
                    host,
                )
            }
        };
        let store = self
            .credentials_store
            .clone()
            .unwrap_or_else(|| qapi::credentials::default_path(&host, self.port));
        Ok(Some(remote::Remote {
            target,
            store,
            options: self.options.clone(),
        }))
    }

    /// The agent, for commands that only it answers.
    fn require_remote(&self, what: &str) -> Result<remote::Remote> {
        self.remote()?.ok_or_else(|| {
            anyhow::anyhow!("`qq {what}` talks to the agent: drop --node and give --host")
        })
    }

    fn node(&self) -> Result<Node> {
        Ok(Node::load(
            self.node.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)),
        )?)
    }

    /// The node's agent, on its machine (simulated when its config says so).
    fn agent(&self) -> Result<Agent> {
        let node = self.node()?;
        let machine = upgrade::machine_for(&node);
        Ok(Agent::new(node, machine))
    }

    fn bars(&self) -> qutil::cli::Bars {
        qutil::cli::Bars::new("qq", self.quiet)
    }
}

fn print_status(agent: &Agent) -> Result<()> {
    print_json(&agent.status()?)
}

/// On a simulated node the hardware is ours to play: boots that are due happen now
/// (on a real node the machine reboots and `qq boot_check` runs from its unit).
fn play_boots(agent: &Agent, outcome: CommitOutcome) -> Result<CommitOutcome, Error> {
    match outcome {
        CommitOutcome::Rebooting { .. } => Ok(agent.run_boots()?.unwrap_or(outcome)),
        o => Ok(o),
    }
}

/// Prints the status and maps an outcome to an exit code: 0 committed (or a real
/// node rebooting into it), 1 rolled back or failed.
fn finish_outcome(agent: &Agent, outcome: Option<CommitOutcome>) -> Result<ExitCode> {
    print_status(agent)?;
    match outcome {
        Some(CommitOutcome::RolledBack { reason } | CommitOutcome::Failed { reason }) => {
            eprintln!("qq: {reason}");
            Ok(ExitCode::from(EXIT_NO))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Prints the error and the status: exit 1 for a negative answer or a failure the
/// state recorded, 2 otherwise.
fn finish_error(agent: &Agent, e: &Error) -> Result<ExitCode> {
    let recorded = agent.state().is_ok_and(|s| s.failure.is_some());
    let negative = e.is_negative() || recorded;
    if negative {
        eprintln!("qq: {}", chain(e));
    } else {
        qutil::cli::error("qq", &chain(e));
    }
    let _ = print_status(agent);
    Ok(ExitCode::from(if negative {
        EXIT_NO
    } else {
        qutil::cli::EXIT_ERROR
    }))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = Ctx {
        node: cli.node,
        quiet: cli.quiet,
        host: cli.host,
        port: cli.port,
        socket_path: cli.socket_path,
        credentials_store: cli.credentials_store,
        options: qapi::Options {
            timeout: std::time::Duration::from_secs(cli.timeout.max(1)),
            ca: cli.ca_cert,
            root_port: true,
            identity: None,
        },
    };
    match cli.command {
        Command::UpgradeCluster(a) => upgrade_cluster::run(&ctx, a),
        Command::UpgradeStatus(a) => upgrade_status::run(&ctx, a),
        Command::UpgradeVerifyImage(a) => upgrade_verify_image::run(&ctx, a),
        Command::UpgradeUpload(a) => upgrade_upload::run(&ctx, a),
        Command::UpgradeBlocked => upgrade_blocked::run(&ctx),
        Command::UpgradeHistory(a) => upgrade_history::run(&ctx, a),
        Command::UpgradeAssess(a) => upgrade_assess::run(&ctx, a),
        Command::Login(a) => login::run(&ctx, a),
        Command::Logout => login::logout(&ctx),
        Command::Version => version::run(&ctx),
        Command::RebootStatus => reboot::status(&ctx),
        Command::RebootPause => reboot::pause(&ctx, true),
        Command::RebootResume => reboot::pause(&ctx, false),
        Command::NodesList => reboot::nodes(&ctx),
        Command::UpgradeMode(a) => upgrade_mode::run(&ctx, a),
        Command::BootCheck => boot_check::run(&ctx),
        Command::FactoryInstall(a) => factory_install::run(&ctx, a),
        Command::SimPoweroff => sim_poweroff::run(&ctx),
        Command::SimCreate(a) => sim_create::run(&ctx, a),
    }
}

fn main() -> ExitCode {
    qutil::cli::main("qq", || run(Cli::parse()))
}
