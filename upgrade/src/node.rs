//! A node: its configuration (`node.toml`) and what it runs now.
//!
//! ```toml
//! model = "q-24t"                 # hardware model, checked against the bundle
//! target = "onprem"               # or "cloud" (no firmware flashing)
//! disk = "/dev/nvme0n1"           # the boot disk, or a disk image (simulated node)
//! esp = "/efi"                    # optional: the mounted ESP; default: inside `disk`
//! efivars = "/sys/firmware/efi/efivars"
//! state = "/var/lib/qimg"         # upgrade state, staged containers
//! keys = ["/etc/qimg/release.pub"]
//! simulated = false               # true: simulated reboots (see `sim`)
//! reboot = ["systemctl", "reboot"]
//! platform_health = ["systemctl", "is-system-running", "--wait"]
//! health_timeout_secs = 30
//! boot_id = "/proc/sys/kernel/random/boot_id"
//! [runtime]
//! kind = "nspawn"                 # or "process"
//! [firmware]                      # optional, on-prem: qfirmware's device config
//! devices = "/etc/qimg/firmware.json"
//! sysroot = "/"
//! ```
//!
//! Relative paths are relative to the file's directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use bootctl::efivars::LoaderVars;
use bootctl::esp::{DirEsp, Esp, ImageEsp};
use bootctl::layout::Slot;
use qimg::{PublicKey, Target, TrustedKeys};
use serde::{Deserialize, Serialize};

use crate::container::RuntimeConfig;
use crate::{Error, boot_err, io_err};

/// Where `qq` looks without `--node`.
pub const DEFAULT_CONFIG: &str = "/etc/qimg/node.toml";
/// The file name of a node's configuration inside a node directory.
pub const CONFIG_FILE: &str = "node.toml";

fn default_efivars() -> PathBuf {
    bootctl::efivars::EFIVARS.into()
}
fn default_state() -> PathBuf {
    "/var/lib/qimg".into()
}
fn default_reboot() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_health_timeout() -> u64 {
    30
}
fn default_boot_id() -> PathBuf {
    "/proc/sys/kernel/random/boot_id".into()
}

/// Firmware flashing during prepare (on-prem nodes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareConfig {
    /// qfirmware's device configuration (probes and backends).
    pub devices: PathBuf,
    /// Root of sysfs/procfs for the inventory.
    #[serde(default = "root")]
    pub sysroot: PathBuf,
}

fn root() -> PathBuf {
    "/".into()
}

/// `node.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Hardware model.
    pub model: String,
    /// onprem or cloud.
    pub target: Target,
    /// Boot disk or disk image.
    pub disk: PathBuf,
    /// Mounted ESP directory; `None`: the ESP inside `disk`.
    #[serde(default)]
    pub esp: Option<PathBuf>,
    /// efivarfs.
    #[serde(default = "default_efivars")]
    pub efivars: PathBuf,
    /// State directory.
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// Public keys bundles must be signed with.
    pub keys: Vec<PathBuf>,
    /// Simulated reboots and platform health (tests, demo).
    #[serde(default)]
    pub simulated: bool,
    /// The reboot command of a real node.
    #[serde(default = "default_reboot")]
    pub reboot: Vec<String>,
    /// The platform health command of a real node (exit 0 = healthy).
    #[serde(default)]
    pub platform_health: Option<Vec<String>>,
    /// How long a new container or platform may take to become healthy.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// The kernel's boot id (changes at every boot).
    #[serde(default = "default_boot_id")]
    pub boot_id: PathBuf,
    /// How containers run.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Firmware flashing, when the node has devices to flash.
    #[serde(default)]
    pub firmware: Option<FirmwareConfig>,
}

/// A node ready to act on.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its configuration, paths resolved.
    pub config: NodeConfig,
    /// Where the configuration came from.
    pub config_path: PathBuf,
}

/// What the node runs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// The product the slots belong to.
    pub product: String,
    /// The booted slot.
    pub slot: Slot,
    /// The booted entry file.
    pub entry: String,
    /// The booted slot's platform version (from its partition label).
    pub platform_version: String,
    /// The installed release (the active container's version).
    pub version: Option<String>,
}

impl Node {
    /// Loads `node.toml` (`path` may be the file or its directory).
    pub fn load(path: &Path) -> Result<Node, Error> {
        let file = if path.is_dir() {
            path.join(CONFIG_FILE)
        } else {
            path.to_owned()
        };
        let cerr = |reason: String| Error::Config {
            path: file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| cerr(e.to_string()))?;
        let mut c: NodeConfig = toml::from_str(&text).map_err(|e| cerr(e.to_string()))?;
        // Absolute, so paths stay right for processes started elsewhere.
        let base = std::path::absolute(file.parent().unwrap_or(Path::new(".")))
            .map_err(|e| cerr(e.to_string()))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.disk);
        abs(&mut c.efivars);
        abs(&mut c.state);
        abs(&mut c.boot_id);
        if let Some(e) = c.esp.as_mut() {
            abs(e);
        }
        c.keys.iter_mut().for_each(abs);
        if let Some(f) = c.firmware.as_mut() {
            abs(&mut f.devices);
            abs(&mut f.sysroot);
        }
        if c.keys.is_empty() {
            return Err(cerr("keys: at least one trusted key is needed".into()));
        }
        if c.reboot.is_empty() {
            return Err(cerr("reboot: empty command".into()));
        }
        Ok(Node {
            config: c,
            config_path: file,
        })
    }

    /// The trusted keys.
    pub fn keys(&self) -> Result<TrustedKeys, Error> {
        let mut keys = vec![];
        for p in &self.config.keys {
            let text = std::fs::read_to_string(p).map_err(io_err("reading key", p))?;
            keys.push(PublicKey::from_file_text(&text).map_err(|e| Error::Config {
                path: p.clone(),
                reason: format!("not a public key: {e}"),
            })?);
        }
        Ok(TrustedKeys::new(keys))
    }

    /// The state store.
    pub fn store(&self) -> Result<crate::state::Store, Error> {
        crate::state::Store::open(&self.config.state)
    }

    /// Opens the boot disk for reading and writing.
    pub fn disk(&self) -> Result<File, Error> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.config.disk)
            .map_err(io_err("opening disk", &self.config.disk))
    }

    /// The ESP: the mounted directory, or the FAT inside the disk.
    pub fn esp(&self) -> Result<Box<dyn Esp>, Error> {
        if let Some(dir) = &self.config.esp {
            return Ok(Box::new(DirEsp::new(dir)));
        }
        let mut dev = self.disk()?;
        let t = bootctl::table::read(&mut dev).map_err(boot_err("reading the partition table"))?;
        let (start, len) = t.esp_range().ok_or_else(|| Error::Config {
            path: self.config.disk.clone(),
            reason: "the disk has no ESP".into(),
        })?;
        Ok(Box::new(
            ImageEsp::open(dev, start, len).map_err(boot_err("opening the ESP"))?,
        ))
    }

    /// The loader's variables.
    pub fn vars(&self) -> LoaderVars {
        LoaderVars::new(&self.config.efivars)
    }

    /// The product the disk's slots belong to (from the ESP's layout record).
    pub fn product(&self) -> Result<String, Error> {
        let mut esp = self.esp()?;
        Ok(bootctl::status::layout_record(esp.as_mut())
            .map_err(boot_err("reading the layout record"))?
            .product)
    }

    /// The kernel's boot id.
    pub fn boot_id(&self) -> Result<String, Error> {
        let p = &self.config.boot_id;
        Ok(std::fs::read_to_string(p)
            .map_err(io_err("reading boot id", p))?
            .trim()
            .to_owned())
    }

    /// A slot's partition label.
    pub fn slot_label(&self, slot: Slot) -> Result<String, Error> {
        let mut dev = self.disk()?;
        let t = bootctl::table::read(&mut dev).map_err(boot_err("reading the partition table"))?;
        bootctl::slot::label(&t, slot).map_err(boot_err("reading slot labels"))
    }

    /// What the node runs now: the booted entry (from the loader's variables), its
    /// slot and platform version, and the active container's release.
    pub fn running(&self) -> Result<Running, Error> {
        let product = self.product()?;
        let entry = self
            .vars()
            .booted_entry()
            .map_err(boot_err("reading the loader's variables"))?
            .ok_or_else(|| Error::Reboot {
                reason: "the loader did not say which entry booted (no LoaderEntrySelected)".into(),
            })?;
        let mut esp = self.esp()?;
        let found = bootctl::entries::scan(esp.as_mut(), &product)
            .map_err(boot_err("reading boot entries"))?;
        // After a bless (or mark-bad) the entry's name no longer has the counter the
        // loader recorded: match on the name without its counter.
        let stem = |f: &str| {
            bootctl::counter::EntryName::parse(f, ".efi")
                .map(|n| n.stem.to_lowercase())
                .unwrap_or_else(|| f.to_lowercase())
        };
        let slot = found
            .iter()
            .find(|e| e.entry.file.eq_ignore_ascii_case(&entry))
            .or_else(|| found.iter().find(|e| stem(&e.entry.file) == stem(&entry)))
            .and_then(|e| e.slot)
            .ok_or_else(|| Error::Reboot {
                reason: format!("the booted entry {entry} is not a slot entry on the ESP"),
            })?;
        let label = self.slot_label(slot)?;
        let platform_version = label
            .strip_prefix(&format!("{product}_"))
            .ok_or_else(|| Error::Reboot {
                reason: format!(
                    "booted slot {} is labelled {label:?}, not {product}_<version>",
                    slot.letter()
                ),
            })?
            .to_owned();
        let version = crate::container::Containers::new(&self.config.state)
            .installed()?
            .active;
        Ok(Running {
            product,
            slot,
            entry,
            platform_version,
            version,
        })
    }
}
