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
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a signed bundle from a release spec.
    Bundle {
        /// The release spec (TOML).
        #[arg(long)]
        spec: PathBuf,
        /// Secret key to sign with; repeat to sign with several keys (key rotation).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Print the resulting manifest as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// MiB of memory each filesystem image may use while staged; larger images
        /// are staged in a temporary file next to the output.
        #[arg(long, default_value_t = bundle::DEFAULT_STAGING_MEMORY >> 20)]
        staging_memory: u64,
    },
    /// Show a bundle's manifest, components and signatures (nothing is verified).
    Inspect {
        /// The bundle.
        file: PathBuf,
        /// Machine-readable output (schema imagebuild.inspect/1).
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle's signature and every component; exit 1 if anything fails.
    Verify {
        /// The bundle.
        file: PathBuf,
        /// Trusted public key; repeat for several.
        #[arg(long, required = true)]
        pubkey: Vec<PathBuf>,
        /// Machine-readable output (schema imagebuild.verify/1).
        #[arg(long)]
        json: bool,
    },
    /// Build a Unified Kernel Image from the systemd EFI stub.
    Uki {
        /// The stub (package systemd-boot-efi).
        #[arg(long, default_value = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub")]
        stub: PathBuf,
        /// The kernel image.
        #[arg(long)]
        kernel: PathBuf,
        /// The initrd.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// The kernel command line.
        #[arg(long)]
        cmdline: String,
        /// os-release file for .osrel (IMAGE_ID/IMAGE_VERSION decide boot order).
        #[arg(long)]
        os_release: PathBuf,
        /// .uname (default: read from the kernel's setup header).
        #[arg(long)]
        uname: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a bootable node disk image from a bundle: slot A filled, slot B empty.
    Disk {
        /// The bundle.
        #[arg(long)]
        bundle: PathBuf,
        /// Output image (sparse).
        #[arg(long)]
        out: PathBuf,
        /// Verify the bundle's signature with this public key (repeatable); without
        /// it only the bundle's digests are checked.
        #[arg(long)]
        pubkey: Vec<PathBuf>,
        /// Total size, in bytes or with a K, M, G or T suffix (binary units; default:
        /// what the layout needs).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// systemd-boot EFI binary.
        #[arg(long, default_value = imagebuild::disk::SYSTEMD_BOOT)]
        systemd_boot: PathBuf,
        /// Target: onprem or cloud (cloud images are whole GiB, for EBS snapshots).
        #[arg(long, default_value = "onprem")]
        target: String,
        /// ESP size in MiB.
        #[arg(long, default_value_t = 256)]
        esp_mib: u64,
        /// Root partition size per slot in MiB (default: the image plus 25%).
        #[arg(long)]
        root_mib: Option<u64>,
        /// Data partition size in MiB.
        #[arg(long, default_value_t = 256)]
        data_mib: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install a bundle's platform into a slot of an existing node image (prepare,
    /// offline): the slot's entries go, the slot is rewritten and verified, its new
    /// entry gets --tries tries. The other slot is untouched.
    InstallSlot {
        /// The node image.
        #[arg(long)]
        image: PathBuf,
        /// The bundle.
        #[arg(long)]
        bundle: PathBuf,
        /// a or b.
        #[arg(long)]
        slot: char,
        /// Tries for the new entry (0 = uncounted).
        #[arg(long, default_value_t = 3)]
        tries: u32,
        /// Verify the bundle's signature with this public key (repeatable).
        #[arg(long)]
        pubkey: Vec<PathBuf>,
    },
    /// Build a signed example bundle from generated sample content, then inspect it.
    Demo {
        /// Directory for the key pair, the sample inputs and the bundle.
        #[arg(long)]
        out: PathBuf,
    },
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
    let progress = bars(cli.quiet, cli.verbose);
    let cancel = Cancel::new();
    match cli.command {
        Command::Keygen { out: prefix } => {
            let files = keys::generate(&prefix)?;
            eprintln!(
                "imagebuild: key {} written: {} (secret, mode 0600) and {}",
                files.id,
                files.secret.display(),
                files.public.display()
            );
            out(&format!("{}\n", files.id))?;
        }
        Command::Bundle {
            spec,
            key,
            out: output,
            json: as_json,
            staging_memory,
        } => {
            install_interrupt_handler(&cancel)?;
            let spec_data = ReleaseSpec::load(&spec)?;
            let keys = key
                .iter()
                .map(|k| keys::load_secret(k))
                .collect::<Result<Vec<_>, _>>()?;
            let start = Instant::now();
            let manifest = bundle::build(&BuildOptions {
                spec: &spec_data,
                source_date_epoch: source_date_epoch(&spec_data)?,
                keys: &keys,
                out: &output,
                progress: &progress,
                cancel: &cancel,
                staging_memory: staging_memory << 20,
            })?;
            let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "imagebuild: wrote {} ({}) in {:.1} s",
                output.display(),
                report::human_size(size),
                start.elapsed().as_secs_f64()
            );
            if as_json {
                out(std::str::from_utf8(&manifest.to_bytes()?)?)?;
            }
        }
        Command::Inspect {
            file,
            json: as_json,
        } => {
            let r = report::inspect(&file)?;
            if as_json {
                json(&r)?;
            } else {
                out(&r.render())?;
            }
        }
        Command::Verify {
            file,
            pubkey,
            json: as_json,
        } => {
            let keys = pubkey
                .iter()
                .map(|k| keys::load_public(k))
                .collect::<Result<Vec<_>, _>>()?;
            let r = report::verify(&file, &TrustedKeys::new(keys), &progress)?;
            if as_json {
                json(&r)?;
            } else {
                out(&r.render())?;
            }
            if !r.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Uki {
            stub,
            kernel,
            initrd,
            cmdline,
            os_release,
            uname,
            out: output,
        } => {
            let sections = bootctl::uki::build::build_files(
                &stub,
                &kernel,
                initrd.as_deref(),
                &os_release,
                &cmdline,
                uname,
                &output,
            )?;
            eprintln!("imagebuild: wrote {}", output.display());
            for s in sections {
                out(&format!(
                    "{:<10} vma {:#010x} size {:#010x}\n",
                    s.name, s.virtual_address, s.virtual_size
                ))?;
            }
        }
        Command::Disk {
            bundle,
            out: output,
            pubkey,
            size,
            systemd_boot,
            target,
            esp_mib,
            root_mib,
            data_mib,
            json: as_json,
        } => {
            install_interrupt_handler(&cancel)?;
            let target = match target.as_str() {
                "onprem" => qimg::Target::Onprem,
                "cloud" => qimg::Target::Cloud,
                other => anyhow::bail!("--target must be onprem or cloud, not {other:?}"),
            };
            let keys = pubkey
                .iter()
                .map(|k| keys::load_public(k))
                .collect::<Result<Vec<_>, _>>()?;
            let trusted = TrustedKeys::new(keys);
            let r = imagebuild::disk::build(&imagebuild::disk::DiskOptions {
                bundle: &bundle,
                keys: (!trusted.is_empty()).then_some(&trusted),
                out: &output,
                size,
                systemd_boot: &systemd_boot,
                target,
                esp_mib,
                root_mib,
                data_mib,
                progress: &progress,
                cancel: &cancel,
            })?;
            if as_json {
                json(&r)?;
            } else {
                out(&format!(
                    "{}: {} bytes; slot A {}, slot B {}; entry {}\n",
                    r.file.display(),
                    r.size,
                    r.slot_a,
                    r.slot_b,
                    r.entry
                ))?;
            }
        }
        Command::InstallSlot {
            image,
            bundle,
            slot,
            tries,
            pubkey,
        } => {
            let slot = match slot.to_ascii_lowercase() {
                'a' => bootctl::layout::Slot::A,
                'b' => bootctl::layout::Slot::B,
                other => anyhow::bail!("--slot must be a or b, not {other:?}"),
            };
            let keys = pubkey
                .iter()
                .map(|k| keys::load_public(k))
                .collect::<Result<Vec<_>, _>>()?;
            let trusted = TrustedKeys::new(keys);
            let entry = imagebuild::disk::install_slot(
                &image,
                &bundle,
                (!trusted.is_empty()).then_some(&trusted),
                slot,
                (tries > 0).then_some(tries),
                &progress,
            )?;
            out(&format!("{entry}\n"))?;
        }
        Command::Demo { out: dir } => {
            install_interrupt_handler(&cancel)?;
            let d = demo::run(&dir, &progress, &cancel)?;
            for n in &d.notes {
                eprintln!("imagebuild: note: {n}");
            }
            let r = report::inspect(&d.bundle)?;
            out(&r.render())?;
            out(&format!(
                "\nverify it:  imagebuild verify {} --pubkey {}\n",
                rel(&d.bundle),
                rel(&d.public_key)
            ))?;
            if !check_tool("minisign") {
                return Ok(ExitCode::SUCCESS);
            }
            out(&format!(
                "or by hand: tar -xf {b} manifest.json signatures/ && minisign -V -p {p} -m manifest.json -x signatures/*.minisig\n",
                b = rel(&d.bundle),
                p = rel(&d.public_key)
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
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
