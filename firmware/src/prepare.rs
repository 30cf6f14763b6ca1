//! The prepare-time entry points: read a bundle's firmware payloads (only after the
//! whole bundle verified), pick each device's backend, flash every planned payload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qimg::{BundleReader, ComponentKind, FirmwareInfo, NoProgress, TrustedKeys};
use serde::{Deserialize, Serialize};

use bootctl::esp::{DirEsp, Esp, ImageEsp};

use crate::Error;
use crate::backend::{Banks, Capsule, FlashFile, Flasher, Simulated, Tool};
use crate::flash::{FlashOptions, Outcome, Payload, flash};
use crate::inventory::CommandProbe;
use crate::journal::Journal;
use crate::plan::{Action, Offer, PlanItem};

/// Largest firmware payload held in memory.
pub const MAX_PAYLOAD: u64 = 256 << 20;

/// Reads `bundle`, checks its signatures with `keys` and every component's digest,
/// and returns the firmware payloads. Nothing is returned unless the whole bundle
/// verified.
pub fn load_payloads(bundle: &Path, keys: &TrustedKeys) -> Result<Vec<Payload>, Error> {
    let berr = |source| Error::Bundle {
        path: bundle.to_owned(),
        source: Box::new(source),
    };
    let file = std::fs::File::open(bundle).map_err(|source| Error::BundleOpen {
        path: bundle.to_owned(),
        source,
    })?;
    let (mut reader, _) =
        BundleReader::open_verified(std::io::BufReader::new(file), keys).map_err(berr)?;
    let components = reader.manifest().components.clone();
    // Refused before anything is read.
    if let Some(c) = components
        .iter()
        .find(|c| matches!(c.kind, ComponentKind::Firmware(_)) && c.size > MAX_PAYLOAD)
    {
        return Err(Error::PayloadTooLarge {
            component: c.name.clone(),
            size: c.size,
        });
    }
    let mut out = vec![];
    for c in components {
        match c.kind {
            ComponentKind::Firmware(info) => {
                let mut bytes = Vec::with_capacity(c.size as usize);
                reader
                    .next_component(&mut bytes, &NoProgress)
                    .map_err(berr)?;
                out.push(Payload {
                    name: c.name,
                    info,
                    bytes,
                    sha256: c.sha256,
                });
            }
            _ => {
                reader
                    .next_component(std::io::sink(), &NoProgress)
                    .map_err(berr)?;
            }
        }
    }
    reader.finish(&NoProgress).map_err(berr)?;
    Ok(out)
}

/// The offers of `payloads`, for [`crate::plan::plan`].
pub fn offers(payloads: &[Payload]) -> Vec<Offer<'_>> {
    payloads
        .iter()
        .map(|p| (p.name.as_str(), &p.info, p.bytes.len() as u64))
        .collect()
}

/// How to flash one device (the `backends` file maps device component ids to these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackendSpec {
    /// A simulated device directory.
    Simulated {
        /// The directory.
        dir: PathBuf,
    },
    /// A flash device file.
    FlashFile {
        /// The device file.
        path: PathBuf,
        /// Erase-block size.
        erase_block: usize,
        /// Where the image starts.
        #[serde(default)]
        offset: u64,
        /// The device's second bank, if it has one.
        #[serde(default)]
        banks: Option<Banks>,
    },
    /// A vendor tool.
    Tool {
        /// Commands writing the payload (`{payload}` is its path).
        write: Vec<Vec<String>>,
        /// A command printing the version.
        #[serde(default)]
        version: Option<Vec<String>>,
    },
    /// A UEFI capsule staged on the ESP.
    Capsule {
        /// The mounted ESP directory, or a disk image holding one.
        esp: PathBuf,
        /// efivarfs.
        efivars: PathBuf,
    },
}

/// Device id → backend; devices matched by ESRT GUID default to `capsule`.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// Configured backends.
    pub by_device: BTreeMap<String, BackendSpec>,
    /// The capsule backend for ESRT devices without an entry.
    pub default_capsule: Option<BackendSpec>,
}

/// One device of the node's firmware configuration (`--devices`, a JSON object from
/// device component id to this): how to read its version and how to flash it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// A command printing the installed version (for devices sysfs does not show).
    #[serde(default)]
    pub probe: Option<Vec<String>>,
    /// How to flash it.
    #[serde(default)]
    pub backend: Option<BackendSpec>,
}

/// The node's firmware configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeConfig(pub BTreeMap<String, DeviceConfig>);

impl NodeConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, Error> {
        let cerr = |reason: String| Error::Config {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| cerr(e.to_string()))?;
        let c: NodeConfig = serde_json::from_slice(&bytes).map_err(|e| cerr(e.to_string()))?;
        for (id, d) in &c.0 {
            if d.probe.as_ref().is_some_and(Vec::is_empty) {
                return Err(cerr(format!("{id}: empty probe command")));
            }
        }
        Ok(c)
    }

    /// The probe commands, for [`crate::inventory::inventory`].
    pub fn probes(&self) -> Vec<CommandProbe> {
        self.0
            .iter()
            .filter_map(|(id, d)| {
                d.probe.as_ref().map(|argv| CommandProbe {
                    component_id: id.clone(),
                    argv: argv.clone(),
                })
            })
            .collect()
    }

    /// The configured backends.
    pub fn backends(&self) -> BTreeMap<String, BackendSpec> {
        self.0
            .iter()
            .filter_map(|(id, d)| d.backend.clone().map(|b| (id.clone(), b)))
            .collect()
    }
}

impl Backends {
    /// The backend for `item`, whose payload is `info`.
    pub fn for_item(&self, item: &PlanItem, info: &FirmwareInfo) -> Option<&BackendSpec> {
        let dev = item.device.as_deref()?;
        self.by_device.get(dev).or_else(|| {
            info.device
                .esrt_guid
                .as_ref()
                .and(self.default_capsule.as_ref())
        })
    }
}

/// The ESP at `path`: a mounted directory, or a disk image file whose GPT has an ESP.
pub fn open_esp(path: &Path) -> Result<Box<dyn Esp>, Error> {
    if path.is_dir() {
        return Ok(Box::new(DirEsp::new(path)));
    }
    let err = |reason: String| Error::Config {
        path: path.to_owned(),
        reason,
    };
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| err(format!("not an ESP directory or disk image: {e}")))?;
    let t = bootctl::table::read(&mut dev).map_err(|e| err(e.to_string()))?;
    let (start, len) = t
        .esp_range()
        .ok_or_else(|| err("the disk image has no ESP".into()))?;
    let esp = ImageEsp::open(dev, start, len).map_err(|e| err(e.to_string()))?;
    Ok(Box::new(esp))
}

fn run_one(
    spec: &BackendSpec,
    component: &str,
    go: &mut dyn FnMut(&mut dyn Flasher) -> Result<Outcome, Error>,
) -> Result<Outcome, Error> {
    match spec {
        BackendSpec::Simulated { dir } => go(&mut Simulated { dir: dir.clone() }),
        BackendSpec::FlashFile {
            path,
            erase_block,
            offset,
            banks,
        } => go(&mut FlashFile {
            path: path.clone(),
            erase_block: *erase_block,
            offset: *offset,
            banks: banks.clone(),
        }),
        BackendSpec::Tool { write, version } => go(&mut Tool {
            write: write.clone(),
            version: version.clone(),
        }),
        BackendSpec::Capsule { esp, efivars } => {
            let mut esp = open_esp(esp)?;
            go(&mut Capsule {
                esp: esp.as_mut(),
                efivars: efivars.clone(),
                file: format!("{component}.cap"),
            })
        }
    }
}

/// Flashes every `flash` item of `plan`, in plan order. Every item to flash must
/// have a backend; that is checked before anything is written.
pub fn flash_all(
    journal: &Journal,
    plan: &[PlanItem],
    payloads: &[Payload],
    backends: &Backends,
    o: &FlashOptions,
    obs: &dyn qutil::progress::Progress,
) -> Result<Vec<(String, Outcome)>, Error> {
    let _lock = journal.lock()?;
    let mut work = vec![];
    for item in plan.iter().filter(|i| i.action == Action::Flash) {
        let p = payloads
            .iter()
            .find(|p| p.name == item.component)
            .ok_or_else(|| Error::NoBackend {
                component: item.component.clone(),
                reason: "no payload of that name".into(),
            })?;
        let spec = backends
            .for_item(item, &p.info)
            .ok_or_else(|| Error::NoBackend {
                component: item.component.clone(),
                reason: format!(
                    "no backend configured for device {}",
                    item.device.as_deref().unwrap_or("?")
                ),
            })?;
        work.push((item, p, spec));
    }
    let mut out = vec![];
    for (item, p, spec) in work {
        let outcome = run_one(spec, &item.component, &mut |f| {
            flash(journal, item, p, f, o, obs)
        })?;
        out.push((item.component.clone(), outcome));
    }
    Ok(out)
}
