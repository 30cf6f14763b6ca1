//! `qcloud`: publish a cloud disk image as an AMI.
//!
//! ```text
//! qcloud publish --image disk.raw | --bundle X.qimg --pubkey K
//!                --name NAME --regions us-east-1,eu-west-1 [--launch-permission ID|public]...
//!                [--ssm-prefix TEMPLATE] [--output ami.json] [--json]
//!                [--endpoint-url URL] [--profile P] [--concurrency 64] [--tpm] [--imds-v2]
//! ```
//!
//! The first region is where the image is uploaded and registered; the others get
//! copies. Credentials: the standard AWS chain (environment, profiles, SSO-less
//! config files, container and instance roles). Exit codes: 0 published everywhere,
//! 1 published but some regions failed (the output file says which), 2 an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cloud::AwsOptions;
use cloud::ami::Permission;
use cloud::publish::{PublishOptions, Published, identity, publish};

mod cmd;

#[derive(Parser)]
#[command(name = "qcloud", version, about = "Publish cloud disk images as AMIs")]
struct Cli {
    /// No progress bar.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload, register, copy, share and record an AMI.
    Publish(Box<cmd::publish::Args>),
    /// Read and hash an image as an upload would, without uploading (JSON).
    Scan(cmd::scan::Args),
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Publish(a) => cmd::publish::run(&Ctx { quiet: cli.quiet }, *a).await,
        Command::Scan(a) => cmd::scan::run(a).await,
    }
}

/// What every subcommand gets.
pub struct Ctx {
    quiet: bool,
}

fn main() -> ExitCode {
    qutil::cli::main("qcloud", || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(run(Cli::parse()))
    })
}
