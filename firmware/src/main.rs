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

#[derive(Parser)]
#[command(version, about = "Node firmware: inventory, plan, flash, results")]
struct Cli {
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
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct BundleArgs {
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
    Flash {
        #[command(flatten)]
        bundle: BundleArgs,
        /// efivarfs (default: ROOT/sys/firmware/efi/efivars).
        #[arg(long)]
        efivars: Option<PathBuf>,
        /// Time limit of one device write, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// A shell command that must succeed before each write (UPS/PDU check).
        #[arg(long)]
        power_check: Option<String>,
        /// Try again components whose journal says failed.
        #[arg(long)]
        retry: bool,
        /// Print the plan and the backends, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
    let config = match &cli.devices {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    match cli.command {
        Command::Status => {
            let devices = inventory(&cli.root, &config.probes())?;
            let journal = Journal::open(&cli.journal)?.all()?;
            if cli.json {
                print_json(
                    &json!({"schema": STATUS_SCHEMA, "devices": devices, "journal": journal}),
                )?;
            } else {
                for d in &devices {
                    out(&format!(
                        "{}: {}\n",
                        d.component_id,
                        serde_json::to_string(&d.installed)?
                    ))?;
                }
                for r in &journal {
                    out(&format!(
                        "journal {}: {} -> {}: {}\n",
                        r.component,
                        r.from.as_deref().unwrap_or("?"),
                        r.to,
                        Step::text(&r.step)
                    ))?;
                }
            }
            Ok(code(false))
        }
        Command::Plan(b) => {
            let (_, _, items) = load(&b, &cli.root, &cli.esp, &config)?;
            if cli.json {
                print_json(&json!({"schema": PLAN_SCHEMA, "items": items}))?;
            } else {
                print_plan(&items)?;
            }
            Ok(code(refused(&items)))
        }
        Command::Flash {
            bundle,
            efivars,
            power_check,
            timeout,
            retry,
            dry_run,
        } => {
            let (_, payloads, items) = load(&bundle, &cli.root, &cli.esp, &config)?;
            let efivars = efivars.unwrap_or_else(|| cli.root.join("sys/firmware/efi/efivars"));
            let b = Backends {
                by_device: config.backends(),
                default_capsule: Some(BackendSpec::Capsule {
                    esp: cli.esp.clone(),
                    efivars,
                }),
            };
            if dry_run {
                let chosen: Vec<_> = items
                    .iter()
                    .map(|i| {
                        let info = &payloads
                            .iter()
                            .find(|p| p.name == i.component)
                            .expect("planned from payloads")
                            .info;
                        (
                            i,
                            (i.action == Action::Flash)
                                .then(|| b.for_item(i, info))
                                .flatten(),
                        )
                    })
                    .collect();
                if cli.json {
                    let items: Vec<_> = chosen
                        .iter()
                        .map(|(i, s)| json!({"item": i, "backend": s}))
                        .collect();
                    print_json(&json!({"schema": FLASH_SCHEMA, "dry_run": true, "items": items}))?;
                } else {
                    print_plan(&items)?;
                    for (i, s) in chosen.iter().filter(|(i, _)| i.action == Action::Flash) {
                        out(&format!(
                            "{}: would flash with {}\n",
                            i.component,
                            s.map_or("no backend (error)".into(), |s| serde_json::to_string(s)
                                .unwrap_or_default())
                        ))?;
                    }
                }
                return Ok(code(refused(&items)));
            }
            let journal = Journal::open(&cli.journal)?;
            let o = FlashOptions {
                timeout: Duration::from_secs(timeout),
                retry_failed: retry,
                power_hook: power_check.map(|c| vec!["sh".into(), "-c".into(), c]),
                root: cli.root.clone(),
                ..FlashOptions::default()
            };
            let outcomes = flash_all(
                &journal,
                &items,
                &payloads,
                &b,
                &o,
                &qutil::cli::Bars::new("qfirmware", false),
            )?;
            let failed = outcomes
                .iter()
                .any(|(_, o)| matches!(o, Outcome::Failed { .. }));
            if cli.json {
                let list: Vec<_> = outcomes
                    .iter()
                    .map(|(c, o)| json!({"component": c, "result": o}))
                    .collect();
                print_json(
                    &json!({"schema": FLASH_SCHEMA, "dry_run": false, "plan": items, "outcomes": list}),
                )?;
            } else {
                print_plan(&items)?;
                for (c, o) in &outcomes {
                    out(&format!(
                        "{c}: {}\n",
                        match o {
                            Outcome::NotPlanned => "not planned".into(),
                            Outcome::Activated => "flashed, running the new version".into(),
                            Outcome::Staged => "staged, takes effect at the next reboot".into(),
                            Outcome::AlreadyDone { step } => format!("already done ({step})"),
                            Outcome::Failed { reason } => format!("FAILED: {reason}"),
                        }
                    ))?;
                }
            }
            Ok(code(failed || refused(&items)))
        }
        Command::Results => {
            let devices = inventory(&cli.root, &config.probes())?;
            let mut e = esp(&cli.esp)?;
            let r = results(
                &Journal::open(&cli.journal)?,
                &devices,
                &cli.root,
                e.as_mut().map(|b| &mut **b as &mut dyn Esp),
            )?;
            if cli.json {
                print_json(&json!({"schema": RESULTS_SCHEMA, "results": r}))?;
            } else {
                for x in &r {
                    out(&format!("{}: {}\n", x.component, Step::text(&x.step)))?;
                }
            }
            Ok(code(
                r.iter().any(|x| matches!(x.step, Step::Failed { .. })),
            ))
        }
    }
}

fn main() -> ExitCode {
    qutil::cli::main("qfirmware", || run(Cli::parse()))
}
