//! `imagebuild keygen`: Generate a signing key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// Path prefix of the two files.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let _ = ctx;
    let Args { out: prefix } = a;

    let files = keys::generate(&prefix)?;
    eprintln!(
        "imagebuild: key {} written: {} (secret, mode 0600) and {}",
        files.id,
        files.secret.display(),
        files.public.display()
    );
    out(&format!("{}\n", files.id))?;

    Ok(ExitCode::SUCCESS)
}
