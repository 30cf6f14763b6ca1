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
//! reboot = ["systemctl", "reboot", "--no-block"]  # queued: returns at once
//! platform_health = ["systemctl", "is-system-running", "--wait"]
//! health_timeout_secs = 30
//! boot_id = "/proc/sys/kernel/random/boot_id"
//! pstore = "/var/lib/systemd/pstore"  # archived kernel crash logs (see `pstore`)
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
use qimg::{PublicKey, Target, TrustedKeys, Version};
use serde::{Deserialize, Serialize};

use crate::container::RuntimeConfig;
use crate::error::{Error, boot_err, io_err};

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
/// Queued, not waited for: a `systemctl reboot` that waits is killed with the
/// agent's service as the shutdown stops it, and its "failure" would be
/// reported as the commit's.
fn default_reboot() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into(), "--no-block".into()]
}
fn default_health_timeout() -> u64 {
    30
}
fn default_boot_id() -> PathBuf {
    "/proc/sys/kernel/random/boot_id".into()
}
fn default_pstore() -> PathBuf {
    "/var/lib/systemd/pstore".into()
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
    /// Where systemd-pstore archives the kernel's crash logs: read for why a new
    /// slot's tries ran out ([`crate::pstore`]).
    #[serde(default = "default_pstore")]
    pub pstore: PathBuf,
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
    pub platform_version: Version,
    /// The installed release (the active container's version).
    pub version: Option<Version>,
}

/// A node's boot disk and ESP, opened once for one operation and passed down.
pub struct Opened {
    /// The boot disk (or disk image); its `flush` is `fdatasync`.
    pub disk: bootctl::device::Durable,
    /// The ESP.
    pub esp: Box<dyn Esp>,
    /// The product the slots belong to (from the ESP's layout record).
    pub product: String,
    disk_path: PathBuf,
}

impl Opened {
    /// The partition table, read from the open disk.
    pub fn table(&mut self) -> Result<bootctl::table::Table, Error> {
        bootctl::table::read(&mut self.disk).map_err(boot_err("reading the partition table"))
    }

    /// A slot's partition label.
    pub fn slot_label(&mut self, slot: Slot) -> Result<String, Error> {
        let t = self.table()?;
        bootctl::slot::label(&t, slot).map_err(boot_err("reading slot labels"))
    }

    /// Flushes the disk to stable storage.
    pub fn sync(&self) -> Result<(), Error> {
        self.disk
            .0
            .sync_all()
            .map_err(io_err("syncing", &self.disk_path))
    }
}

impl Node {
    /// Loads `node.toml` (`path` may be the file or its directory).
    pub fn load(path: &Path) -> Result<Node, Error> {
        let file = if path.is_dir() {
            path.join(CONFIG_FILE)
        } else {
            path.to_owned()
        };
        let cerr = |problem: String| Error::Config {
            path: file.clone(),
            problem,
        };
        let text = std::fs::read_to_string(&file).map_err(io_err("reading node config", &file))?;
        let mut c: NodeConfig = toml::from_str(&text).map_err(|source| Error::ConfigSyntax {
            path: file.clone(),
            source,
        })?;
        // Absolute, so paths stay right for processes started elsewhere.
        let base = std::path::absolute(file.parent().unwrap_or(Path::new(".")))
            .map_err(io_err("resolving the directory of", &file))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.disk);
        abs(&mut c.efivars);
        abs(&mut c.state);
        abs(&mut c.boot_id);
        abs(&mut c.pstore);
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
                problem: format!("not a public key: {e}"),
            })?);
        }
        Ok(TrustedKeys::new(keys))
    }

    /// The state store.
    pub fn store(&self) -> Result<crate::store::Store, Error> {
        crate::store::Store::open(&self.config.state)
    }

    /// The staged containers.
    pub fn containers(&self) -> crate::container::Containers {
        crate::container::Containers::new(&self.config.state)
    }

    /// Opens the boot disk for reading and writing.
    pub fn disk(&self) -> Result<File, Error> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.config.disk)
            .map_err(io_err("opening disk", &self.config.disk))
    }

    /// Opens the disk and the ESP (the mounted directory, or the FAT inside the
    /// disk) and reads the product, once for an operation.
    pub fn open(&self) -> Result<Opened, Error> {
        let mut disk = self.disk()?;
        let mut esp: Box<dyn Esp> = match &self.config.esp {
            Some(dir) => Box::new(DirEsp::new(dir)),
            None => {
                let t = bootctl::table::read(&mut disk)
                    .map_err(boot_err("reading the partition table"))?;
                let (start, len) = t.esp_range().ok_or_else(|| Error::Config {
                    path: self.config.disk.clone(),
                    problem: "the disk has no ESP".into(),
                })?;
                let dev = disk
                    .try_clone()
                    .map_err(io_err("opening disk", &self.config.disk))?;
                Box::new(ImageEsp::open(dev, start, len).map_err(boot_err("opening the ESP"))?)
            }
        };
        let product = bootctl::status::layout_record(esp.as_mut())
            .map_err(boot_err("reading the layout record"))?
            .product;
        Ok(Opened {
            disk: bootctl::device::Durable(disk),
            esp,
            product,
            disk_path: self.config.disk.clone(),
        })
    }

    /// The loader's variables.
    pub fn vars(&self) -> LoaderVars {
        LoaderVars::new(&self.config.efivars)
    }

    /// What the node runs now: the booted entry (from the loader's variables), its
    /// slot and platform version, and the active container's release.
    pub fn running(&self, o: &mut Opened) -> Result<Running, Error> {
        let booted = |problem: String| Error::Booted { problem };
        let entry = self
            .vars()
            .booted_entry()
            .map_err(boot_err("reading the loader's variables"))?
            .ok_or_else(|| {
                booted("the loader did not say which entry booted (no LoaderEntrySelected)".into())
            })?;
        let found = bootctl::entries::scan(o.esp.as_mut(), &o.product)
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
            .ok_or_else(|| {
                booted(format!(
                    "the booted entry {entry} is not a slot entry on the ESP"
                ))
            })?;
        let label = o.slot_label(slot)?;
        let platform_version = bootctl::layout::split_slot_label(&label)
            .filter(|(p, _)| *p == o.product)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                booted(format!(
                    "booted slot {slot} is labelled {label:?}, not {}_<version>",
                    o.product
                ))
            })?
            .parse()
            .map_err(|e: qimg::Error| {
                booted(format!("booted slot {slot}'s label {label:?}: {e}"))
            })?;
        let version = self.containers().installed()?.active;
        Ok(Running {
            product: o.product.clone(),
            slot,
            entry,
            platform_version,
            version,
        })
    }
}
