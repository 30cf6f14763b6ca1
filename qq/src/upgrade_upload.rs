//! `qq upgrade_upload --file F [--name N] [--replace]`: sends a bundle to the
//! node's upgrade directory (`PUT /v1/qimg/images/{name}`), with a progress bar
//! on stderr. The agent verifies it whole as it arrives and names it only then;
//! the answer (JSON on stdout) names the path to prepare and the digest a
//! cluster's plan pins. Exit 1 when the agent refuses it (it exists, too large,
//! not a bundle it accepts).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use qapi::types::ImageInfo;
use qutil::cli::print_json;
use qutil::progress::Progress;

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle to send.
    #[arg(long)]
    file: PathBuf,
    /// Its name in the upgrade directory (default: the file's name).
    #[arg(long)]
    name: Option<String>,
    /// Replace a bundle of that name.
    #[arg(long)]
    replace: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let remote = ctx.require_remote("upgrade_upload")?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| format!("{}: no file name to upload it as", a.file.display()))?,
    };
    let mut file =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", a.file.display()))?
        .len();
    let mut c = remote.client()?;
    let path = format!(
        "/v1/qimg/images/{name}{}",
        if a.replace { "?replace=true" } else { "" }
    );
    let bars = qutil::cli::Bars::new("qq", ctx.quiet);
    let task = bars.begin(&format!("uploading {name}"), Some(len));
    let mut at = 0u64;
    let mut sent = |n: u64| {
        task.advance(n - at);
        at = n;
    };
    let answer = c.put_stream::<ImageInfo>(&path, &mut file, len, &mut sent);
    drop(task);
    match answer {
        Ok(info) => {
            print_json(&info)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(crate::remote::fail(&e)),
    }
}
