//! `qq factory_install --path BUNDLE`: on a node fresh from an `imagebuild disk`
//! image, installs and starts the container of the release it booted, from that
//! release's bundle (the installer's last step; refused once a container runs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle the node's disk image was made from.
    #[arg(long)]
    path: PathBuf,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let agent = ctx.agent()?;
    let bars = ctx.bars();
    let r = agent.install_factory(&a.path, &bars);
    drop(bars);
    match r {
        Ok(v) => {
            qutil::cli::out(&format!("installed {v}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => crate::finish_error(&agent, &e),
    }
}
