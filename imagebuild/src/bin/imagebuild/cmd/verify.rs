//! `imagebuild verify`: Verify a bundle's signature and every component; exit 1 if anything fails.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle.
    file: PathBuf,
    /// Trusted public key; repeat for several.
    #[arg(long, required = true)]
    pubkey: Vec<PathBuf>,
    /// Machine-readable output (schema imagebuild.verify/1).
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let Ctx { progress, .. } = ctx;
    let Args {
        file,
        pubkey,
        json: as_json,
    } = a;

    let keys = pubkey
        .iter()
        .map(|k| keys::load_public(k))
        .collect::<Result<Vec<_>, _>>()?;
    let r = report::verify(&file, &TrustedKeys::new(keys), &progress)?;
    if as_json {
        json(&r)?;
    } else {
        out(&r.render())?;
    }
    if !r.ok {
        return Ok(ExitCode::from(1));
    }

    Ok(ExitCode::SUCCESS)
}
