//! `qimgd`: the node agent. Glue around the `qimgd` library, one module per
//! subcommand.
//!
//! ```text
//! qimgd [--config F] serve                      serve the REST API (systemd/qimgd.service)
//! qimgd [--config F] user add NAME [--password-stdin]
//! qimgd [--config F] user passwd NAME [--password-stdin]
//! qimgd [--config F] user remove NAME
//! qimgd [--config F] user list
//! qimgd cluster create --spec cluster.toml --out DIR   the CA and each node's directory, once
//! qimgd [--config F] cluster member [--data-dir D]     this node's etcd member (voters)
//! qimgd [--config F] cluster voter                      exit 0 if it has one, 1 if not
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod cluster;
mod serve;
mod user;

#[derive(Parser)]
#[command(
    name = "qimgd",
    version,
    about = "The node agent: the upgrade REST API over HTTPS"
)]
struct Cli {
    /// The agent's configuration.
    #[arg(long, global = true, env = "QIMGD_CONFIG", default_value = qimgd::config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API until SIGTERM.
    Serve,
    /// Manage the users who may log in.
    #[command(subcommand)]
    User(user::Command),
    /// Make a cluster; run this node's etcd member.
    #[command(subcommand)]
    Cluster(cluster::Command),
}

fn config(path: &std::path::Path) -> Result<qimgd::config::Config> {
    qimgd::config::Config::load(path).with_context(|| format!("loading {}", path.display()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve => serve::run(config(&cli.config)?),
        Command::User(c) => user::run(&config(&cli.config)?, c),
        Command::Cluster(c) => cluster::run(|| config(&cli.config), c),
    }
}

/// Runs `f` to its end on a runtime of this thread (the subcommands that talk
/// to the cluster's etcd).
fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

fn main() -> ExitCode {
    qutil::cli::main("qimgd", || run(Cli::parse()))
}
