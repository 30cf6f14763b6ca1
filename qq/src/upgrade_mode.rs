//! `qq upgrade_mode --to BUNDLE [--from VERSION]`: instant or platform, and why.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use qimg::BundleReader;
use qutil::cli::print_json;
use upgrade::checks;

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle.
    #[arg(long)]
    to: PathBuf,
    /// A release version to upgrade from (default: what the node runs).
    #[arg(long)]
    from: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let f = std::fs::File::open(&a.to).with_context(|| format!("opening {}", a.to.display()))?;
    let node = match (&a.from, &ctx.node) {
        (Some(_), None) => None,
        _ => Some(ctx.node()?),
    };
    let reader = std::io::BufReader::new(f);
    let (m, signature) = match &node {
        Some(n) => (
            BundleReader::open_verified(reader, &n.keys()?)
                .with_context(|| format!("bundle {}", a.to.display()))?
                .0
                .manifest()
                .clone(),
            "verified",
        ),
        None => (
            BundleReader::open(reader)
                .with_context(|| format!("bundle {}", a.to.display()))?
                .manifest()
                .clone(),
            "not checked (no node keys)",
        ),
    };
    let (from_text, d) = match (&a.from, &node) {
        (Some(v), _) => {
            let v: qimg::Version = v.parse().context("--from")?;
            (v.to_string(), checks::mode_from_release(&m, &v))
        }
        (None, Some(n)) => {
            let running = n.running(&mut n.open()?)?;
            (
                format!(
                    "{} (platform {})",
                    running.version.map(|v| v.to_string()).unwrap_or_default(),
                    running.platform_version
                ),
                checks::mode_on_node(&m, &running.platform_version),
            )
        }
        (None, None) => unreachable!("a node is loaded without --from"),
    };
    print_json(&serde_json::json!({
        "schema": "qq.upgrade_mode/1",
        "mode": d.mode,
        "reason": d.reason,
        "from": from_text,
        "to": m.release.version.to_string(),
        "platform_version": m.release.platform_version.to_string(),
        "signature": signature,
    }))?;
    Ok(ExitCode::SUCCESS)
}
