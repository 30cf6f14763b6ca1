//! `qbootctl inspect-uki FILE`: what a Unified Kernel Image contains.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The UKI.
    file: PathBuf,
}

pub fn run(cli: &Cli, a: &Args) -> Result<ExitCode> {
    let file = &a.file;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let info = bootctl::uki::inspect(&bytes).with_context(|| file.display().to_string())?;
    if cli.json {
        out(&(serde_json::to_string_pretty(&info)? + "\n"))?;
    } else {
        out(&info.render())?;
    }
    Ok(ExitCode::SUCCESS)
}
