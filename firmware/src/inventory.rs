//! What firmware a node has, read through a root path (`/` on a node, a generated
//! tree in tests).
//!
//! | source | files (under the root) | component id |
//! |---|---|---|
//! | DMI | `sys/class/dmi/id/bios_version`, `bios_vendor`, `product_name` | `bios` |
//! | ESRT | `sys/firmware/efi/esrt/entries/entry*/fw_class`, `fw_version`, `last_attempt_status`, `last_attempt_version` | `esrt:<fw_class>` |
//! | NVMe | `sys/class/nvme/nvme*/firmware_rev`, `model` | the controller name, e.g. `nvme0` |
//! | command | the trimmed stdout of a configured program | as configured |

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How a device's version was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum InstalledVersion {
    /// Text, written in the device's own format.
    Text {
        /// The version.
        version: String,
    },
    /// An ESRT `u32`, rendered per the payload's version format when compared.
    Esrt {
        /// `fw_version`.
        version: u32,
        /// `last_attempt_version`.
        last_attempt_version: u32,
        /// `last_attempt_status` (0 = success).
        last_attempt_status: u32,
    },
}

/// One firmware-bearing device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Component id a bundle's payload names.
    pub component_id: String,
    /// Its installed version.
    pub installed: InstalledVersion,
    /// ESRT firmware class GUID (lower case), for capsule-updatable devices.
    pub esrt_guid: Option<String>,
    /// Vendor.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
}

/// An external program that prints a device's version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandProbe {
    /// Component id of the device.
    pub component_id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
}

/// How long a probe command may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn read_u32(p: &Path) -> Result<Option<u32>, Error> {
    match read_trim(p) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| Error::Inventory {
            path: p.to_owned(),
            reason: format!("{t:?} is not a number"),
        }),
    }
}

fn dirs(p: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

/// Reads every source under `root`, then runs `probes`.
pub fn inventory(root: &Path, probes: &[CommandProbe]) -> Result<Vec<Device>, Error> {
    let mut out = vec![];
    let dmi = root.join("sys/class/dmi/id");
    if let Some(v) = read_trim(&dmi.join("bios_version")) {
        out.push(Device {
            component_id: "bios".into(),
            installed: InstalledVersion::Text { version: v },
            esrt_guid: None,
            vendor: read_trim(&dmi.join("bios_vendor")),
            model: read_trim(&dmi.join("product_name")),
        });
    }
    for e in dirs(&root.join("sys/firmware/efi/esrt/entries"), "entry") {
        let class = read_trim(&e.join("fw_class")).ok_or_else(|| Error::Inventory {
            path: e.join("fw_class"),
            reason: "missing".into(),
        })?;
        let class = class.to_lowercase();
        out.push(Device {
            component_id: format!("esrt:{class}"),
            installed: InstalledVersion::Esrt {
                version: read_u32(&e.join("fw_version"))?.unwrap_or(0),
                last_attempt_version: read_u32(&e.join("last_attempt_version"))?.unwrap_or(0),
                last_attempt_status: read_u32(&e.join("last_attempt_status"))?.unwrap_or(0),
            },
            esrt_guid: Some(class),
            vendor: None,
            model: None,
        });
    }
    for c in dirs(&root.join("sys/class/nvme"), "nvme") {
        if let Some(v) = read_trim(&c.join("firmware_rev")) {
            out.push(Device {
                component_id: c
                    .file_name()
                    .expect("listed")
                    .to_string_lossy()
                    .into_owned(),
                installed: InstalledVersion::Text { version: v },
                esrt_guid: None,
                vendor: None,
                model: read_trim(&c.join("model")),
            });
        }
    }
    for p in probes {
        out.push(Device {
            component_id: p.component_id.clone(),
            installed: InstalledVersion::Text { version: probe(p)? },
            esrt_guid: None,
            vendor: None,
            model: None,
        });
    }
    Ok(out)
}

/// Runs a probe under [`PROBE_TIMEOUT`]; its trimmed stdout is the version.
fn probe(p: &CommandProbe) -> Result<String, Error> {
    let fail = |reason: String| Error::Probe {
        component_id: p.component_id.clone(),
        reason,
    };
    let out = qutil::process::run_until(&p.argv, std::time::Instant::now() + PROBE_TIMEOUT)
        .map_err(|e| fail(qutil::chain(&e)))?;
    let prog = &p.argv[0];
    if !out.status.success() {
        return Err(fail(format!(
            "{prog} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if v.is_empty() {
        return Err(fail(format!("{prog} printed no version")));
    }
    Ok(v)
}
