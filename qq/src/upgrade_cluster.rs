//! `qq upgrade_cluster [prepare|commit]`: prepare then commit, or one phase; with
//! `--no-monitor` the work goes on in a detached process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use upgrade::{Cancel, PrepareRequest};

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    phase: Option<Phase>,
    /// The .qimg bundle.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Reboot nodes one batch at a time.
    #[arg(long)]
    rolling: bool,
    #[command(flatten)]
    run: Monitor,
}

/// How the work runs: monitored here, or in a detached process.
#[derive(clap::Args)]
struct Monitor {
    /// Return at once; the work goes on in the background and cannot be cancelled.
    #[arg(long)]
    no_monitor: bool,
    #[arg(long, hide = true)]
    detached: bool,
}

#[derive(Subcommand)]
enum Phase {
    /// Verify the bundle and stage everything; no client impact.
    Prepare {
        /// The .qimg bundle.
        #[arg(long)]
        path: PathBuf,
        /// Reboot nodes one batch at a time at commit.
        #[arg(long)]
        rolling: bool,
        #[command(flatten)]
        run: Monitor,
    },
    /// Swap the container or reboot into the new slot.
    Commit {
        #[command(flatten)]
        run: Monitor,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let agent = ctx.agent()?;
    let (
        request,
        Monitor {
            no_monitor,
            detached,
        },
    ) = match a.phase {
        None => {
            let path = a.path.context("--path is required without a subcommand")?;
            let mut r = PrepareRequest::new(path);
            r.rolling = a.rolling;
            r.auto_commit = true;
            (Some(r), a.run)
        }
        Some(Phase::Prepare { path, rolling, run }) => {
            let mut r = PrepareRequest::new(path);
            r.rolling = rolling;
            (Some(r), run)
        }
        Some(Phase::Commit { run }) => (None, run),
    };
    if no_monitor {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.retain(|a| a != "--no-monitor");
        args.push("--detached".into());
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(&args);
        let (child, log) = agent.detach(cmd)?;
        eprintln!(
            "qq: running in the background (pid {}, log {}); `qq upgrade_status` follows it; it cannot be cancelled",
            child.id(),
            log.display()
        );
        crate::print_status(&agent)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = Cancel::new();
    if !detached {
        let c = cancel.clone();
        let committing = request.is_none();
        ctrlc::set_handler(move || {
            if committing {
                eprintln!("qq: a commit cannot be cancelled; it continues");
            } else {
                eprintln!("qq: cancelling: undoing the prepare");
                c.cancel();
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let bars = ctx.bars();
    let result = match &request {
        Some(r) => agent.upgrade(r, &bars, &cancel),
        None => agent.commit(&bars).map(Some),
    };
    let result = match result {
        Ok(Some(o)) => crate::play_boots(&agent, o).map(Some),
        other => other,
    };
    drop(bars);
    match result {
        Ok(o) => crate::finish_outcome(&agent, o),
        Err(e) => crate::finish_error(&agent, &e),
    }
}
