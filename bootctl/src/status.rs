//! What `qbootctl` reports and does, over any ESP backend: status, mark-good,
//! mark-bad, rollback, set-next.

use serde::{Deserialize, Serialize};

use crate::entries::{self, EntryState, SlotEntry};
use crate::esp::Esp;
use crate::layout::Slot;
use crate::model::{EfiVars, Reason};
use crate::{Error, efivars::LoaderVars};

/// Schema id of `qbootctl status --json`.
pub const STATUS_SCHEMA: &str = "qbootctl.status/1";
/// The record `imagebuild disk` leaves on the ESP at first install.
pub const LAYOUT_RECORD: &str = "loader/qimg-layout.json";

/// Sizes fixed at first install, and the product the slots belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutRecord {
    /// Always `qimg.layout/1`.
    pub schema: String,
    /// Product name: entry names start with it.
    pub product: String,
    /// ESP size in MiB.
    pub esp_mib: u64,
    /// Root partition size per slot in MiB.
    pub root_mib: u64,
    /// Verity partition size per slot in MiB.
    pub verity_mib: u64,
}

/// Reads the layout record.
pub fn layout_record(esp: &mut dyn Esp) -> Result<LayoutRecord, Error> {
    let bytes = esp.read(LAYOUT_RECORD)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadPath {
        path: LAYOUT_RECORD.into(),
        reason: format!("not a layout record: {e}"),
    })
}

/// One slot in a status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReport {
    /// The slot.
    pub slot: Slot,
    /// The root partition's label (`<product>_<version>` or `_empty`), when the disk is known.
    pub label: Option<String>,
    /// The slot's boot entry, if any.
    pub entry: Option<String>,
    /// Its state.
    pub state: Option<EntryState>,
    /// Why it is bad, when it is.
    pub reason: Option<String>,
}

/// The entry that boots, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    /// Slot, if the entry belongs to one.
    pub slot: Option<Slot>,
    /// Entry file.
    pub entry: String,
    /// How this was determined or why it was chosen.
    pub reason: String,
}

/// `qbootctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Always [`STATUS_SCHEMA`].
    pub schema: String,
    /// Product.
    pub product: String,
    /// What booted: from the loader's variables when live, from the model offline.
    pub booted: Option<Pick>,
    /// What boots next (per the model of systemd-boot 252).
    pub next: Option<Pick>,
    /// Both slots.
    pub slots: Vec<SlotReport>,
    /// Problems worth a person's attention.
    pub warnings: Vec<String>,
}

fn reason_text(r: &Reason) -> String {
    match r {
        Reason::OneShot(p) => format!("LoaderEntryOneShot matches {p:?}"),
        Reason::EfiDefault(p) => format!("LoaderEntryDefault matches {p:?}"),
        Reason::ConfigDefault(p) => format!("loader.conf default matches {p:?}"),
        Reason::FirstInOrder => "first in systemd-boot's order".into(),
    }
}

fn efi_vars(vars: Option<&LoaderVars>) -> Result<EfiVars, Error> {
    Ok(match vars {
        Some(v) => EfiVars {
            entry_oneshot: v.get("LoaderEntryOneShot")?,
            entry_default: v.get("LoaderEntryDefault")?,
            entry_last_booted: v.get("LoaderEntryLastBooted")?,
        },
        None => EfiVars::default(),
    })
}

/// Builds the status report. `labels` are the slots' partition labels when the
/// disk is known; `vars` the loader's variables on a live node.
pub fn status(
    esp: &mut dyn Esp,
    product: &str,
    labels: Option<[String; 2]>,
    vars: Option<&LoaderVars>,
) -> Result<Status, Error> {
    let efi = efi_vars(vars)?;
    let (found, sel) = entries::next(esp, product, &efi)?;
    let conf = entries::loader_conf(esp)?;
    let pick = |e: &SlotEntry, reason: String| Pick {
        slot: e.slot,
        entry: e.entry.file.clone(),
        reason,
    };
    let next = sel
        .chosen
        .map(|i| pick(&found[i], reason_text(&sel.reason)));
    let booted = match vars {
        Some(v) => v.booted_entry()?.map(|file| {
            let slot = found
                .iter()
                .find(|e| e.entry.file.eq_ignore_ascii_case(&file))
                .and_then(|e| e.slot);
            Pick {
                slot,
                entry: file,
                reason: "LoaderBootCountPath / LoaderEntrySelected".into(),
            }
        }),
        None => next.clone().map(|mut p| {
            p.reason = "offline: what the loader would boot".into();
            p
        }),
    };
    let mut slots = vec![];
    for (i, slot) in [Slot::A, Slot::B].into_iter().enumerate() {
        // The slot's entry: the first of its entries in the loader's order.
        let e = sel
            .order
            .iter()
            .map(|&k| &found[k])
            .find(|e| e.slot == Some(slot));
        let state = e.map(|e| EntryState::of(e.entry.counter));
        slots.push(SlotReport {
            slot,
            label: labels.as_ref().map(|l| l[i].clone()),
            entry: e.map(|e| e.entry.file.clone()),
            reason: matches!(state, Some(EntryState::Bad { .. })).then(|| "tries exhausted".into()),
            state,
        });
    }
    let mut warnings = vec![];
    let plain: Vec<_> = found.iter().map(|e| e.entry.clone()).collect();
    if conf.defeats_fallback(&plain) {
        warnings.push(
            "loader.conf `default` matches only counted entries: fallback is defeated".into(),
        );
    }
    let bootable = slots
        .iter()
        .filter(|s| matches!(s.state, Some(EntryState::Good | EntryState::Trying { .. })))
        .count();
    if bootable < 2 {
        warnings.push(format!(
            "only {bootable} slot(s) have a bootable entry: no fallback"
        ));
    }
    Ok(Status {
        schema: STATUS_SCHEMA.into(),
        product: product.into(),
        booted,
        next,
        slots,
        warnings,
    })
}

/// The entry an operation applies to: `explicit`, else the booted entry (live), else
/// the entry the loader would boot (offline).
pub fn target_entry(
    esp: &mut dyn Esp,
    product: &str,
    explicit: Option<&str>,
    vars: Option<&LoaderVars>,
) -> Result<String, Error> {
    if let Some(e) = explicit {
        return Ok(e.to_owned());
    }
    let s = status(esp, product, None, vars)?;
    s.booted.map(|p| p.entry).ok_or_else(|| Error::NoEntry {
        reason: "no booted entry to act on".into(),
    })
}

/// Makes the other slot boot next by marking the entry that would boot now bad.
/// Refused (nothing changed) when the other slot has no bootable entry.
pub fn rollback(
    esp: &mut dyn Esp,
    product: &str,
    vars: Option<&LoaderVars>,
) -> Result<Status, Error> {
    let s = status(esp, product, None, vars)?;
    let next = s.next.clone().ok_or_else(|| Error::NoEntry {
        reason: "no entries".into(),
    })?;
    let other = next.slot.map(Slot::other);
    let fallback = s.slots.iter().find(|r| {
        Some(r.slot) == other
            && matches!(r.state, Some(EntryState::Good | EntryState::Trying { .. }))
    });
    if fallback.is_none() {
        return Err(Error::NoEntry {
            reason: "the other slot has no bootable entry: no fallback".into(),
        });
    }
    entries::mark_bad(esp, &next.entry)?;
    status(esp, product, None, vars)
}

/// Makes `slot` boot next: re-arms its entry with `tries` tries (a counted name the
/// loader sorts by version) and, when that is not enough, sets `LoaderEntryOneShot`
/// on a live node. Offline, a slot that still would not boot next is refused.
pub fn set_next(
    esp: &mut dyn Esp,
    product: &str,
    slot: Slot,
    tries: u32,
    vars: Option<&LoaderVars>,
) -> Result<Status, Error> {
    let s = status(esp, product, None, vars)?;
    let r = &s.slots[if slot == Slot::A { 0 } else { 1 }];
    let file = r.entry.clone().ok_or_else(|| Error::NoEntry {
        reason: format!("slot {} has no entry", slot.letter()),
    })?;
    if s.next.as_ref().map(|n| &n.entry) == Some(&file) {
        return Ok(s);
    }
    let name = crate::counter::EntryName::parse(&file, ".efi").expect("entries end in .efi");
    let armed = crate::counter::EntryName::counted(&name.stem, tries, ".efi").to_string();
    // Decide in the model first, so a refusal changes nothing.
    let efi = efi_vars(vars)?;
    let (found, _) = entries::next(esp, product, &efi)?;
    let conf = entries::loader_conf(esp)?;
    let mut sim: Vec<crate::model::Entry> = found.iter().map(|e| e.entry.clone()).collect();
    let idx = sim
        .iter()
        .position(|e| e.file == file)
        .expect("the slot's entry was scanned");
    sim[idx].file = armed.clone();
    sim[idx].id = armed.to_lowercase();
    sim[idx].counter = Some(crate::counter::Counter {
        left: tries,
        done: 0,
    });
    let wins = crate::model::select(&sim, &conf, &efi).chosen == Some(idx);
    if !wins && vars.is_none() {
        return Err(Error::NoEntry {
            reason: format!(
                "slot {} would not boot next even re-armed (the loader prefers {}); offline there is no LoaderEntryOneShot",
                slot.letter(),
                s.next.map(|n| n.entry).unwrap_or_default()
            ),
        });
    }
    if armed != file {
        esp.rename(
            &format!("{}/{file}", entries::LINUX_DIR),
            &format!("{}/{armed}", entries::LINUX_DIR),
        )?;
        esp.flush()?;
    }
    if let (false, Some(v)) = (wins, vars) {
        v.set("LoaderEntryOneShot", &armed.to_lowercase())?;
    }
    status(esp, product, None, vars)
}
