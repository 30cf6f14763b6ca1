//! `qq`: node upgrades, spelled as in the upgrade reference.
//!
//! ```text
//! qq [--node DIR] upgrade_cluster --path P [--rolling] [--no-monitor]     prepare, then commit
//! qq [--node DIR] upgrade_cluster prepare --path P [--rolling] [--no-monitor]
//! qq [--node DIR] upgrade_cluster commit [--no-monitor]
//! qq [--node DIR] upgrade_status
//! qq [--node DIR] upgrade_mode --to BUNDLE [--from VERSION]
//! qq [--node DIR] boot_check                 (run at boot by qimg-boot-check.service)
//! qq sim_create --dir D --disk IMG --bundle B --key K --model M   (a simulated node)
//! ```
//!
//! Results (JSON) on stdout; progress and logs on stderr. Exit codes: 0 done, 1 a
//! negative answer (refused, blocked, failed and recorded), 2 an error.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use qimg::{BundleReader, Target};
use upgrade::node::{DEFAULT_CONFIG, FirmwareConfig, Node};
use upgrade::prepare::{PrepareOptions, prepare};
use upgrade::{Cancel, Error, Observer, checks, commit, sim};

#[derive(Parser)]
#[command(name = "qq", version, about = "Node upgrades: prepare, commit, status")]
struct Cli {
    /// The node: a directory with node.toml (a simulated node) or a node.toml;
    /// default /etc/qimg/node.toml.
    #[arg(long, global = true, env = "QQ_NODE")]
    node: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upgrade: prepare then commit, or one phase.
    #[command(name = "upgrade_cluster", args_conflicts_with_subcommands = true)]
    UpgradeCluster {
        #[command(subcommand)]
        phase: Option<PhaseCmd>,
        /// The .qimg bundle.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Reboot nodes one batch at a time.
        #[arg(long)]
        rolling: bool,
        /// Return at once; the upgrade runs in the background and cannot be cancelled.
        #[arg(long)]
        no_monitor: bool,
        #[arg(long, hide = true)]
        detached: bool,
    },
    /// The upgrade's state (JSON).
    #[command(name = "upgrade_status")]
    UpgradeStatus,
    /// Instant or platform, and why.
    #[command(name = "upgrade_mode")]
    UpgradeMode {
        /// The bundle.
        #[arg(long)]
        to: PathBuf,
        /// A release version to upgrade from (default: what the node runs).
        #[arg(long)]
        from: Option<String>,
    },
    /// After a boot: finish a platform commit, or start the active container.
    #[command(name = "boot_check")]
    BootCheck,
    /// Power a simulated node off (stop its container).
    #[command(name = "sim_poweroff")]
    SimPoweroff,
    /// Create a simulated node from a disk image made by `imagebuild disk`.
    #[command(name = "sim_create")]
    SimCreate {
        /// Node directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// The disk image (moved into the node directory).
        #[arg(long)]
        disk: PathBuf,
        /// The bundle the image was made from (its container is installed).
        #[arg(long)]
        bundle: PathBuf,
        /// Trusted public key(s).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// Hardware model.
        #[arg(long)]
        model: String,
        /// onprem or cloud.
        #[arg(long, default_value = "onprem")]
        target: String,
        /// qfirmware device configuration, if the node has firmware to flash.
        #[arg(long)]
        firmware_devices: Option<PathBuf>,
        /// sysfs root for the firmware inventory.
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
        /// Seconds a new container or platform may take to become healthy.
        #[arg(long, default_value_t = 10)]
        health_timeout: u64,
    },
}

#[derive(Subcommand)]
enum PhaseCmd {
    /// Verify the bundle and stage everything; no client impact.
    Prepare {
        /// The .qimg bundle.
        #[arg(long)]
        path: PathBuf,
        /// Reboot nodes one batch at a time at commit.
        #[arg(long)]
        rolling: bool,
        /// Return at once; the prepare runs in the background and cannot be cancelled.
        #[arg(long)]
        no_monitor: bool,
        #[arg(long, hide = true)]
        detached: bool,
    },
    /// Swap the container or reboot into the new slot.
    Commit {
        /// Return at once; the commit runs in the background.
        #[arg(long)]
        no_monitor: bool,
        #[arg(long, hide = true)]
        detached: bool,
    },
}

/// Progress on stderr: a spinner with the current step and a bar per byte task on
/// a terminal; one line per step otherwise; nothing with `--quiet`.
struct Bars {
    multi: MultiProgress,
    step: ProgressBar,
    tty: bool,
    quiet: bool,
}

struct Bar(ProgressBar);
impl qimg::Task for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}
impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl qimg::Progress for Bars {
    fn begin(&self, what: &str, total: Option<u64>) -> Box<dyn qimg::Task> {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "  {msg:22} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        Box::new(Bar(self.multi.add(bar.with_message(what.to_owned()))))
    }
}

impl Observer for Bars {
    fn step(&self, text: &str) {
        if self.tty {
            self.step.set_message(text.to_owned());
        } else if !self.quiet {
            eprintln!("qq: {text}");
        }
    }
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        let tty = !quiet && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let step = multi.add(
            ProgressBar::new_spinner()
                .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid")),
        );
        if tty {
            step.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        Bars {
            multi,
            step,
            tty,
            quiet,
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.step.finish_and_clear();
    }
}

fn out(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing stdout"),
        _ => Ok(()),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn load_node(path: Option<&Path>) -> Result<Node> {
    let p = path.unwrap_or(Path::new(DEFAULT_CONFIG));
    Ok(Node::load(p)?)
}

fn print_status(node: &Node) -> Result<()> {
    print_json(&node.store()?.status()?)
}

/// Runs the detached copy of this command (`--no-monitor`) and returns once it holds
/// the upgrade lock (or ended).
fn detach(node: &Node) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let store = node.store()?;
    let log = store.dir().join("qq.log");
    let f = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.retain(|a| a != "--no-monitor");
    args.push("--detached".into());
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f);
    // SAFETY: setsid is async-signal-safe; the child leaves our session so a
    // terminal's Ctrl-C never reaches it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let before = store.load()?;
    let mut child = cmd.spawn().context("starting the background upgrade")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Return once the background process has written its first state (or ended).
    while store.load().ok().as_ref() == Some(&before)
        && child.try_wait()?.is_none()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!(
        "qq: running in the background (pid {}, log {}); `qq upgrade_status` follows it; it cannot be cancelled",
        child.id(),
        log.display()
    );
    print_status(node)?;
    Ok(ExitCode::SUCCESS)
}

/// Maps an engine outcome to an exit code, printing the status and the error.
fn finish(node: &Node, r: std::result::Result<upgrade::state::Record, Error>) -> Result<ExitCode> {
    match r {
        Ok(r) => {
            print_status(node)?;
            if r.error_state != upgrade::state::ErrorState::NoError {
                eprintln!("qq: {}", r.error_message);
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("qq: {}", upgrade::prepare::chain(&e));
            let recorded = node
                .store()
                .and_then(|s| s.load())
                .map(|r| r.error_state != upgrade::state::ErrorState::NoError)
                .unwrap_or(false);
            let _ = print_status(node);
            Ok(ExitCode::from(if e.is_negative() || recorded {
                1
            } else {
                2
            }))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let node_path = cli.node.clone();
    match cli.command {
        Command::UpgradeStatus => {
            print_status(&load_node(node_path.as_deref())?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::UpgradeCluster {
            phase,
            path,
            rolling,
            no_monitor,
            detached,
        } => {
            let node = load_node(node_path.as_deref())?;
            let bars = Bars::new(cli.quiet);
            let cancel = Cancel::new();
            let (prep, do_commit, no_monitor, detached) = match phase {
                None => {
                    let path = path.context("--path is required without a subcommand")?;
                    (Some((path, rolling)), true, no_monitor, detached)
                }
                Some(PhaseCmd::Prepare {
                    path,
                    rolling,
                    no_monitor,
                    detached,
                }) => (Some((path, rolling)), false, no_monitor, detached),
                Some(PhaseCmd::Commit {
                    no_monitor,
                    detached,
                }) => (None, true, no_monitor, detached),
            };
            if no_monitor {
                return detach(&node);
            }
            if !detached {
                let c = cancel.clone();
                let committing = prep.is_none();
                ctrlc::set_handler(move || {
                    if committing {
                        eprintln!("qq: a commit cannot be cancelled; it continues");
                    } else {
                        eprintln!("qq: cancelling: undoing the prepare");
                        c.cancel();
                    }
                })
                .context("installing the Ctrl-C handler")?;
            }
            if let Some((path, rolling)) = prep {
                let r = prepare(
                    &node,
                    &PrepareOptions {
                        path: &path,
                        rolling,
                        observer: &bars,
                        cancel: &cancel,
                    },
                );
                if r.is_err() || !do_commit {
                    drop(bars);
                    return finish(&node, r);
                }
            }
            // One node per cluster for now; the engine commits clusters in batches.
            let rolling = node.store()?.load()?.rolling;
            let mut results =
                upgrade::cluster::commit_cluster(std::slice::from_ref(&node), rolling, &bars);
            drop(bars);
            let (_, r) = results.pop().expect("one node, one result");
            finish(&node, r)
        }
        Command::UpgradeMode { to, from } => {
            let f =
                std::fs::File::open(&to).with_context(|| format!("opening {}", to.display()))?;
            let node = match (&from, node_path.as_deref()) {
                (Some(_), None) => None,
                (_, p) => Some(load_node(p)?),
            };
            let (m, signature) = match &node {
                Some(n) => (
                    BundleReader::open_verified(std::io::BufReader::new(f), &n.keys()?)
                        .with_context(|| format!("bundle {}", to.display()))?
                        .0
                        .manifest()
                        .clone(),
                    "verified",
                ),
                None => (
                    BundleReader::open(std::io::BufReader::new(f))
                        .with_context(|| format!("bundle {}", to.display()))?
                        .manifest()
                        .clone(),
                    "not checked (no node keys)",
                ),
            };
            let (from_text, d) = match (&from, &node) {
                (Some(v), _) => {
                    let v: qimg::Version = v.parse().context("--from")?;
                    (v.to_string(), checks::mode_from_release(&m, &v))
                }
                (None, Some(n)) => {
                    let running = n.running()?;
                    let p: qimg::Version = running.platform_version.parse()?;
                    (
                        format!(
                            "{} (platform {})",
                            running.version.unwrap_or_default(),
                            running.platform_version
                        ),
                        checks::mode_on_node(&m, &p),
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
        Command::BootCheck => {
            let node = load_node(node_path.as_deref())?;
            let bars = Bars::new(cli.quiet);
            let r = commit::after_boot(&node, &bars);
            drop(bars);
            finish(&node, r)
        }
        Command::SimPoweroff => {
            let node = load_node(node_path.as_deref())?;
            anyhow::ensure!(node.config.simulated, "not a simulated node");
            upgrade::container::runtime(&node.config.runtime, &node.config.state.join("run"))
                .stop()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SimCreate {
            dir,
            disk,
            bundle,
            key,
            model,
            target,
            firmware_devices,
            sysroot,
            health_timeout,
        } => {
            let target = match target.as_str() {
                "onprem" => Target::Onprem,
                "cloud" => Target::Cloud,
                other => anyhow::bail!("--target must be onprem or cloud, not {other}"),
            };
            let node = sim::create(&sim::CreateOptions {
                dir: &dir,
                disk: &disk,
                bundle: &bundle,
                keys: &key,
                model: &model,
                target,
                firmware: firmware_devices.map(|devices| FirmwareConfig { devices, sysroot }),
                health_timeout_secs: health_timeout,
            })?;
            print_status(&node)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qq: {e:#}");
            ExitCode::from(2)
        }
    }
}
