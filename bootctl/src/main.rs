//! `qbootctl`: the boot-loader companion for A/B slots.
//!
//! Works on a live node (the mounted ESP and efivarfs) or, with `--image`, on a disk
//! image file. Exit codes: 0 success; 1 a negative answer (no fallback, a slot that
//! cannot boot next); 2 an error.

use qutil::cli::out;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use bootctl::efivars::{EFIVARS, LoaderVars};
use bootctl::esp::{DirEsp, Esp, ImageEsp};
use bootctl::layout::Slot;
use bootctl::status::{self, Status};
use bootctl::{entries, slot, table};

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
    MarkGood {
        /// Entry file name (default: the booted entry; offline, what would boot next).
        entry: Option<String>,
        /// Bless an entry that has never been tried (no boot counted yet).
        #[arg(long)]
        force: bool,
    },
    /// Mark the booted entry (or ENTRY) bad: no tries left.
    MarkBad {
        /// Entry file name (default: the booted entry).
        entry: Option<String>,
    },
    /// Make the other slot boot next.
    Rollback,
    /// Make SLOT (a or b) boot next, with N tries.
    SetNext {
        /// a or b.
        slot: char,
        /// Tries (1-9).
        #[arg(long, default_value_t = entries::DEFAULT_TRIES)]
        tries: u32,
    },
    /// Show what a Unified Kernel Image contains: version, id, cmdline, kernel, sections.
    InspectUki {
        /// The UKI.
        file: PathBuf,
    },
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

fn slot_arg(c: char) -> Result<Slot> {
    match c.to_ascii_lowercase() {
        'a' => Ok(Slot::A),
        'b' => Ok(Slot::B),
        _ => bail!("slot must be a or b, not {c:?}"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::InspectUki { file } = &cli.command {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let info = bootctl::uki::inspect(&bytes).with_context(|| file.display().to_string())?;
        if cli.json {
            out(&(serde_json::to_string_pretty(&info)? + "\n"))?;
        } else {
            out(&info.render())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = open(&cli)?;
    let product = status::layout_record(t.esp.as_mut())
        .context("reading the qimg layout record on the ESP")?
        .product;
    let vars = t.vars.as_ref();
    let result = match &cli.command {
        Command::Status => status::status(t.esp.as_mut(), &product, t.labels.clone(), vars),
        Command::MarkGood { entry, force } => {
            let e = status::target_entry(t.esp.as_mut(), &product, entry.as_deref(), vars)?;
            let counter = bootctl::counter::EntryName::parse(&e, ".efi").and_then(|n| n.counter);
            if counter.is_none() {
                eprintln!("qbootctl: {e} is already good");
            } else if counter.is_some_and(|c| c.done == 0) && !force {
                // Blessing removes boot counting: an entry that never booted would lose
                // the fallback that protects the node if it cannot.
                let why = if vars.is_none() && entry.is_none() {
                    " (offline, mark-good picks what the loader would boot next, not what booted)"
                } else {
                    ""
                };
                eprintln!(
                    "qbootctl: refusing to bless {e}: it has never been tried (0 boots counted){why}; \
                     blessing it would end its boot counting and its fallback. Boot it first, \
                     or pass --force"
                );
                return Ok(ExitCode::from(1));
            } else {
                let new = entries::bless(t.esp.as_mut(), &product, &e)?;
                eprintln!("qbootctl: blessed {e} as {new}");
            }
            status::status(t.esp.as_mut(), &product, t.labels.clone(), vars)
        }
        Command::MarkBad { entry } => {
            let e = status::target_entry(t.esp.as_mut(), &product, entry.as_deref(), vars)?;
            let new = entries::mark_bad(t.esp.as_mut(), &e)?;
            eprintln!("qbootctl: marked {e} bad as {new}");
            status::status(t.esp.as_mut(), &product, t.labels.clone(), vars)
        }
        Command::Rollback => status::rollback(t.esp.as_mut(), &product, vars),
        Command::SetNext { slot, tries } => {
            status::set_next(t.esp.as_mut(), &product, slot_arg(*slot)?, *tries, vars)
        }
        Command::InspectUki { .. } => unreachable!("handled above"),
    };
    t.esp.flush()?;
    match result {
        Ok(s) => {
            report(&cli, &s)?;
            Ok(ExitCode::SUCCESS)
        }
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
