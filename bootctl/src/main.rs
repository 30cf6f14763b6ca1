//! `qbootctl`: the boot-loader companion for A/B slots.
//!
//! Exit codes: 0 success; 1 a negative answer; 2 an error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Boot-loader companion for A/B platform slots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a Unified Kernel Image contains: version, id, cmdline, kernel, sections.
    InspectUki {
        /// The UKI.
        file: PathBuf,
        /// Machine-readable output (schema qbootctl.inspect-uki/1).
        #[arg(long)]
        json: bool,
    },
}

/// Writes to stdout; a closed pipe is not an error.
fn out(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing stdout"),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::InspectUki { file, json } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let info = bootctl::uki::inspect(&bytes).with_context(|| file.display().to_string())?;
            if json {
                out(&(serde_json::to_string_pretty(&info)? + "\n"))?;
            } else {
                out(&info.render())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qbootctl: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
