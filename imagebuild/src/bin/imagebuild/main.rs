//! `imagebuild`: build, inspect and verify signed `.qimg` release bundles.
//!
//! Exit codes: 0 success; 1 a negative answer (verification failed); 2 an error
//! (bad arguments, unreadable input, I/O failure, interrupted).

use qutil::cli::out;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qutil::cli::Bars;

use imagebuild::bundle::{self, BuildOptions};
use imagebuild::spec::ReleaseSpec;
use imagebuild::{Cancel, demo, keys, report};
use qimg::TrustedKeys;

mod cmd;

/// What every subcommand gets.
pub struct Ctx {
    progress: Bars,
    cancel: Cancel,
}

#[derive(Parser)]
#[command(
    version,
    about = "Build, inspect and verify signed .qimg release bundles"
)]
struct Cli {
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Log each task's duration on stderr.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a signing key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen(cmd::keygen::Args),
    /// Build a signed bundle from a release spec.
    Bundle(cmd::bundle::Args),
    /// Show a bundle's manifest, components and signatures (nothing is verified).
    Inspect(cmd::inspect::Args),
    /// Verify a bundle's signature and every component; exit 1 if anything fails.
    Verify(cmd::verify::Args),
    /// Build a Unified Kernel Image from the systemd EFI stub.
    Uki(cmd::uki::Args),
    /// Build a bootable node disk image from a bundle: slot A filled, slot B empty.
    Disk(cmd::disk::Args),
    /// Install a bundle's platform into a slot of an existing node image (prepare,
    /// offline): the slot's entries go, the slot is rewritten and verified, its new
    /// entry gets --tries tries. The other slot is untouched.
    InstallSlot(cmd::install_slot::Args),
    /// Build a signed example bundle from generated sample content, then inspect it.
    Demo(cmd::demo::Args),
}

fn bars(quiet: bool, verbose: bool) -> Bars {
    Bars::new("imagebuild", quiet).timings(verbose)
}

fn json<T: serde::Serialize>(value: &T) -> Result<()> {
    out(&(serde_json::to_string_pretty(value)? + "\n"))
}

fn source_date_epoch(spec: &ReleaseSpec) -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    if let Some(v) = spec.source_date_epoch {
        return Ok(v);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    eprintln!(
        "imagebuild: neither SOURCE_DATE_EPOCH nor source_date_epoch is set; using the current time {now} (the bundle will not be reproducible)"
    );
    Ok(now)
}

fn install_interrupt_handler(cancel: &Cancel) -> Result<()> {
    let c = cancel.clone();
    ctrlc::set_handler(move || {
        if c.is_cancelled() {
            // Second Ctrl-C: leave now.
            std::process::exit(2);
        }
        eprintln!("imagebuild: interrupted; removing partial output");
        c.cancel();
    })
    .context("installing the Ctrl-C handler")
}

fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = Ctx {
        progress: bars(cli.quiet, cli.verbose),
        cancel: Cancel::new(),
    };
    match cli.command {
        Command::Keygen(a) => cmd::keygen::run(ctx, a),
        Command::Bundle(a) => cmd::bundle::run(ctx, a),
        Command::Inspect(a) => cmd::inspect::run(ctx, a),
        Command::Verify(a) => cmd::verify::run(ctx, a),
        Command::Uki(a) => cmd::uki::run(ctx, a),
        Command::Disk(a) => cmd::disk::run(ctx, a),
        Command::InstallSlot(a) => cmd::install_slot::run(ctx, a),
        Command::Demo(a) => cmd::demo::run(ctx, a),
    }
}

/// `1234`, `512M`, `2G`: binary units.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?}")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn rel(p: &Path) -> String {
    p.display().to_string()
}

fn check_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

fn main() -> ExitCode {
    qutil::cli::main("imagebuild", || run(Cli::parse()))
}
