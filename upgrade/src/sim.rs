//! Simulated nodes, for tests and the demo.
//!
//! A simulated node is a directory: `node.toml` (`simulated = true`), `disk.img`
//! made by `imagebuild disk`, `efivars/` (the loader's variables, as efivarfs
//! files), `state/` and `keys/`.
//!
//! [`SimMachine`] is its [`Machine`]: `reboot` powers the node off (stops the
//! container), records that a reboot is due and returns, as `systemctl reboot`
//! does. The hardware is played by [`run_boots`], called by whoever runs the
//! simulation (`qq` after a commit, tests): for each due reboot it boots the firmware
//! ([`boot_firmware`]) and then runs the boot path, [`Agent::after_boot`], the same
//! function `qq boot_check` runs on a real node. The firmware boot does what
//! systemd-boot would: select an entry with
//! bootctl's model of systemd-boot 252 and the loader variables, rename a counted
//! entry on the ESP inside the image (`+3-0` → `+2-1`), set `LoaderEntrySelected`
//! and `LoaderBootCountPath`, and "boot" the chosen slot's platform: its root
//! partition is read as the squashfs it must be, and a platform whose
//! `/etc/qimg/sim-boot` says `panic` fails to boot (the watchdog resets the node and
//! the loader tries again; the panic's kernel log is archived in the node's
//! `pstore` directory, as `efi_pstore` and systemd-pstore would), while `unhealthy`
//! boots but fails the health gate.
//! A node's own `state/sim/faults` ([`FAULTS`]) does the same for one node only.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use bootctl::entries;
use bootctl::layout::Slot;
use bootctl::model::{self, EfiVars};
use qimg::{NoProgress, Target};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::container::RuntimeConfig;
use crate::error::{Error, Unhealthy, boot_err, io_err};
use crate::machine::{Machine, read_boot_id};
use crate::node::{FirmwareConfig, Node, NodeConfig};
use crate::state::BootId;

/// The file in a platform root that makes a simulated boot fail.
pub const SIM_BOOT: &str = "etc/qimg/sim-boot";
pub use crate::machine::MAX_BOOTS;

/// One simulated boot attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The entry the loader chose (name before its rename).
    pub entry: String,
    /// Its slot.
    pub slot: Option<Slot>,
    /// What happened: `booted` or why it failed.
    pub outcome: String,
}

fn sim_err(problem: String) -> Error {
    Error::Booted { problem }
}

/// The machine of a simulated node.
pub struct SimMachine {
    node: Node,
}

impl SimMachine {
    /// The machine of simulated node `node`.
    pub fn new(node: &Node) -> SimMachine {
        SimMachine { node: node.clone() }
    }
}

fn due_file(node: &Node) -> PathBuf {
    node.config.state.join("sim/reboot-due")
}

/// True when the simulated node was asked to reboot and has not booted since.
pub fn reboot_due(node: &Node) -> bool {
    due_file(node).exists()
}

impl Machine for SimMachine {
    fn boot_id(&self) -> Result<BootId, Error> {
        read_boot_id(&self.node.config.boot_id)
    }

    fn reboot(&self) -> Result<(), Error> {
        // Power off: nothing keeps running through a reboot.
        crate::container::runtime(
            &self.node.config.runtime,
            &self.node.config.state.join("run"),
        )
        .stop()?;
        let p = due_file(&self.node);
        qutil::fs::write_atomic(&p, b"due\n").map_err(io_err("writing", &p))
    }

    fn reboot_pending(&self) -> bool {
        reboot_due(&self.node)
    }

    fn platform_health(&self, slot: Slot) -> Result<(), Unhealthy> {
        platform_health(&self.node, slot)
    }

    fn kept_logs(&self) -> crate::pstore::KeptLogs {
        crate::pstore::kept(&self.node.config.pstore)
    }

    fn failed_boot_reason(&self, before: &crate::pstore::KeptLogs) -> Option<String> {
        crate::pstore::new_panic(&self.node.config.pstore, before)
    }

    fn power(&self) -> Option<&dyn crate::machine::Power> {
        Some(self)
    }
}

impl crate::machine::Power for SimMachine {
    fn boot(&self) -> Result<(), Error> {
        boot_firmware(&self.node).map(|_| ())
    }
}

/// What a slot's platform says about simulated boots (`None`: boots healthy).
pub fn platform_marker(node: &Node, slot: Slot) -> Result<Option<String>, Unhealthy> {
    marker(node, slot).map_err(Unhealthy)
}

fn marker(node: &Node, slot: Slot) -> Result<Option<String>, String> {
    let mut dev = std::fs::File::open(&node.config.disk)
        .map_err(|e| format!("{}: {e}", node.config.disk.display()))?;
    let t = bootctl::table::read(&mut dev).map_err(|e| e.to_string())?;
    let label = bootctl::slot::label(&t, slot).map_err(|e| e.to_string())?;
    if label == bootctl::layout::EMPTY {
        return Err(format!(
            "slot {} is _empty: no root file system",
            slot.letter()
        ));
    }
    // This node's own hardware fault with that platform, if the test gave it one.
    if let Some((_, version)) = bootctl::layout::split_slot_label(&label)
        && let Some(kind) = node_fault(node, version)
    {
        return Ok(Some(kind));
    }
    let parts = bootctl::slot::parts(&t, slot).map_err(|e| e.to_string())?;
    let fs = backhand::FilesystemReader::from_reader_with_offset(BufReader::new(dev), parts.root.1)
        .map_err(|e| format!("slot {}: no squashfs root: {e}", slot.letter()))?;
    let want = Path::new("/").join(SIM_BOOT);
    for n in fs.files() {
        if n.fullpath == want
            && let backhand::InnerNode::File(f) = &n.inner
        {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut fs.file(f).reader(), &mut text)
                .map_err(|e| format!("reading {SIM_BOOT}: {e}"))?;
            return Ok(Some(text.trim().to_owned()));
        }
    }
    Ok(None)
}

/// The file of a simulated node's hardware faults: lines `PLATFORM_VERSION KIND`
/// (`panic` or `unhealthy`), as if a driver of this node's hardware failed with
/// that platform. Lets one node of a cluster fail where the others, booting the
/// same bundle, do not.
pub const FAULTS: &str = "sim/faults";

fn node_fault(node: &Node, version: &str) -> Option<String> {
    let text = std::fs::read_to_string(node.config.state.join(FAULTS)).ok()?;
    text.lines().find_map(|l| {
        let (v, kind) = l.trim().split_once(' ')?;
        (v == version).then(|| kind.trim().to_owned())
    })
}

/// The simulated platform health gate.
pub fn platform_health(node: &Node, slot: Slot) -> Result<(), Unhealthy> {
    match platform_marker(node, slot)?.as_deref() {
        Some("unhealthy") => Err(Unhealthy(format!(
            "platform in slot {slot} reports unhealthy ({SIM_BOOT})"
        ))),
        _ => Ok(()),
    }
}

fn efi_vars(vars: &bootctl::efivars::LoaderVars) -> Result<EfiVars, Error> {
    let get = |n: &str| vars.get(n).map_err(boot_err("reading loader variables"));
    Ok(EfiVars {
        entry_oneshot: get("LoaderEntryOneShot")?,
        entry_default: get("LoaderEntryDefault")?,
        entry_last_booted: get("LoaderEntryLastBooted")?,
    })
}

/// Boots a simulated node's firmware until a platform boots (at most
/// [`MAX_BOOTS`] tries): the due reboot is done, the boot id changes.
pub fn boot_firmware(node: &Node) -> Result<Vec<Attempt>, Error> {
    let vars = node.vars();
    let mut attempts = vec![];
    for _ in 0..MAX_BOOTS {
        let mut efi = efi_vars(&vars)?;
        let opened = node.open()?;
        let product = opened.product.clone();
        let mut esp = opened.esp;
        let found = entries::scan(esp.as_mut(), &product).map_err(boot_err("scanning entries"))?;
        let conf = entries::loader_conf(esp.as_mut()).map_err(boot_err("reading loader.conf"))?;
        let mut plain: Vec<model::Entry> = found.iter().map(|e| e.entry.clone()).collect();
        let (sel, rename) = model::boot(&mut plain, &conf, &mut efi);
        let Some(i) = sel.chosen else {
            return Err(sim_err(format!(
                "no boot entry: the node does not boot (tried {attempts:?})"
            )));
        };
        if efi.entry_oneshot.is_none() {
            vars.remove("LoaderEntryOneShot")
                .map_err(boot_err("consuming LoaderEntryOneShot"))?;
        }
        let booted = plain[i].file.clone();
        if let Some((old, new)) = &rename {
            esp.rename(
                &format!("{}/{old}", entries::LINUX_DIR),
                &format!("{}/{new}", entries::LINUX_DIR),
            )
            .map_err(boot_err("renaming the entry (boot counting)"))?;
            esp.flush().map_err(boot_err("flushing the ESP"))?;
            vars.set("LoaderBootCountPath", &format!("\\EFI\\Linux\\{new}"))
                .map_err(boot_err("setting LoaderBootCountPath"))?;
        } else {
            vars.remove("LoaderBootCountPath")
                .map_err(boot_err("clearing LoaderBootCountPath"))?;
        }
        vars.set("LoaderEntrySelected", &plain[i].id)
            .map_err(boot_err("setting LoaderEntrySelected"))?;
        drop(esp);
        drop(opened.disk);
        let entry = rename
            .as_ref()
            .map_or(booted.clone(), |(old, _)| old.clone());
        let slot = found[i].slot;
        let outcome = match slot {
            None => Err("not a slot entry".to_string()),
            Some(s) => match platform_marker(node, s) {
                Ok(Some(m)) if m == "panic" => {
                    keep_panic_log(node, s)?;
                    Err(format!("kernel panic ({SIM_BOOT})"))
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.0),
            },
        };
        attempts.push(Attempt {
            entry,
            slot,
            outcome: outcome.clone().err().unwrap_or_else(|| "booted".into()),
        });
        if outcome.is_ok() {
            new_boot_id(node)?;
            let due = due_file(node);
            if due.exists() {
                std::fs::remove_file(&due).map_err(io_err("removing", &due))?;
            }
            let log = node.config.state.join("sim/boots.jsonl");
            let mut line = serde_json::to_vec(&attempts).expect("serializable");
            line.push(b'\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(io_err("appending to", &log))?;
            std::io::Write::write_all(&mut f, &line).map_err(io_err("appending to", &log))?;
            return Ok(attempts);
        }
    }
    Err(sim_err(format!(
        "no platform booted in {MAX_BOOTS} tries: {attempts:?}"
    )))
}

/// The kernel log of a simulated panic in `slot`'s platform, archived as
/// systemd-pstore does at the next boot that reaches userspace (`<pstore>/<record
/// id>/dmesg.txt`; the id, like efi_pstore's, from the time). A simulated node has
/// no userspace in between, so it is archived at once.
fn keep_panic_log(node: &Node, slot: Slot) -> Result<(), Error> {
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = node.config.pstore.join(id.to_string());
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let log = format!(
        "<6>[    0.100000] Linux version (simulated)\n\
         <3>[    0.400000] {SIM_BOOT}: the platform in slot {slot} panics\n\
         <0>[    0.400100] Kernel panic - not syncing: simulated platform panic\n"
    );
    let p = dir.join("dmesg.txt");
    qutil::fs::write_atomic(&p, log.as_bytes()).map_err(io_err("writing", &p))
}

fn new_boot_id(node: &Node) -> Result<(), Error> {
    let p = &node.config.boot_id;
    let n = std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().strip_prefix("sim-boot-")?.parse::<u64>().ok())
        .unwrap_or(0);
    std::fs::write(p, format!("sim-boot-{}\n", n + 1)).map_err(io_err("writing", p))
}

/// What a simulated node is made from.
pub struct CreateOptions<'a> {
    /// The node directory (created).
    pub dir: &'a Path,
    /// A disk image made by `imagebuild disk` (copied into the node directory).
    pub disk: &'a Path,
    /// The bundle the image was made from: its container is the factory container.
    pub bundle: &'a Path,
    /// Trusted public keys (copied into the node).
    pub keys: &'a [PathBuf],
    /// Hardware model.
    pub model: &'a str,
    /// onprem or cloud.
    pub target: Target,
    /// Firmware devices, if the node has any.
    pub firmware: Option<FirmwareConfig>,
    /// Health timeout in seconds.
    pub health_timeout_secs: u64,
}

/// Creates a simulated node in `dir`: node.toml, a copy of the disk (sparse,
/// reflinked where the file system can; a disk already at `dir/disk.img` is used in
/// place), efivars, keys; boots it once and installs and starts the bundle's
/// container as the factory container. On failure everything it created is removed
/// again and the inputs are untouched.
pub fn create(o: &CreateOptions) -> Result<Node, Error> {
    let d = o.dir;
    let disk = d.join("disk.img");
    let in_place =
        disk.exists() && std::fs::canonicalize(&disk).ok() == std::fs::canonicalize(o.disk).ok();
    let mut ours: Vec<PathBuf> = ["efivars", "state", "keys", crate::node::CONFIG_FILE]
        .iter()
        .map(|p| d.join(p))
        .filter(|p| !p.exists())
        .collect();
    if !in_place {
        ours.push(disk.clone());
    }
    let created_dir = !d.exists();
    create_in(o, in_place).inspect_err(|_| {
        if created_dir {
            let _ = std::fs::remove_dir_all(d);
            return;
        }
        for p in &ours {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    })
}

fn create_in(o: &CreateOptions, in_place: bool) -> Result<Node, Error> {
    let d = o.dir;
    for sub in ["efivars", "state/sim", "keys"] {
        std::fs::create_dir_all(d.join(sub)).map_err(io_err("creating", d.join(sub)))?;
    }
    let disk = d.join("disk.img");
    if !in_place {
        qutil::fs::copy_sparse(o.disk, &disk)
            .map_err(io_err("copying the disk image to", &disk))?;
    }
    let mut keys = vec![];
    for (i, k) in o.keys.iter().enumerate() {
        let to = PathBuf::from(format!("keys/{i}.pub"));
        std::fs::copy(k, d.join(&to)).map_err(io_err("copying key", k))?;
        keys.push(to);
    }
    let config = NodeConfig {
        model: o.model.to_owned(),
        target: o.target,
        disk: "disk.img".into(),
        esp: None,
        efivars: "efivars".into(),
        state: "state".into(),
        keys,
        simulated: true,
        reboot: vec!["true".into()],
        platform_health: None,
        health_timeout_secs: o.health_timeout_secs,
        boot_id: "state/sim/boot_id".into(),
        pstore: "state/sim/pstore".into(),
        runtime: RuntimeConfig::Process,
        firmware: o.firmware.clone(),
    };
    let text = toml::to_string(&config).expect("a node config always serializes");
    let cfg = d.join(crate::node::CONFIG_FILE);
    std::fs::write(&cfg, text).map_err(io_err("writing", &cfg))?;
    let node = Node::load(d)?;

    // The factory container, from the same (verified) bundle.
    crate::factory::install_container(&node, o.bundle, |_| Ok(()))?;
    // Power on: the firmware boots, then the boot path starts the container.
    boot_firmware(&node)?;
    Agent::new(node.clone(), crate::machine_for(&node)).after_boot(&NoProgress)?;
    Ok(node)
}
