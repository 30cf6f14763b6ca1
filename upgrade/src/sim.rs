//! Simulated nodes, for tests and the demo.
//!
//! A simulated node is a directory: `node.toml` (`simulated = true`), `disk.img`
//! made by `imagebuild disk`, `efivars/` (the loader's variables, as efivarfs
//! files), `state/` and `keys/`. A simulated reboot does what the firmware and
//! systemd-boot would: stop the container (power off), select an entry with
//! bootctl's model of systemd-boot 252 and the loader variables, rename a counted
//! entry on the ESP inside the image (`+3-0` → `+2-1`), set `LoaderEntrySelected`
//! and `LoaderBootCountPath`, and "boot" the chosen slot's platform: its root
//! partition is read as the squashfs it must be, and a platform whose
//! `/etc/qimg/sim-boot` says `panic` fails to boot (the watchdog resets the node and
//! the loader tries again), while `unhealthy` boots but fails the health gate.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use bootctl::entries;
use bootctl::layout::Slot;
use bootctl::model::{self, EfiVars};
use qimg::{BundleReader, ComponentKind, NoProgress, Target};
use serde::{Deserialize, Serialize};

use crate::container::{Containers, RuntimeConfig};
use crate::node::{FirmwareConfig, Node, NodeConfig};
use crate::{Error, boot_err, io_err};

/// The file in a platform root that makes a simulated boot fail.
pub const SIM_BOOT: &str = "etc/qimg/sim-boot";
/// Boots tried before the simulated node gives up (a real node would loop).
pub const MAX_BOOTS: usize = 12;

/// One simulated boot attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The entry the loader chose (name before its rename).
    pub entry: String,
    /// Its slot.
    pub slot: Option<char>,
    /// What happened: `booted` or why it failed.
    pub outcome: String,
}

fn sim_err(reason: String) -> Error {
    Error::Reboot { reason }
}

/// What a slot's platform says about simulated boots (`None`: boots healthy).
pub fn platform_marker(node: &Node, slot: Slot) -> Result<Option<String>, String> {
    let mut dev = node.disk().map_err(|e| e.to_string())?;
    let t = bootctl::table::read(&mut dev).map_err(|e| e.to_string())?;
    let label = bootctl::slot::label(&t, slot).map_err(|e| e.to_string())?;
    if label == bootctl::layout::EMPTY {
        return Err(format!(
            "slot {} is _empty: no root file system",
            slot.letter()
        ));
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

/// The simulated platform health gate.
pub fn platform_health(node: &Node, slot: Slot) -> Result<(), String> {
    match platform_marker(node, slot)?.as_deref() {
        Some("unhealthy") => Err(format!(
            "platform in slot {} reports unhealthy ({SIM_BOOT})",
            slot.letter()
        )),
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

/// Reboots a simulated node until a platform boots (at most [`MAX_BOOTS`] tries).
pub fn reboot(node: &Node) -> Result<Vec<Attempt>, Error> {
    crate::container::runtime(&node.config.runtime, &node.config.state.join("run")).stop()?;
    let product = node.product()?;
    let vars = node.vars();
    let mut attempts = vec![];
    for _ in 0..MAX_BOOTS {
        let mut efi = efi_vars(&vars)?;
        let mut esp = node.esp()?;
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
        let entry = rename
            .as_ref()
            .map_or(booted.clone(), |(old, _)| old.clone());
        let slot = found[i].slot;
        let outcome = match slot {
            None => Err("not a slot entry".to_string()),
            Some(s) => match platform_marker(node, s) {
                Ok(Some(m)) if m == "panic" => Err(format!("kernel panic ({SIM_BOOT})")),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
        };
        attempts.push(Attempt {
            entry,
            slot: slot.map(Slot::letter),
            outcome: outcome.clone().err().unwrap_or_else(|| "booted".into()),
        });
        if outcome.is_ok() {
            new_boot_id(node)?;
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
    /// A disk image made by `imagebuild disk` (moved into the node directory).
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

/// Creates a simulated node: node.toml, the disk, efivars, keys; boots it once and
/// installs and starts the bundle's container as the factory container.
pub fn create(o: &CreateOptions) -> Result<Node, Error> {
    let d = o.dir;
    for sub in ["efivars", "state/sim", "keys"] {
        std::fs::create_dir_all(d.join(sub)).map_err(io_err("creating", d.join(sub)))?;
    }
    let disk = d.join("disk.img");
    if o.disk != disk {
        std::fs::rename(o.disk, &disk).map_err(io_err("moving the disk image to", &disk))?;
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
        runtime: RuntimeConfig::Process,
        firmware: o.firmware.clone(),
    };
    let text = toml::to_string(&config).map_err(|e| Error::Config {
        path: d.join(crate::node::CONFIG_FILE),
        reason: e.to_string(),
    })?;
    let cfg = d.join(crate::node::CONFIG_FILE);
    std::fs::write(&cfg, text).map_err(io_err("writing", &cfg))?;
    let node = Node::load(d)?;

    // The factory container, from the same (verified) bundle.
    let f = std::fs::File::open(o.bundle).map_err(io_err("opening", o.bundle))?;
    let berr = |source| Error::Bundle {
        path: o.bundle.to_owned(),
        source,
    };
    let (mut reader, _) =
        BundleReader::open_verified(BufReader::new(f), &node.keys()?).map_err(berr)?;
    let m = reader.manifest().clone();
    let containers = Containers::new(&node.config.state);
    let version = m.release.version.to_string();
    let mut staged = None;
    for c in &m.components {
        match &c.kind {
            ComponentKind::Container { verity, .. } => {
                let mut sink = containers.begin(&version, verity.hash_offset)?;
                reader
                    .next_component(&mut sink, &NoProgress)
                    .map_err(berr)?;
                staged = Some((sink, verity.root_hash.0));
            }
            _ => {
                reader
                    .next_component(std::io::sink(), &NoProgress)
                    .map_err(berr)?;
            }
        }
    }
    reader.finish(&NoProgress).map_err(berr)?;
    let (sink, root_hash) = staged.ok_or_else(|| Error::Refused {
        path: o.bundle.to_owned(),
        reason: "the bundle has no container".into(),
    })?;
    containers.finish(&version, sink, &root_hash, true)?;
    containers.activate(&version)?;
    reboot(&node)?;
    crate::commit::after_boot(&node, &crate::Silent)?;
    Ok(node)
}
