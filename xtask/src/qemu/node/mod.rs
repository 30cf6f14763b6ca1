//! A real node under QEMU: a Debian root (systemd, udev, the cloud kernel) in a
//! squashfs + dm-verity slot the kernel opens and enforces, `qimgd` inside, upgraded
//! from the host over HTTPS by `qq`. The scenarios (`scenarios.rs`) follow one node
//! through its life, as an operator would, and assert the serial console, the
//! API's answers and the ESP afterwards.

mod base;
pub mod cluster;
mod release;
mod scenarios;
mod switch;
mod vm;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bootctl::layout::Slot;
use qimg::TrustedKeys;

use crate::sshd::client_options as ssh_options;
use crate::target_dir;
use vm::Vm;

/// How long one boot may take, power on (or reboot) to the agent answering.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// The agent's upgrade directory on the node (`upgrade_dir` in qimgd.toml).
const UPGRADE_DIR: &str = "/var/lib/qimg/upgrade";

/// What a boot printed on the console (`qimg-node-report.service`).
#[derive(Debug)]
struct BootReport {
    release: String,
    root: String,
    table: String,
}

fn parse_report(line: &str) -> Option<BootReport> {
    use super::word;
    Some(BootReport {
        release: word(line, "release=")?,
        root: word(line, "root=")?,
        table: word(line, "table=")?.replace(',', " "),
    })
}

pub struct Node {
    disk: PathBuf,
    vars: PathBuf,
    serial: PathBuf,
    ssh_key: PathBuf,
    accel: String,
    creds: PathBuf,
    ports: (u16, u16),
    shape: vm::Shape,
    link: Option<vm::Link>,
    /// How long `qq` waits for each read or write: 10 s alone (while the guest
    /// reboots, QEMU's forwarded port still accepts connections, which then
    /// stall); in a cluster qq's default, 30 s (three VMs share two cores: a
    /// prepare relayed to another node took over 10 s to be accepted).
    qq_secs: u32,
    /// A file the next power-on attaches as a read-only disk, `/dev/vdb` (an
    /// installer's medium).
    medium: Option<PathBuf>,
    vm: Option<Vm>,
    /// Boots that reached the report on the console.
    boots: usize,
}

impl Node {
    fn power_on(&mut self) -> Result<(), String> {
        self.vm = Some(Vm::start(
            &self.accel,
            (&self.disk, &self.vars),
            &self.serial,
            self.ports,
            self.shape,
            self.link.as_ref(),
            self.medium.as_deref(),
        )?);
        Ok(())
    }

    /// Pulls the plug.
    fn power_off(&mut self) {
        if let Some(mut v) = self.vm.take() {
            v.kill();
        }
    }

    fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("powered on")
    }

    /// Runs our `qq` against the node's agent, each read or write waiting at most
    /// the node's `qq_secs`.
    fn qq(&self, args: &[&str]) -> Command {
        self.qq_waiting(self.qq_secs, args)
    }

    /// Runs our `qq` against the node's agent, each read or write waiting at
    /// most `secs`.
    fn qq_waiting(&self, secs: u32, args: &[&str]) -> Command {
        let mut c = Command::new(target_dir().join("debug/qq"));
        c.args(["--host", "127.0.0.1", "--port", &self.ports.0.to_string()])
            .args(["--timeout", &secs.to_string()])
            .arg("--credentials-store")
            .arg(&self.creds)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// A client of the node's agent, logged in (for polls faster than a `qq`
    /// process per look).
    fn client(&self) -> Result<qapi::Client, String> {
        let mut c = qapi::Client::new(
            qapi::Target::Tcp {
                host: "127.0.0.1".into(),
                port: self.ports.0,
            },
            qapi::Options {
                timeout: Duration::from_secs(u64::from(self.qq_secs)),
                ca: None,
                root_port: false,
                identity: None,
            },
        )
        .map_err(|e| e.to_string())?;
        let login: qapi::types::LoginResponse = c
            .post_json(
                "/v1/session/login",
                &qapi::types::LoginRequest {
                    username: release::USER.into(),
                    password: release::PASSWORD.into(),
                },
            )
            .map_err(|e| format!("login: {e}"))?;
        c.set_token(Some(login.bearer_token));
        Ok(c)
    }

    fn qq_out(&self, args: &[&str]) -> Result<Output, String> {
        self.qq(args).output().map_err(|e| format!("qq: {e}"))
    }

    fn qq_ok(&self, args: &[&str]) -> Result<String, String> {
        let o = self.qq_out(args)?;
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

    /// `qq upgrade_cluster finalize` through this node: the upgrade that
    /// committed is kept (its previous release may be overwritten), and the next
    /// one may start.
    fn finalize(&self) -> Result<(), String> {
        let out = self.qq_ok(&["upgrade_cluster", "finalize"])?;
        let f: qapi::rollback::Finality =
            serde_json::from_str(&out).map_err(|e| format!("finalize's JSON: {e}: {out}"))?;
        super::expect(
            !f.finalizable && f.finalized.is_some(),
            &format!("the upgrade is finalized: {out}"),
        )
    }

    /// `qq upgrade_status` as JSON.
    fn status(&self) -> Result<serde_json::Value, String> {
        let out = self.qq_ok(&["upgrade_status"])?;
        serde_json::from_str(&out).map_err(|e| format!("upgrade_status JSON: {e}: {out}"))
    }

    /// Runs a shell command on the node over SSH, as root.
    fn ssh(&self, command: &str) -> Result<String, String> {
        let o = Command::new("ssh")
            .args(ssh_options(&self.ssh_key))
            .args(["-p", &self.ports.1.to_string(), "root@127.0.0.1", command])
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

    /// Copies `from` (a file, or a directory with what is in it) to `to` on the
    /// node, as root over SSH.
    fn scp(&self, from: &Path, to: &str) -> Result<(), String> {
        let o = Command::new("scp")
            .args(ssh_options(&self.ssh_key))
            .args(["-q", "-r", "-P", &self.ports.1.to_string()])
            .arg(from)
            .arg(format!("root@127.0.0.1:{to}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("scp: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "scp {} to {to}: {}",
                from.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(())
    }

    /// Waits for the next boot's report on the console.
    fn wait_report(&mut self) -> Result<BootReport, String> {
        self.boots += 1;
        let n = self.boots;
        let line = self.vm().wait_console("QIMG-NODE-BOOT", n, BOOT_LIMIT)?;
        parse_report(&line).ok_or_else(|| format!("bad report line {line:?}"))
    }

    /// Waits for the next boot's report on the console, then for the agent to
    /// answer a login and `/v1/version`. Returns the report, the version answer and
    /// the time it took.
    fn wait_up(&mut self) -> Result<(BootReport, String, Duration), String> {
        let start = Instant::now();
        let report = self.wait_report()?;
        loop {
            let login = self.qq_out(&["login", "-u", release::USER, "-p", release::PASSWORD])?;
            // The agent may go down between the two (a node that boots again at
            // once, as in a cluster's rollback): asked again until the limit.
            let version = login
                .status
                .success()
                .then(|| self.qq_out(&["version"]))
                .transpose()?
                .filter(|v| v.status.success());
            if let Some(v) = version {
                let v = String::from_utf8_lossy(&v.stdout).into_owned();
                let took = start.elapsed();
                // The operator's SSH too (bundles are copied with scp): sshd can come
                // up after the agent.
                while let Err(e) = self.ssh("true") {
                    if start.elapsed() > BOOT_LIMIT {
                        return Err(format!("sshd did not answer within {BOOT_LIMIT:?}: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                return Ok((report, v, took));
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

    /// Waits for the next boot and the agent (`wait_up`), and checks that it
    /// booted `version` through verity with that bundle's root hash and that the
    /// agent answers with it.
    fn booted(&mut self, lab: &Lab, version: &str) -> Result<(), String> {
        let (report, answer, _) = self.wait_up()?;
        let hash = root_hash(lab.bundle(version))?;
        super::expect(
            report.release == version && report.table.contains(&hash),
            &format!("booted {version} with its root hash {hash}: {report:?}"),
        )?;
        super::expect(
            answer.contains(&format!("qimg-node {version}")),
            &format!("qq version: {answer}"),
        )
    }

    /// The slots as `qbootctl --image DISK --json status` reads them from the disk
    /// (the ESP and labels the node wrote, synced).
    fn esp_status(&self) -> Result<bootctl::status::Status, String> {
        super::qbootctl_status(&self.disk)
    }

    /// Byte offset of `slot`'s root partition on the disk.
    fn root_offset(&self, slot: Slot) -> Result<u64, String> {
        let mut f = File::open(&self.disk).map_err(|e| e.to_string())?;
        let t = bootctl::table::read(&mut f).map_err(|e| e.to_string())?;
        let roots = t.of_type(bootctl::layout::ROOT_TYPE);
        let (_, p) = roots
            .get(if slot == Slot::A { 0 } else { 1 })
            .ok_or("no root partition for the slot")?;
        Ok(p.first_lba * 512)
    }

    /// Block 0 of `slot`'s root (the squashfs superblock) changed on the disk
    /// behind the node's back, as a failing or tampered disk would; the hash
    /// tree is untouched, so only the kernel's dm-verity can see it.
    fn damage_root(&self, slot: Slot) -> Result<(), String> {
        use std::io::{Seek, SeekFrom, Write};
        let at = self.root_offset(slot)?;
        let mut f = File::options()
            .write(true)
            .open(&self.disk)
            .map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        f.write_all(&[0xa5; 4096]).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())
    }
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

    /// A node with a fresh disk of `version` in slot A, powered off.
    fn node(&self, name: &str, version: &str) -> Result<Node, String> {
        self.node_shaped(name, version, vm::ALONE, None)
    }

    /// A node of `shape`, on `link` if it is given.
    fn node_shaped(
        &self,
        name: &str,
        version: &str,
        shape: vm::Shape,
        link: Option<vm::Link>,
    ) -> Result<Node, String> {
        let dir = self.work.join(name);
        let (disk, vars) = super::fresh_disk(
            &dir,
            self.bundle(version),
            &self.keys,
            &self.firmware,
            (192, 256, 1024),
        )?;
        Ok(Node {
            serial: dir.join("serial.log"),
            creds: dir.join("credentials"),
            ssh_key: self.ssh_key.clone(),
            disk,
            vars,
            accel: self.accel.clone(),
            ports: (vm::free_port()?, vm::free_port()?),
            qq_secs: if link.is_some() { 30 } else { 10 },
            shape,
            link,
            medium: None,
            vm: None,
            boots: 0,
        })
    }

    /// `version`'s bundle as an installer's medium (`Node::medium`): a tar of
    /// 512-byte blocks, so the disk QEMU makes of it is the whole file.
    fn installer_medium(&self, version: &str) -> Result<PathBuf, String> {
        let bundle = self.bundle(version);
        let size = std::fs::metadata(bundle)
            .map_err(|e| format!("{}: {e}", bundle.display()))?
            .len();
        super::expect(size % 512 == 0, "a bundle is whole 512-byte blocks")?;
        Ok(bundle.to_owned())
    }

    /// Copies a bundle into the node's upgrade directory with scp, as an operator
    /// would; returns its `image_path`.
    fn offer(&self, node: &Node, version: &str) -> Result<String, String> {
        let name = format!("{version}.qimg");
        let start = Instant::now();
        // An operator keeps the bundle being installed, not every old one.
        node.ssh(&format!(
            "mkdir -p {UPGRADE_DIR} && rm -f {UPGRADE_DIR}/*.qimg"
        ))?;
        node.scp(self.bundle(version), &format!("{UPGRADE_DIR}/{name}"))?;
        // A finished copy is on disk, as an SMB or NFS copy to a cluster is when it
        // closes: scp leaves it to writeback, and a power cut within 30 s (scenario
        // 6) then left the bundle with zeros, which prepare rightly refused.
        node.ssh(&format!("sync {UPGRADE_DIR}/{name}"))?;
        eprintln!(
            "xtask: node: {name} copied onto the node in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(name)
    }
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

/// Builds the base (cached), the node's binaries and `releases` in `work`.
fn lab(
    work: &Path,
    accel: &str,
    firmware: &Path,
    releases: &[release::Release],
) -> Result<Lab, String> {
    let base = base::ensure(&target_dir().join("qemu-assets"))?;
    eprintln!("xtask: node: kernel {}", base.kernel_release);
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    crate::build_bins("the node's binaries")?;
    let key_files = imagebuild::keys::generate(&work.join("release")).map_err(|e| e.to_string())?;
    let key = imagebuild::keys::load_secret(&key_files.secret).map_err(|e| e.to_string())?;
    let public = std::fs::read_to_string(&key_files.public).map_err(|e| e.to_string())?;
    let shared = release::Shared::make(work)?;
    let t = Instant::now();
    let mut bundles = vec![];
    for r in releases {
        bundles.push((
            r.version,
            release::build(&base, &shared, work, r, &key, &public)?,
        ));
    }
    eprintln!(
        "xtask: node: {} releases built in {:.1} s",
        bundles.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(Lab {
        work: work.to_owned(),
        accel: accel.to_owned(),
        firmware: firmware.to_owned(),
        keys: TrustedKeys::new([key.public()]),
        bundles,
        ssh_key: shared.ssh_key(),
    })
}

/// Builds the lab, then runs the scenarios on one node. Returns each scenario's
/// time.
pub fn main(work: &Path, accel: &str, firmware: &Path) -> Result<Vec<(String, Duration)>, String> {
    let total = Instant::now();
    let lab = lab(&work.join("node"), accel, firmware, scenarios::RELEASES)?;
    let mut node = lab.node("life", "1.0.0")?;
    let times = scenarios::run(&lab, &mut node)?;
    node.power_off();
    eprintln!(
        "xtask: node: passed; total {:.1} s",
        total.elapsed().as_secs_f64()
    );
    Ok(times)
}

/// Builds the lab, then runs the cluster's scenarios numbered in `pick` on
/// three nodes (`cluster/`). Returns each scenario's time.
pub fn cluster_main(
    work: &Path,
    accel: &str,
    firmware: &Path,
    pick: &[usize],
) -> Result<Vec<(String, Duration)>, String> {
    let total = Instant::now();
    let lab = lab(&work.join("cluster"), accel, firmware, cluster::RELEASES)?;
    let times = cluster::run(&lab, pick)?;
    eprintln!(
        "xtask: cluster: passed; total {:.1} s",
        total.elapsed().as_secs_f64()
    );
    Ok(times)
}
