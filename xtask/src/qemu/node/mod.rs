//! A real node under QEMU: a Debian root (systemd, udev, the cloud kernel) in a
//! squashfs + dm-verity slot the kernel opens and enforces, `qimgd` inside, upgraded
//! from the host over HTTPS by `qq`. Scenarios follow one node through its life, as
//! an operator would: each asserts the serial console, the API's answers and the
//! ESP afterwards.

mod base;
mod release;
mod vm;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bootctl::layout::Slot;
use imagebuild::Cancel;
use imagebuild::disk::{self, DiskOptions};
use qimg::{NoProgress, Target, TrustedKeys};

use crate::target_dir;
use release::{Health, Release};
use vm::Vm;

/// How long one boot may take, firmware to the agent answering.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

/// The releases the scenarios use.
const RELEASES: &[Release] = &[
    Release {
        version: "1.0.0",
        platform_version: "1.0.0",
        platform: Some(Health::Good),
    },
    Release {
        version: "2.0.0",
        platform_version: "2.0.0",
        platform: Some(Health::Good),
    },
];

/// What a boot printed on the console (`qimg-node-report.service`).
#[derive(Debug)]
struct BootReport {
    release: String,
    root: String,
    table: String,
}

fn parse_report(line: &str) -> Option<BootReport> {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    Some(BootReport {
        release: field("release=")?,
        root: field("root=")?,
        table: field("table=")?.replace(',', " "),
    })
}

pub struct Node {
    dir: PathBuf,
    disk: PathBuf,
    vars: PathBuf,
    serial: PathBuf,
    ssh_key: PathBuf,
    accel: String,
    creds: PathBuf,
    vm: Option<Vm>,
    boots: usize,
}

impl Node {
    fn power_on(&mut self) -> Result<(), String> {
        self.vm = Some(Vm::start(
            &self.accel,
            &self.disk,
            &self.vars,
            &self.serial,
        )?);
        Ok(())
    }

    fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("powered on")
    }

    /// Runs our `qq` against the node's agent.
    fn qq(&mut self, args: &[&str]) -> Result<Output, String> {
        let port = self.vm().port;
        Command::new(target_dir().join("debug/qq"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--credentials-store")
            .arg(&self.creds)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("qq: {e}"))
    }

    /// Runs a shell command on the node over SSH, as root.
    fn ssh(&mut self, command: &str) -> Result<String, String> {
        let port = self.vm().ssh_port;
        let o = Command::new("ssh")
            .args(ssh_options(&self.ssh_key))
            .args(["-p", &port.to_string(), "root@127.0.0.1", command])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ssh: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "ssh {command:?}: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn qq_ok(&mut self, args: &[&str]) -> Result<String, String> {
        let o = self.qq(args)?;
        if !o.status.success() {
            return Err(format!(
                "qq {}: {}: {}{}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Waits for the next boot's report on the console, then for the agent to
    /// answer a login and `/v1/version`. Returns the report and the version.
    fn wait_up(&mut self) -> Result<(BootReport, String, Duration), String> {
        let start = Instant::now();
        self.boots += 1;
        let n = self.boots;
        let line = self.vm().wait_console("QIMG-NODE-BOOT", n, BOOT_LIMIT)?;
        let report = parse_report(&line).ok_or_else(|| format!("bad report line {line:?}"))?;
        loop {
            let login = self.qq(&["login", "-u", release::USER, "-p", release::PASSWORD])?;
            if login.status.success() {
                let v = self.qq_ok(&["version"])?;
                return Ok((report, v, start.elapsed()));
            }
            if start.elapsed() > BOOT_LIMIT {
                return Err(format!(
                    "the agent did not answer within {BOOT_LIMIT:?}: {}",
                    String::from_utf8_lossy(&login.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The agent's upgrade directory on the node (`upgrade_dir` in qimgd.toml).
const UPGRADE_DIR: &str = "/var/lib/qimg/upgrade";

fn ssh_options(key: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "ConnectTimeout=20".into(),
    ]
}

fn expect(cond: bool, what: &str) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

fn root_hash(bundle: &Path) -> Result<String, String> {
    let f = File::open(bundle).map_err(|e| e.to_string())?;
    let r = qimg::BundleReader::open(std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
    r.manifest()
        .components
        .iter()
        .find_map(|c| match &c.kind {
            qimg::ComponentKind::PlatformRoot { verity, .. } => Some(verity.root_hash.to_string()),
            _ => None,
        })
        .ok_or_else(|| format!("{} has no platform root", bundle.display()))
}

pub struct Lab {
    work: PathBuf,
    accel: String,
    firmware: PathBuf,
    keys: TrustedKeys,
    bundles: Vec<(&'static str, PathBuf)>,
    ssh_key: PathBuf,
}

impl Lab {
    fn bundle(&self, version: &str) -> &Path {
        &self
            .bundles
            .iter()
            .find(|(v, _)| *v == version)
            .expect("built")
            .1
    }

    /// A node with a fresh disk of `version` in slot A.
    fn node(&self, name: &str, version: &str) -> Result<Node, String> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let disk_path = dir.join("disk.raw");
        disk::build(&DiskOptions {
            bundle: self.bundle(version),
            keys: Some(&self.keys),
            out: &disk_path,
            size: None,
            systemd_boot: Path::new(disk::SYSTEMD_BOOT),
            target: Target::Onprem,
            esp_mib: 192,
            root_mib: Some(256),
            data_mib: 512,
            progress: &NoProgress,
            cancel: &Cancel::new(),
        })
        .map_err(|e| format!("imagebuild disk: {e:#}"))?;
        let vars = dir.join("ovmf.fd");
        std::fs::copy(&self.firmware, &vars).map_err(|e| e.to_string())?;
        Ok(Node {
            ssh_key: self.ssh_key.clone(),
            serial: dir.join("serial.log"),
            creds: dir.join("credentials"),
            disk: disk_path,
            vars,
            dir,
            accel: self.accel.clone(),
            vm: None,
            boots: 0,
        })
    }

    /// Copies a bundle into the node's upgrade directory with scp, as an operator
    /// would; returns its `image_path`.
    fn offer(&self, node: &mut Node, version: &str) -> Result<String, String> {
        let name = format!("{version}.qimg");
        node.ssh(&format!("mkdir -p {UPGRADE_DIR}"))?;
        let port = node.vm().ssh_port;
        let o = Command::new("scp")
            .args(ssh_options(&node.ssh_key))
            .args(["-q", "-P", &port.to_string()])
            .arg(self.bundle(version))
            .arg(format!("root@127.0.0.1:{UPGRADE_DIR}/{name}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("scp: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "scp {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(name)
    }
}

/// 1: a fresh disk boots slot A through verity; the agent answers.
fn fresh_boot(lab: &Lab, node: &mut Node) -> Result<(), String> {
    node.power_on()?;
    let (report, version, took) = node.wait_up()?;
    eprintln!(
        "xtask: node: booted in {:.1} s: {report:?}; qq version: {}",
        took.as_secs_f64(),
        version.trim()
    );
    expect(
        report.release == "1.0.0",
        "the fresh disk boots release 1.0.0",
    )?;
    expect(
        version.contains("\"revision_id\": \"qimg-node unknown\""),
        &format!("a fresh node has no container yet: {version}"),
    )?;
    // The installer's last step: the release's container, from its bundle.
    let name = lab.offer(node, "1.0.0")?;
    let out = node.ssh(&format!("qq factory_install --path {UPGRADE_DIR}/{name}"))?;
    expect(
        out.contains("installed 1.0.0"),
        &format!("factory_install: {out}"),
    )?;
    let version = node.qq_ok(&["version"])?;
    expect(
        version.contains("\"revision_id\": \"qimg-node 1.0.0\""),
        &format!("qq version after the factory install: {version}"),
    )?;
    expect(
        report.root == "/dev/mapper/root,squashfs",
        &format!("the root is the verity device, squashfs: {}", report.root),
    )?;
    let hash = root_hash(lab.bundle("1.0.0"))?;
    expect(
        report.table.contains(" verity ") && report.table.contains(&hash),
        &format!(
            "dm table of root is verity with the release's root hash {hash}: {}",
            report.table
        ),
    )?;
    let _ = Slot::A;
    Ok(())
}

/// 2: `qq upgrade_cluster --path` from the host: prepare slot B in the running
/// guest, commit, a real reboot into slot B through verity, blessed, COMMITTED.
fn platform_upgrade(lab: &Lab, node: &mut Node) -> Result<(), String> {
    let name = lab.offer(node, "2.0.0")?;
    let start = Instant::now();
    let out = node.qq_ok(&["--timeout", "60", "upgrade_cluster", "--path", &name])?;
    eprintln!("xtask: node: qq upgrade_cluster: {}", out.trim());
    let (report, version, _) = node.wait_up()?;
    eprintln!(
        "xtask: node: upgraded in {:.1} s: {report:?}; qq version: {}",
        start.elapsed().as_secs_f64(),
        version.trim()
    );
    expect(report.release == "2.0.0", "release 2.0.0 booted")?;
    let hash = root_hash(lab.bundle("2.0.0"))?;
    expect(
        report.table.contains(&hash),
        &format!("root opened with 2.0.0's root hash: {}", report.table),
    )?;
    let status = node.qq_ok(&["upgrade_status"])?;
    expect(
        status.contains("UPGRADE_STATE_COMMITTED") || status.contains("COMMITTED"),
        &format!("upgrade_status COMMITTED: {status}"),
    )
}

pub fn main(work: &Path, accel: &str, firmware: &Path) -> Result<Vec<(String, Duration)>, String> {
    let total = Instant::now();
    let base = base::ensure(&target_dir().join("qemu-assets"))?;
    eprintln!("xtask: node: kernel {}", base.kernel_release);
    let work = work.join("node");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    crate::step(
        "the node's binaries",
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", "qimgd", "-p", "qq", "-p", "bootctl"]),
    )?;
    let key_files = imagebuild::keys::generate(&work.join("release")).map_err(|e| e.to_string())?;
    let key = imagebuild::keys::load_secret(&key_files.secret).map_err(|e| e.to_string())?;
    let public = std::fs::read_to_string(&key_files.public).map_err(|e| e.to_string())?;
    let shared = release::Shared::make(&work)?;
    let t = Instant::now();
    let mut bundles = vec![];
    for r in RELEASES {
        bundles.push((
            r.version,
            release::build(&base, &shared, &work, r, &key, &public)?,
        ));
    }
    eprintln!(
        "xtask: node: {} releases built in {:.1} s",
        bundles.len(),
        t.elapsed().as_secs_f64()
    );
    let lab = Lab {
        work: work.clone(),
        accel: accel.to_owned(),
        firmware: firmware.to_owned(),
        keys: TrustedKeys::new([key.public()]),
        bundles,
        ssh_key: shared.ssh_key(),
    };
    let mut times = vec![];
    let mut node = lab.node("life", "1.0.0")?;
    type Scenario = fn(&Lab, &mut Node) -> Result<(), String>;
    let list: [(&str, Scenario); 2] = [
        ("1: fresh disk boots slot A through verity", fresh_boot),
        (
            "2: platform upgrade over HTTPS, real reboot",
            platform_upgrade,
        ),
    ];
    for (name, f) in list {
        let t = Instant::now();
        f(&lab, &mut node).map_err(|e| {
            format!(
                "node scenario {name}: {e} (serial log {})",
                node.serial.display()
            )
        })?;
        times.push((name.to_owned(), t.elapsed()));
        eprintln!("xtask: node: {name}: {:.1} s", t.elapsed().as_secs_f64());
    }
    let _ = node.dir;
    eprintln!("xtask: node: total {:.1} s", total.elapsed().as_secs_f64());
    Ok(times)
}
