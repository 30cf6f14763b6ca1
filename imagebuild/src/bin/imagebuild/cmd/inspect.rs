//! `imagebuild inspect`: Show a bundle's manifest, components and signatures (nothing is verified).

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle.
    file: PathBuf,
    /// Machine-readable output (schema imagebuild.inspect/1).
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let _ = ctx;
    let Args {
        file,
        json: as_json,
    } = a;

    let r = report::inspect(&file)?;
    if as_json {
        json(&r)?;
    } else {
        out(&r.render())?;
    }

    Ok(ExitCode::SUCCESS)
}
