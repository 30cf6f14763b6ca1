//! `qfirmware flash`: flash what the plan says to flash.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let Ctx { cli, config } = ctx;
    let Args {
        bundle,
        efivars,
        power_check,
        timeout,
        retry,
        dry_run,
    } = a;
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
