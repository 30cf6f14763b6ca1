//! Flashing one planned payload through a backend, every step journaled, and the
//! results read after the reboot that activates staged updates.
//!
//! Order per component: refuse on weak power → `planned` → `writing` → (backend
//! write, time-limited) → `written` → (backend verify) → `activated` when the device
//! already runs the new version, else `verified` (staged) → `failed` with the reason
//! at any error. A restart with the same payload continues: `verified`/`activated`
//! are kept, `planned`/`writing`/`written` write again from the start (a half write
//! is never trusted), `failed` stays failed unless retry is asked for.

use std::path::Path;
use std::time::{Duration, Instant};

use bootctl::esp::Esp;
use qimg::FirmwareInfo;
use qimg::Sha256;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::backend::{Flasher, Verified};
use crate::inventory::{Device, InstalledVersion, PROBE_TIMEOUT};
use crate::journal::{Journal, Record, Step};
use crate::plan::{Action, PlanItem};

/// Schema of journal records.
pub const JOURNAL_SCHEMA: &str = "qfirmware.journal/1";

/// Knobs of a flash.
#[derive(Clone, Debug)]
pub struct FlashOptions {
    /// Time limit of one backend write.
    pub timeout: Duration,
    /// Retry a component whose journal says `failed`.
    pub retry_failed: bool,
    /// Root path for `/sys/class/power_supply` (`/` live).
    pub root: std::path::PathBuf,
    /// Lowest battery charge (percent) to flash on when not on mains power.
    pub min_battery: u8,
    /// A command that must succeed before each write (UPS or PDU check).
    pub power_hook: Option<Vec<String>>,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions {
            timeout: Duration::from_secs(600),
            retry_failed: false,
            root: "/".into(),
            min_battery: 30,
            power_hook: None,
        }
    }
}

/// How a component's flash ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The plan did not say flash.
    NotPlanned,
    /// The device runs the new version now.
    Activated,
    /// Staged; the reboot activates it.
    Staged,
    /// Done before (journal), nothing written this time.
    AlreadyDone {
        /// The step the journal holds.
        step: String,
    },
    /// Failed (now, or before and not retried).
    Failed {
        /// Why.
        reason: String,
    },
}

/// Why flashing on this power is unsafe, if it is: batteries present, no mains
/// online, and the charge below `min` (fwupd refuses below its battery threshold).
pub fn power_refusal(root: &Path, min: u8) -> Option<String> {
    let dir = root.join("sys/class/power_supply");
    let rd = std::fs::read_dir(&dir).ok()?;
    let mut mains_online = false;
    let mut lowest: Option<u8> = None;
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        let read = |f: &str| {
            std::fs::read_to_string(p.join(f))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        match read("type").as_str() {
            "Mains" => mains_online |= read("online") == "1",
            "Battery" => {
                if let Ok(c) = read("capacity").parse::<u8>() {
                    lowest = Some(lowest.map_or(c, |l| l.min(c)));
                }
            }
            _ => {}
        }
    }
    match lowest {
        Some(c) if !mains_online && c < min => Some(format!(
            "on battery at {c}% (below {min}%), no mains power online"
        )),
        _ => None,
    }
}

/// A firmware payload of a verified bundle.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Component name.
    pub name: String,
    /// Its firmware fields.
    pub info: FirmwareInfo,
    /// Its content.
    pub bytes: Vec<u8>,
    /// Its SHA-256 (checked by the reader); the journal ties resumption to it.
    pub sha256: Sha256,
}

/// Flashes `item` (when its action is flash) with `payload` through `flasher`.
///
/// `payload` must come from a verified bundle read ([`crate::prepare::load_payloads`]).
pub fn flash(
    journal: &Journal,
    item: &PlanItem,
    payload: &Payload,
    flasher: &mut dyn Flasher,
    o: &FlashOptions,
    obs: &dyn qutil::progress::Progress,
) -> Result<Outcome, Error> {
    if item.action != Action::Flash {
        return Ok(Outcome::NotPlanned);
    }
    let sha = payload.sha256.to_string();
    if let Some(prev) = journal.get(&item.component)?
        && prev.payload_sha256 == sha
    {
        match &prev.step {
            Step::Verified | Step::Activated => {
                return Ok(Outcome::AlreadyDone {
                    step: prev.step.name().to_owned(),
                });
            }
            Step::Failed { reason } if !o.retry_failed => {
                return Ok(Outcome::Failed {
                    reason: format!("failed before: {reason} (use --retry to try again)"),
                });
            }
            _ => {}
        }
    }
    let mut rec = Record {
        schema: JOURNAL_SCHEMA.into(),
        component: item.component.clone(),
        device: item.device.clone().unwrap_or_default(),
        from: item.installed.clone(),
        to: item.offered.clone(),
        payload_sha256: sha,
        format: payload.info.version_format,
        boot_id: None,
        staged_file: None,
        step: Step::Planned,
    };
    let go = |rec: &mut Record, step: Step| -> Result<(), Error> {
        journal.advance(rec, step)?;
        obs.step(&format!("{}: {}", rec.component, rec.step.text()));
        Ok(())
    };
    // Power refusals write nothing, so the journal records nothing for them.
    if let Some(why) = power_refusal(&o.root, o.min_battery) {
        return Ok(Outcome::Failed { reason: why });
    }
    if let Some(hook) = &o.power_hook
        && let Err(why) = crate::backend::run(hook, Instant::now() + PROBE_TIMEOUT)
    {
        return Ok(Outcome::Failed {
            reason: format!("power check refused: {why}"),
        });
    }
    go(&mut rec, Step::Planned)?;
    go(&mut rec, Step::Writing)?;
    bootctl::crashpoint::reached("firmware-write");
    if let Err(crate::backend::DeviceFailure(reason)) =
        flasher.write(&payload.bytes, Instant::now() + o.timeout)
    {
        go(
            &mut rec,
            Step::Failed {
                reason: reason.clone(),
            },
        )?;
        return Ok(Outcome::Failed { reason });
    }
    go(&mut rec, Step::Written)?;
    bootctl::crashpoint::reached("firmware-written");
    match flasher.verify(&payload.bytes, &item.offered) {
        Ok(Verified::Now) => {
            go(&mut rec, Step::Activated)?;
            Ok(Outcome::Activated)
        }
        Ok(Verified::AtReboot) => {
            rec.boot_id = boot_id(&o.root);
            rec.staged_file = flasher.staged_file();
            go(&mut rec, Step::Verified)?;
            Ok(Outcome::Staged)
        }
        Err(crate::backend::DeviceFailure(reason)) => {
            go(
                &mut rec,
                Step::Failed {
                    reason: reason.clone(),
                },
            )?;
            Ok(Outcome::Failed { reason })
        }
    }
}

/// The running boot's id, read under `root`.
pub fn boot_id(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// One staged component's result after the reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentResult {
    /// Component.
    pub component: String,
    /// The journal step now.
    pub step: Step,
}

/// After a reboot: moves every staged (`verified`) record to `activated` when its
/// device now reports the new version, or to `failed` with the ESRT's last attempt
/// status (or "not applied"). A record staged in the running boot (same boot id
/// under `root`) stays staged; records already final are returned as they are.
/// Staged capsule files of final records are removed from `esp` when given.
pub fn results(
    journal: &Journal,
    devices: &[Device],
    root: &Path,
    mut esp: Option<&mut dyn Esp>,
) -> Result<Vec<ComponentResult>, Error> {
    let now = boot_id(root);
    let mut out = vec![];
    for before in journal.all()? {
        let mut rec = before.clone();
        let same_boot = rec.boot_id.is_some() && rec.boot_id == now;
        if rec.step == Step::Verified && !same_boot {
            rec.step = judge(&rec, devices);
        }
        if rec.step != Step::Verified
            && let (Some(file), Some(esp)) = (rec.staged_file.clone(), esp.as_deref_mut())
        {
            remove_staged(esp, &file).map_err(|reason| Error::Esp {
                path: file.clone(),
                reason,
            })?;
            rec.staged_file = None;
        }
        if rec != before {
            journal.put(&rec)?;
        }
        out.push(ComponentResult {
            component: rec.component,
            step: rec.step,
        });
    }
    Ok(out)
}

fn remove_staged(esp: &mut dyn Esp, file: &str) -> Result<(), String> {
    if esp.exists(file).map_err(|e| e.to_string())? {
        esp.remove(file).map_err(|e| e.to_string())?;
        esp.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What a staged record became, from its device's version after the reboot.
fn judge(rec: &Record, devices: &[Device]) -> Step {
    let failed = |reason: String| Step::Failed { reason };
    let Some(dev) = devices.iter().find(|d| d.component_id == rec.device) else {
        return failed(format!("device {} is gone after the reboot", rec.device));
    };
    let (running, status) = match &dev.installed {
        InstalledVersion::Text { version } => (version.clone(), 0),
        InstalledVersion::Esrt {
            version,
            last_attempt_status,
            ..
        } => (rec.format.from_u32(*version), *last_attempt_status),
    };
    if running == rec.to {
        Step::Activated
    } else if status != 0 {
        failed(format!(
            "the firmware reports last attempt status {status} ({})",
            esrt_status_name(status)
        ))
    } else {
        failed(format!("not applied: the device still runs {running}"))
    }
}

/// UEFI's `LAST_ATTEMPT_STATUS_*` names.
pub fn esrt_status_name(s: u32) -> &'static str {
    match s {
        0 => "success",
        1 => "unsuccessful",
        2 => "insufficient resources",
        3 => "incorrect version",
        4 => "invalid format",
        5 => "authentication error",
        6 => "power: AC not connected",
        7 => "power: insufficient battery",
        8 => "unsatisfied dependencies",
        _ => "vendor specific",
    }
}
