//! `qq`: node upgrades, spelled as in the upgrade reference. Glue around
//! [`upgrade::Agent`]: one module per subcommand, each with its `Args` and `run`.
//!
//! ```text
//! qq [--node DIR] upgrade_cluster --path P [--rolling] [--no-monitor]     prepare, then commit
//! qq [--node DIR] upgrade_cluster prepare --path P [--rolling] [--no-monitor]
//! qq [--node DIR] upgrade_cluster commit [--no-monitor]
//! qq [--node DIR] upgrade_status
//! qq [--node DIR] upgrade_mode --to BUNDLE [--from VERSION]
//! qq [--node DIR] boot_check                 (run at boot by qimg-boot-check.service)
//! qq sim_create --dir D --disk IMG --bundle B --key K --model M   (a simulated node)
//! qq [--node DIR] sim_poweroff
//! ```
//!
//! Results (JSON) on stdout; progress and logs on stderr. Exit codes: 0 done, 1 a
//! negative answer (refused, blocked, failed or rolled back and recorded), 2 an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use qutil::cli::{EXIT_NO, print_json};
use upgrade::node::{DEFAULT_CONFIG, Node};
use upgrade::{Agent, CommitOutcome, Error, chain, sim};

mod boot_check;
mod sim_create;
mod sim_poweroff;
mod upgrade_cluster;
mod upgrade_mode;
mod upgrade_status;

#[derive(Parser)]
#[command(name = "qq", version, about = "Node upgrades: prepare, commit, status")]
struct Cli {
    /// The node: a directory with node.toml (a simulated node) or a node.toml;
    /// default /etc/qimg/node.toml.
    #[arg(long, global = true, env = "QQ_NODE")]
    node: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upgrade: prepare then commit, or one phase.
    #[command(name = "upgrade_cluster", args_conflicts_with_subcommands = true)]
    UpgradeCluster(upgrade_cluster::Args),
    /// The upgrade's state (JSON).
    #[command(name = "upgrade_status")]
    UpgradeStatus,
    /// Instant or platform, and why.
    #[command(name = "upgrade_mode")]
    UpgradeMode(upgrade_mode::Args),
    /// After a boot: finish a platform commit, or start the active container.
    #[command(name = "boot_check")]
    BootCheck,
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
}

impl Ctx {
    fn node(&self) -> Result<Node> {
        Ok(Node::load(
            self.node.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)),
        )?)
    }

    /// The node's agent, on its machine (simulated when its config says so).
    fn agent(&self) -> Result<Agent> {
        let node = self.node()?;
        let machine = sim::machine_for(&node);
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
        CommitOutcome::Rebooting { .. } if agent.node().config.simulated => {
            Ok(sim::run_boots(agent)?.unwrap_or(outcome))
        }
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
    };
    match cli.command {
        Command::UpgradeCluster(a) => upgrade_cluster::run(&ctx, a),
        Command::UpgradeStatus => upgrade_status::run(&ctx),
        Command::UpgradeMode(a) => upgrade_mode::run(&ctx, a),
        Command::BootCheck => boot_check::run(&ctx),
        Command::SimPoweroff => sim_poweroff::run(&ctx),
        Command::SimCreate(a) => sim_create::run(&ctx, a),
    }
}

fn main() -> ExitCode {
    qutil::cli::main("qq", || run(Cli::parse()))
}
