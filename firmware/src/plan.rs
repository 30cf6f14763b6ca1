//! Inventory + a bundle's firmware payloads → for each payload: skip, flash, or
//! refuse with the reason (what `fwupdmgr` users expect).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use qimg::firmware::FwVersion;
use qimg::{Activation, FirmwareInfo, Version};

use crate::inventory::{Device, InstalledVersion};

/// Knobs of a plan.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Flash older firmware over newer (`--allow-older`).
    pub allow_older: bool,
    /// Flash the version already installed (`--allow-reinstall`).
    pub allow_reinstall: bool,
    /// The platform version of the slot the node falls back to, when known.
    pub fallback_platform: Option<Version>,
    /// Bytes free on the ESP, for capsules staged there.
    pub esp_free: Option<u64>,
}

/// Why a payload is not flashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Refusal {
    /// The installed firmware is newer.
    Downgrade {
        /// Installed.
        installed: String,
        /// Offered.
        offered: String,
    },
    /// The device's version is not written in the payload's version format.
    FormatMismatch {
        /// Installed, as read.
        installed: String,
    },
    /// The installed version is older than the payload accepts.
    BelowLowest {
        /// Installed.
        installed: String,
        /// `lowest_installed`.
        lowest: String,
    },
    /// The installed version is newer than the payload accepts.
    AboveHighest {
        /// Installed.
        installed: String,
        /// `highest_installed`.
        highest: String,
    },
    /// No device matches.
    NoDevice,
    /// The fallback slot's platform cannot run with this firmware.
    IncompatibleFallback {
        /// The fallback slot's platform version.
        platform: String,
    },
    /// Another payload of the bundle is already planned for the same device: one
    /// image per device per prepare.
    DeviceTaken {
        /// The component flashing it.
        by: String,
    },
    /// Not enough room on the ESP for the capsule (2× its size, as fwupd requires).
    EspTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Downgrade { installed, offered } => {
                write!(f, "{offered} is older than the installed {installed}")
            }
            Refusal::FormatMismatch { installed } => {
                write!(
                    f,
                    "the installed version {installed:?} is not in the payload's version format"
                )
            }
            Refusal::BelowLowest { installed, lowest } => {
                write!(
                    f,
                    "the installed {installed} is older than {lowest}, the oldest this payload flashes over"
                )
            }
            Refusal::AboveHighest { installed, highest } => {
                write!(
                    f,
                    "the installed {installed} is newer than {highest}, the newest this payload flashes over"
                )
            }
            Refusal::NoDevice => write!(f, "no matching device on this node"),
            Refusal::IncompatibleFallback { platform } => write!(
                f,
                "the fallback slot's platform {platform} does not run with this firmware"
            ),
            Refusal::DeviceTaken { by } => {
                write!(f, "{by} in the same bundle flashes this device already")
            }
            Refusal::EspTooSmall { needed, free } => {
                write!(
                    f,
                    "the ESP has {free} bytes free, the capsule needs {needed}"
                )
            }
        }
    }
}

/// What to do with one payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// Already at the offered version.
    Skip,
    /// Flash it.
    Flash,
    /// Do not, because of `why`.
    Refuse {
        /// Why.
        why: Refusal,
    },
}

/// One line of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    /// The bundle component's name.
    pub component: String,
    /// The payload's component id.
    pub component_id: String,
    /// The matched device's component id, if any.
    pub device: Option<String>,
    /// The installed version, rendered in the payload's format.
    pub installed: Option<String>,
    /// The offered version.
    pub offered: String,
    /// What to do.
    pub action: Action,
}

/// A payload offered by a bundle: component name, its firmware fields, payload size.
pub type Offer<'a> = (&'a str, &'a FirmwareInfo, u64);

fn matches(d: &Device, f: &FirmwareInfo) -> bool {
    let m = &f.device;
    if let Some(g) = &m.esrt_guid {
        return d
            .esrt_guid
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case(g));
    }
    if m.vendor.is_some() || m.model.is_some() {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        return eq(&m.vendor, &d.vendor) && eq(&m.model, &d.model);
    }
    d.component_id == f.component_id
}

fn installed_text(d: &Device, f: &FirmwareInfo) -> String {
    match &d.installed {
        InstalledVersion::Text { version } => version.clone(),
        InstalledVersion::Esrt { version, .. } => f.version_format.from_u32(*version),
    }
}

/// Decides, for each offered payload, what to do on a node with `devices`.
pub fn plan(devices: &[Device], offers: &[Offer], o: &PlanOptions) -> Vec<PlanItem> {
    let mut items: Vec<PlanItem> = offers
        .iter()
        .map(|offer| plan_one(devices, offer, o))
        .collect();
    // Never two images for one device: the first payload in bundle order wins.
    for i in 0..items.len() {
        if items[i].action != Action::Flash {
            continue;
        }
        if let Some(first) = items[..i]
            .iter()
            .find(|x| x.action == Action::Flash && x.device == items[i].device)
        {
            let by = first.component.clone();
            items[i].action = Action::Refuse {
                why: Refusal::DeviceTaken { by },
            };
        }
    }
    items
}

fn plan_one(devices: &[Device], (name, f, size): &Offer, o: &PlanOptions) -> PlanItem {
    let dev = devices.iter().find(|d| matches(d, f));
    let installed = dev.map(|d| installed_text(d, f));
    let item = |action| PlanItem {
        component: (*name).to_owned(),
        component_id: f.component_id.clone(),
        device: dev.map(|d| d.component_id.clone()),
        installed: installed.clone(),
        offered: f.version.clone(),
        action,
    };
    let refuse = |why| item(Action::Refuse { why });
    let Some(inst) = &installed else {
        return refuse(Refusal::NoDevice);
    };
    let fmt = f.version_format;
    let Some(have) = fmt.parse(inst) else {
        return refuse(Refusal::FormatMismatch {
            installed: inst.clone(),
        });
    };
    let offered = fmt.parse(&f.version).expect("validated with the manifest");
    if let (Some(p), false) = (&o.fallback_platform, f.compatible_platforms.is_empty())
        && !f.compatible_platforms.contains(p)
    {
        return refuse(Refusal::IncompatibleFallback {
            platform: p.to_string(),
        });
    }
    let cmp = |bound: &str| fmt.parse(bound).and_then(|b: FwVersion| have.compare(&b));
    if let Some(lowest) = &f.lowest_installed
        && cmp(lowest) == Some(Ordering::Less)
    {
        return refuse(Refusal::BelowLowest {
            installed: inst.clone(),
            lowest: lowest.clone(),
        });
    }
    if let Some(highest) = &f.highest_installed
        && cmp(highest) == Some(Ordering::Greater)
    {
        return refuse(Refusal::AboveHighest {
            installed: inst.clone(),
            highest: highest.clone(),
        });
    }
    match have.compare(&offered) {
        Some(Ordering::Equal) if !o.allow_reinstall => return item(Action::Skip),
        Some(Ordering::Greater) if !o.allow_older => {
            return refuse(Refusal::Downgrade {
                installed: inst.clone(),
                offered: f.version.clone(),
            });
        }
        // Plain versions that differ are an update: they have no order.
        _ => {}
    }
    let capsule = f.activation == Activation::Reboot && dev.is_some_and(|d| d.esrt_guid.is_some());
    if let (true, Some(free)) = (capsule, o.esp_free)
        && free < 2 * size
    {
        return refuse(Refusal::EspTooSmall {
            needed: 2 * size,
            free,
        });
    }
    item(Action::Flash)
}
