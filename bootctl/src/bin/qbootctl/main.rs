//! `qbootctl`: the boot-loader companion for A/B slots.
//!
//! Works on a live node (the mounted ESP and efivarfs) or, with `--image`, on a disk
//! image file. Exit codes: 0 success; 1 a negative answer (no fallback, a slot that
//! cannot boot next); 2 an error.

use qutil::cli::out;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use bootctl::efivars::{EFIVARS, LoaderVars};
use bootctl::esp::{DirEsp, Esp, ImageEsp};
use bootctl::layout::Slot;
use bootctl::status::{self, Status};
use bootctl::{entries, slot, table};

mod cmd;

#[derive(Parser)]
#[command(version, about = "Boot-loader companion for A/B platform slots")]
struct Cli {
    /// Work on this disk image instead of the running node.
    #[arg(long, global = true)]
    image: Option<PathBuf>,
    /// The mounted ESP (live; default: the first of /efi, /boot/efi, /boot with a qimg layout).
    #[arg(long, global = true)]
    esp: Option<PathBuf>,
    /// efivarfs directory (live).
    #[arg(long, global = true, default_value = EFIVARS)]
    efivars: PathBuf,
    /// The disk holding the slots (live), for their labels.
    #[arg(long, global = true)]
    disk: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Booted slot, each slot's version and entry state, what boots next and why.
    Status,
    /// Bless the booted entry (or ENTRY): drop its counter, keep one fallback, remove stale entries.
    MarkGood(cmd::mark_good::Args),
    /// Mark the booted entry (or ENTRY) bad: no tries left.
    MarkBad(cmd::mark_bad::Args),
    /// Make the other slot boot next.
    Rollback,
    /// Make SLOT (a or b) boot next, with N tries.
    SetNext(cmd::set_next::Args),
    /// Show what a Unified Kernel Image contains: version, id, cmdline, kernel, sections.
    InspectUki(cmd::inspect_uki::Args),
}

/// What every subcommand on the boot entries gets: the ESP, the slot labels, the
/// loader variables (live) and the product.
pub struct Ctx {
    t: Target,
    product: String,
}

impl Ctx {
    /// The status report as it stands.
    fn status(&mut self) -> Result<Status, bootctl::Error> {
        status::status(
            self.t.esp.as_mut(),
            &self.product,
            self.t.labels.clone(),
            self.t.vars.as_ref(),
        )
    }
}

/// The ESP, the slot labels and the loader variables the command works with.
struct Target {
    esp: Box<dyn Esp>,
    labels: Option<[String; 2]>,
    vars: Option<LoaderVars>,
}

fn labels_of(dev: &mut File) -> Result<[String; 2]> {
    let t = table::read(dev)?;
    Ok([slot::label(&t, Slot::A)?, slot::label(&t, Slot::B)?])
}

fn open(cli: &Cli) -> Result<Target> {
    if let Some(image) = &cli.image {
        let mut dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .with_context(|| format!("opening {}", image.display()))?;
        let t = table::read(&mut dev).with_context(|| image.display().to_string())?;
        if let Some(r) = t.recovered {
            eprintln!(
                "qbootctl: warning: {}: {r:?}; the next change rewrites both copies",
                image.display()
            );
        }
        let (start, len) = t.esp_range().context("the image has no ESP")?;
        let labels = labels_of(&mut dev)?;
        let esp = ImageEsp::open(dev, start, len)?;
        return Ok(Target {
            esp: Box::new(esp),
            labels: Some(labels),
            vars: None,
        });
    }
    let esp_path = match &cli.esp {
        Some(p) => p.clone(),
        None => ["/efi", "/boot/efi", "/boot"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join(status::LAYOUT_RECORD).is_file())
            .context(
                "no ESP with a qimg layout under /efi, /boot/efi or /boot; pass --esp or --image",
            )?,
    };
    let labels = match &cli.disk {
        Some(d) => Some(labels_of(
            &mut File::open(d).with_context(|| d.display().to_string())?,
        )?),
        None => None,
    };
    Ok(Target {
        esp: Box::new(DirEsp::new(esp_path)),
        labels,
        vars: Some(LoaderVars::new(&cli.efivars)),
    })
}

fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let pick = |p: &Option<status::Pick>| match p {
        Some(p) => format!(
            "{} (slot {}) — {}",
            p.entry,
            p.slot.map_or("-".into(), |c| c.to_string()),
            p.reason
        ),
        None => "none".into(),
    };
    let _ = writeln!(t, "product: {}", s.product);
    let _ = writeln!(t, "booted:  {}", pick(&s.booted));
    let _ = writeln!(t, "next:    {}", pick(&s.next));
    for r in &s.slots {
        let state = match r.state {
            Some(entries::EntryState::Good) => "good".to_owned(),
            Some(entries::EntryState::Trying { left, done }) => {
                format!("trying ({left} left, {done} done)")
            }
            Some(entries::EntryState::Bad { done }) => format!("bad ({done} done)"),
            None => "no entry".to_owned(),
        };
        let _ = writeln!(
            t,
            "slot {}:  {:<24} {:<36} {}{}",
            r.slot,
            r.label.clone().unwrap_or_else(|| "-".into()),
            r.entry.clone().unwrap_or_else(|| "-".into()),
            state,
            r.reason
                .as_ref()
                .map(|x| format!(", {x}"))
                .unwrap_or_default()
        );
    }
    for w in &s.warnings {
        let _ = writeln!(t, "warning: {w}");
    }
    t
}

fn report(cli: &Cli, s: &Status) -> Result<()> {
    if cli.json {
        out(&(serde_json::to_string_pretty(s)? + "\n"))
    } else {
        out(&render(s))
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::InspectUki(a) = &cli.command {
        return cmd::inspect_uki::run(&cli, a);
    }
    let mut t = open(&cli)?;
    let product = status::layout_record(t.esp.as_mut())
        .context("reading the qimg layout record on the ESP")?
        .product;
    let mut ctx = Ctx { t, product };
    let result = match &cli.command {
        Command::Status => ctx.status(),
        Command::MarkGood(a) => cmd::mark_good::run(&mut ctx, a),
        Command::MarkBad(a) => cmd::mark_bad::run(&mut ctx, a),
        Command::Rollback => cmd::rollback::run(&mut ctx),
        Command::SetNext(a) => cmd::set_next::run(&mut ctx, a),
        Command::InspectUki(_) => unreachable!("handled above"),
    };
    ctx.t.esp.flush()?;
    match result {
        Ok(s) => {
            report(&cli, &s)?;
            Ok(ExitCode::SUCCESS)
        }
        // A negative answer (no fallback, a refused change): nothing was changed.
        Err(bootctl::Error::NoEntry { reason }) => {
            eprintln!("qbootctl: {reason}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn main() -> ExitCode {
    qutil::cli::main("qbootctl", || run(Cli::parse()))
}
