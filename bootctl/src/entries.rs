//! Boot entries of A/B slots on the ESP: install, bless, mark bad, and what boots next.
//!
//! A slot's entry is the UKI `EFI/Linux/<product>-<slot>-<version>[+LEFT-DONE].efi`.
//! Rules, as systemd's `bootctl`/`systemd-bless-boot` users and RAUC users expect:
//!
//! - installing writes the new entry (counted, `+N-0`) first and only then removes the
//!   slot's older entries, so there is never a moment without a bootable entry;
//! - blessing renames the booted entry to its uncounted name, keeps exactly one good
//!   entry of the other slot as the fallback, and removes stale ones;
//! - marking bad renames the entry to `+0-DONE` (renames only: nothing is rewritten).

use crate::Error;
use crate::counter::{Counter, EntryName, MAX_TRIES};
use crate::esp::Esp;
use crate::layout::Slot;
use crate::model::{self, EfiVars, Entry, LoaderConf, OsRelease, Selection};

/// Tries a newly installed slot entry gets unless told otherwise.
pub const DEFAULT_TRIES: u32 = 3;

/// Where Type #2 entries live.
pub const LINUX_DIR: &str = "EFI/Linux";
/// Where loader.conf lives.
pub const LOADER_CONF: &str = "loader/loader.conf";

/// An entry file on the ESP and what systemd-boot makes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotEntry {
    /// The slot it belongs to, from its name.
    pub slot: Option<Slot>,
    /// The version in its name.
    pub name_version: Option<String>,
    /// The entry as systemd-boot sees it.
    pub entry: Entry,
}

/// The state of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum EntryState {
    /// No counter: booted successfully before.
    Good,
    /// Counting: `left` tries left, `done` made.
    Trying {
        /// Tries left.
        left: u32,
        /// Tries made.
        done: u32,
    },
    /// No tries left: the loader sorts it last.
    Bad {
        /// Tries made.
        done: u32,
    },
}

impl EntryState {
    /// The state of an entry with this counter.
    pub fn of(counter: Option<Counter>) -> EntryState {
        match counter {
            None => EntryState::Good,
            Some(c) if c.is_bad() => EntryState::Bad { done: c.done },
            Some(c) => EntryState::Trying {
                left: c.left,
                done: c.done,
            },
        }
    }
}

/// The stem of a slot's entry names.
pub fn stem(product: &str, slot: Slot, version: &str) -> String {
    format!("{product}-{}-{version}", slot.letter())
}

/// Parses `<product>-<a|b>-<version>` out of an entry's stem.
fn slot_of(product: &str, stem: &str) -> (Option<Slot>, Option<String>) {
    let Some(rest) = stem.strip_prefix(product).and_then(|r| r.strip_prefix('-')) else {
        return (None, None);
    };
    let slot = match rest.get(..2) {
        Some("a-") => Slot::A,
        Some("b-") => Slot::B,
        _ => return (None, None),
    };
    (Some(slot), Some(rest[2..].to_owned()))
}

/// The `.osrel` of a UKI, or `None` if the file is not a UKI.
fn osrel_of(bytes: &[u8]) -> Option<OsRelease> {
    let pe = goblin::pe::PE::parse(bytes).ok()?;
    let s = pe
        .sections
        .iter()
        .find(|s| s.name().ok() == Some(".osrel"))?;
    let start = s.pointer_to_raw_data as usize;
    let len = s.virtual_size.min(s.size_of_raw_data) as usize;
    let text = bytes.get(start..start + len)?;
    Some(OsRelease::parse(&String::from_utf8_lossy(text)))
}

/// Reads every Type #2 entry on the ESP as systemd-boot would.
pub fn scan(esp: &mut dyn Esp, product: &str) -> Result<Vec<SlotEntry>, Error> {
    let mut out = vec![];
    for file in esp.list(LINUX_DIR)? {
        let bytes = esp.read(&format!("{LINUX_DIR}/{file}"))?;
        let Some(osrel) = osrel_of(&bytes) else {
            continue;
        };
        let Some(entry) = Entry::from_uki(&file, &osrel) else {
            continue;
        };
        let stem = EntryName::parse(&file, ".efi")
            .map(|n| n.stem)
            .unwrap_or_default();
        let (slot, name_version) = slot_of(product, &stem);
        out.push(SlotEntry {
            slot,
            name_version,
            entry,
        });
    }
    Ok(out)
}

/// Reads loader.conf (absent = defaults).
pub fn loader_conf(esp: &mut dyn Esp) -> Result<LoaderConf, Error> {
    if !esp.exists(LOADER_CONF)? {
        return Ok(LoaderConf::default());
    }
    Ok(LoaderConf::parse(&String::from_utf8_lossy(
        &esp.read(LOADER_CONF)?,
    )))
}

/// Installs `uki` as slot `slot`'s entry for `version` with `tries` tries
/// (1..=9; [`DEFAULT_TRIES`] for an upgrade; `None` for an uncounted, already-trusted
/// entry such as a factory image's), then removes the slot's other entries.
/// Returns the new file name.
pub fn install(
    esp: &mut dyn Esp,
    product: &str,
    slot: Slot,
    version: &str,
    uki: &[u8],
    tries: Option<u32>,
) -> Result<String, Error> {
    let stem = stem(product, slot, version);
    let name = match tries {
        Some(t) if (1..=MAX_TRIES).contains(&t) => EntryName::counted(&stem, t, ".efi"),
        Some(t) => {
            return Err(Error::BadPath {
                path: stem,
                reason: format!("tries must be 1 to {MAX_TRIES}, not {t}"),
            });
        }
        None => EntryName::parse(&format!("{stem}.efi"), ".efi").expect("ends in .efi"),
    }
    .to_string();
    // A writer killed earlier may have left a temporary file: the loader ignores it,
    // and it goes now.
    for f in esp.list(LINUX_DIR)? {
        if f.ends_with(crate::esp::TMP_SUFFIX) {
            esp.remove(&format!("{LINUX_DIR}/{f}"))?;
        }
    }
    let old: Vec<String> = scan(esp, product)?
        .into_iter()
        .filter(|e| e.slot == Some(slot))
        .map(|e| e.entry.file)
        .collect();
    esp.write_new(&format!("{LINUX_DIR}/{name}"), uki)?;
    for f in old.iter().filter(|f| **f != name) {
        esp.remove(&format!("{LINUX_DIR}/{f}"))?;
    }
    esp.flush()?;
    Ok(name)
}

/// Suffix of a staged entry: a UKI written during an upgrade's prepare phase under
/// a name systemd-boot ignores (it only loads `*.efi`), made an entry at commit.
pub const STAGED_SUFFIX: &str = ".efi.staged";

/// Staged UKIs of `slot` on the ESP.
pub fn staged(esp: &mut dyn Esp, product: &str, slot: Slot) -> Result<Vec<String>, Error> {
    Ok(esp
        .list(LINUX_DIR)?
        .into_iter()
        .filter(|f| {
            f.strip_suffix(STAGED_SUFFIX)
                .is_some_and(|stem| slot_of(product, stem).0 == Some(slot))
        })
        .collect())
}

/// Stages `uki` as slot `slot`'s next entry for `version` without making it
/// bootable: `EFI/Linux/<stem>.efi.staged`. Older staged UKIs of the slot go first.
/// Returns the staged file name.
pub fn stage(
    esp: &mut dyn Esp,
    product: &str,
    slot: Slot,
    version: &str,
    uki: &[u8],
) -> Result<String, Error> {
    for f in staged(esp, product, slot)? {
        esp.remove(&format!("{LINUX_DIR}/{f}"))?;
    }
    let name = format!("{}{STAGED_SUFFIX}", stem(product, slot, version));
    esp.write_new(&format!("{LINUX_DIR}/{name}"), uki)?;
    esp.flush()?;
    Ok(name)
}

/// Makes slot `slot`'s staged UKI its entry with `tries` tries (one rename), after
/// removing the slot's other entries. Returns the entry's file name.
pub fn activate_staged(
    esp: &mut dyn Esp,
    product: &str,
    slot: Slot,
    tries: u32,
) -> Result<String, Error> {
    let staged = staged(esp, product, slot)?;
    let [file] = staged.as_slice() else {
        return Err(Error::NoEntry {
            reason: format!(
                "slot {} has {} staged entries, expected one",
                slot.letter(),
                staged.len()
            ),
        });
    };
    if !(1..=MAX_TRIES).contains(&tries) {
        return Err(Error::BadPath {
            path: file.clone(),
            reason: format!("tries must be 1 to {MAX_TRIES}, not {tries}"),
        });
    }
    let stem = file
        .strip_suffix(STAGED_SUFFIX)
        .expect("filtered by suffix");
    let name = EntryName::counted(stem, tries, ".efi").to_string();
    for e in scan(esp, product)?
        .into_iter()
        .filter(|e| e.slot == Some(slot))
    {
        esp.remove(&format!("{LINUX_DIR}/{}", e.entry.file))?;
    }
    esp.rename(
        &format!("{LINUX_DIR}/{file}"),
        &format!("{LINUX_DIR}/{name}"),
    )?;
    esp.flush()?;
    Ok(name)
}

/// Removes every entry of `slot`, staged ones included (before its partitions are
/// overwritten).
pub fn remove_slot_entries(
    esp: &mut dyn Esp,
    product: &str,
    slot: Slot,
) -> Result<Vec<String>, Error> {
    let mut old: Vec<String> = scan(esp, product)?
        .into_iter()
        .filter(|e| e.slot == Some(slot))
        .map(|e| e.entry.file)
        .collect();
    old.extend(staged(esp, product, slot)?);
    for f in &old {
        esp.remove(&format!("{LINUX_DIR}/{f}"))?;
    }
    esp.flush()?;
    Ok(old)
}

fn rename_entry(esp: &mut dyn Esp, from: &str, to: &str) -> Result<(), Error> {
    if from != to {
        esp.rename(&format!("{LINUX_DIR}/{from}"), &format!("{LINUX_DIR}/{to}"))?;
    }
    Ok(())
}

/// Blesses entry `file` (drops its counter), keeps exactly one good entry of the
/// other slot as fallback and removes every other entry. Returns the new name.
pub fn bless(esp: &mut dyn Esp, product: &str, file: &str) -> Result<String, Error> {
    let all = scan(esp, product)?;
    let this = all
        .iter()
        .find(|e| e.entry.file == file)
        .ok_or_else(|| Error::BadPath {
            path: file.to_owned(),
            reason: "no such entry".into(),
        })?
        .clone();
    let blessed = EntryName::parse(file, ".efi")
        .expect("scanned entries end in .efi")
        .blessed()
        .to_string();
    rename_entry(esp, file, &blessed)?;
    // The fallback: the other slot's newest good entry.
    let other = this.slot.map(Slot::other);
    let mut fallback: Vec<&SlotEntry> = all
        .iter()
        .filter(|e| e.slot.is_some() && e.slot == other && e.entry.counter.is_none())
        .collect();
    fallback.sort_by(|a, b| model::compare(&a.entry, &b.entry));
    let keep = fallback.first().map(|e| e.entry.file.clone());
    for e in &all {
        let f = &e.entry.file;
        if *f == file || Some(f) == keep.as_ref() || e.slot.is_none() {
            continue;
        }
        esp.remove(&format!("{LINUX_DIR}/{f}"))?;
    }
    esp.flush()?;
    Ok(blessed)
}

/// Marks entry `file` bad: `+0-DONE`, so the loader sorts it last.
pub fn mark_bad(esp: &mut dyn Esp, file: &str) -> Result<String, Error> {
    let n = EntryName::parse(file, ".efi").ok_or_else(|| Error::BadPath {
        path: file.to_owned(),
        reason: "not an .efi entry".into(),
    })?;
    let done = n.counter.map_or(0, |c| c.done);
    let bad = EntryName {
        counter: Some(Counter { left: 0, done }),
        done_written: true,
        spelled: None,
        ..n
    }
    .to_string();
    rename_entry(esp, file, &bad)?;
    esp.flush()?;
    Ok(bad)
}

/// What systemd-boot will boot next from this ESP, per the model.
pub fn next(
    esp: &mut dyn Esp,
    product: &str,
    vars: &EfiVars,
) -> Result<(Vec<SlotEntry>, Selection), Error> {
    let entries = scan(esp, product)?;
    let conf = loader_conf(esp)?;
    let plain: Vec<Entry> = entries.iter().map(|e| e.entry.clone()).collect();
    let sel = model::select(&plain, &conf, vars);
    Ok((entries, sel))
}
