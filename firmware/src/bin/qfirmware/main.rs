//! `qfirmware`: node firmware inventory, plan, flash and results.
//!
//! Exit codes: 0 success; 1 a negative answer (a payload refused by the plan, a
//! flash or a staged update that failed); 2 an error.

use qutil::cli::out;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use bootctl::esp::Esp;
use firmware::flash::{FlashOptions, Outcome, Payload, results};
use firmware::inventory::{Device, inventory};
use firmware::journal::{Journal, Step};
use firmware::plan::{Action, PlanItem, PlanOptions, Refusal, plan};
use firmware::prepare::{
    BackendSpec, Backends, NodeConfig, flash_all, load_payloads, offers, open_esp,
};
use qimg::{PublicKey, TrustedKeys};

/// Versions of the `--json` documents (docs/qfirmware.md).
const STATUS_SCHEMA: &str = "qfirmware.status/1";
const PLAN_SCHEMA: &str = "qfirmware.plan/1";
const FLASH_SCHEMA: &str = "qfirmware.flash/1";
const RESULTS_SCHEMA: &str = "qfirmware.results/1";

mod cmd;

#[derive(Parser)]
#[command(version, about = "Node firmware: inventory, plan, flash, results")]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// The options every subcommand takes.
#[derive(clap::Args)]
pub struct Globals {
    /// Root of the node's filesystem (sysfs is read under it).
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// The flash journal directory.
    #[arg(long, global = true, default_value = "/var/lib/qimg/firmware")]
    journal: PathBuf,
    /// The node's firmware configuration: JSON object, device id → {probe, backend}.
    #[arg(long, global = true)]
    devices: Option<PathBuf>,
    /// The mounted ESP, or a disk image holding one: capsules of ESRT devices without
    /// a backend entry go there, its free space is checked by the plan, `results`
    /// removes applied capsules.
    #[arg(long, global = true, default_value = "/boot/efi")]
    esp: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

/// What every subcommand gets: the global options and the node's device configuration.
pub struct Ctx {
    cli: Globals,
    config: NodeConfig,
}

#[derive(clap::Args)]
pub struct BundleArgs {
    /// The bundle.
    #[arg(long)]
    bundle: PathBuf,
    /// Trusted public key (repeatable).
    #[arg(long = "pubkey", required = true)]
    pubkey: Vec<PathBuf>,
    /// Flash older firmware over newer.
    #[arg(long)]
    allow_older: bool,
    /// Flash the version already installed.
    #[arg(long)]
    allow_reinstall: bool,
    /// The fallback slot's platform version (refuses firmware it cannot run with).
    #[arg(long)]
    fallback_platform: Option<qimg::Version>,
}

#[derive(Subcommand)]
enum Command {
    /// Devices, their installed versions, and the journal.
    Status,
    /// What a bundle's firmware would do on this node.
    Plan(BundleArgs),
    /// Flash what the plan says to flash.
    Flash(cmd::flash::Args),
    /// After a reboot: the results of staged updates.
    Results,
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn code(negative: bool) -> ExitCode {
    ExitCode::from(u8::from(negative))
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Skip => "skip (up to date)".into(),
        Action::Flash => "flash".into(),
        Action::Refuse {
            why: why @ Refusal::Downgrade { .. },
        } => format!("refuse: {why} (use --allow-older)"),
        Action::Refuse { why } => format!("refuse: {why}"),
    }
}

/// The ESP (directory or disk image), when there is one.
fn esp(path: &Path) -> Result<Option<Box<dyn Esp>>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(open_esp(path)?))
}

fn load(
    b: &BundleArgs,
    root: &Path,
    esp_dir: &Path,
    config: &NodeConfig,
) -> Result<(Vec<Device>, Vec<Payload>, Vec<PlanItem>)> {
    let keys = b
        .pubkey
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            PublicKey::from_file_text(&text).with_context(|| format!("public key {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let payloads = load_payloads(&b.bundle, &TrustedKeys::new(keys))?;
    let devices = inventory(root, &config.probes())?;
    let o = PlanOptions {
        allow_older: b.allow_older,
        allow_reinstall: b.allow_reinstall,
        fallback_platform: b.fallback_platform.clone(),
        esp_free: match esp(esp_dir)? {
            Some(mut e) => Some(
                e.free_bytes()
                    .with_context(|| format!("free space of {}", esp_dir.display()))?,
            ),
            None => None,
        },
    };
    let items = plan(&devices, &offers(&payloads), &o);
    Ok((devices, payloads, items))
}

fn print_plan(items: &[PlanItem]) -> Result<()> {
    for i in items {
        out(&format!(
            "{}: {} {} -> {}: {}\n",
            i.component,
            i.device.as_deref().unwrap_or(&i.component_id),
            i.installed.as_deref().unwrap_or("(none)"),
            i.offered,
            action_text(&i.action)
        ))?;
    }
    Ok(())
}

fn refused(items: &[PlanItem]) -> bool {
    items
        .iter()
        .any(|i| matches!(i.action, Action::Refuse { .. }))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let Cli { globals, command } = cli;
    let config = match &globals.devices {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    let ctx = Ctx {
        cli: globals,
        config,
    };
    match command {
        Command::Status => cmd::status::run(ctx),
        Command::Plan(b) => cmd::plan::run(ctx, b),
        Command::Flash(a) => cmd::flash::run(ctx, a),
        Command::Results => cmd::results::run(ctx),
    }
}

fn main() -> ExitCode {
    qutil::cli::main("qfirmware", || run(Cli::parse()))
}
