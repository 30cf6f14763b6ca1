//! A pure model of how systemd-boot 252 picks the entry it boots, and what it renames
//! on the ESP when it does. Nothing here touches a disk: `qbootctl status` uses it
//! offline to say which entry boots next and why, and the QEMU tests check it
//! against the real loader on every boot.
//!
//! What systemd-boot 252 does (`config_entry_add_unified`, `config_sort_entries`,
//! `config_default_entry_select`, `config_entry_bump_counters`):
//!
//! 1. Every `/EFI/Linux/*.efi` with an `.osrel` section is a Type #2 entry. Its id
//!    is the lower-cased file name, counter included. Title, version and sort key
//!    come from `.osrel`: sort key = `IMAGE_ID` or `ID`; version = `IMAGE_VERSION`,
//!    `VERSION`, `VERSION_ID` or `BUILD_ID`; an entry without any name
//!    (`PRETTY_NAME`, `IMAGE_ID`, `NAME`, `ID`) is skipped.
//! 2. Entries sort: entries with no tries left last; entries with a sort key before
//!    those without; by sort key, machine id, then version *newest first*; then by
//!    id, newest first; then more tries left first, then fewer tries done first.
//! 3. The default is the first entry, in that order, whose id matches (glob)
//!    `LoaderEntryOneShot`, else `LoaderEntryDefault` (or the saved entry when it is
//!    `@saved`), else loader.conf's `default` (or the saved entry for `@saved`),
//!    else simply the first entry.
//! 4. With `timeout 0` that entry boots. If it has a counter the file is renamed
//!    before the kernel starts: `+L-D` → `+(L-1, not below 0)-(D+1)`.
//!
//! Note the consequence the QEMU measurements confirmed: a `default` pattern that
//! matches only the counted entry keeps booting it after its tries run out, which
//! defeats fallback. [`LoaderConf::defeats_fallback`] detects that.

use std::cmp::Ordering;

use crate::counter::{Counter, EntryName};
use crate::{fnmatch, verscmp};

/// The `.osrel` fields systemd-boot reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// PRETTY_NAME
    pub pretty_name: Option<String>,
    /// IMAGE_ID
    pub image_id: Option<String>,
    /// NAME
    pub name: Option<String>,
    /// ID
    pub id: Option<String>,
    /// IMAGE_VERSION
    pub image_version: Option<String>,
    /// VERSION
    pub version: Option<String>,
    /// VERSION_ID
    pub version_id: Option<String>,
    /// BUILD_ID
    pub build_id: Option<String>,
}

impl OsRelease {
    /// The title systemd-boot shows: `PRETTY_NAME`, `IMAGE_ID`, `NAME` or `ID`.
    pub fn title(&self) -> Option<String> {
        self.pretty_name
            .clone()
            .or_else(|| self.image_id.clone())
            .or_else(|| self.name.clone())
            .or_else(|| self.id.clone())
    }

    /// The version systemd-boot orders by: `IMAGE_VERSION`, `VERSION`, `VERSION_ID` or `BUILD_ID`.
    pub fn boot_version(&self) -> Option<String> {
        self.image_version
            .clone()
            .or_else(|| self.version.clone())
            .or_else(|| self.version_id.clone())
            .or_else(|| self.build_id.clone())
    }

    /// The sort key: `IMAGE_ID` or `ID`.
    pub fn sort_key(&self) -> Option<String> {
        self.image_id.clone().or_else(|| self.id.clone())
    }

    /// Parses os-release text (`KEY=value` lines; quotes around values removed).
    pub fn parse(text: &str) -> OsRelease {
        let mut o = OsRelease::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v)
                .to_owned();
            let slot = match k.trim() {
                "PRETTY_NAME" => &mut o.pretty_name,
                "IMAGE_ID" => &mut o.image_id,
                "NAME" => &mut o.name,
                "ID" => &mut o.id,
                "IMAGE_VERSION" => &mut o.image_version,
                "VERSION" => &mut o.version,
                "VERSION_ID" => &mut o.version_id,
                "BUILD_ID" => &mut o.build_id,
                _ => continue,
            };
            *slot = Some(v);
        }
        o
    }
}

/// One boot entry as systemd-boot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// File name in `/EFI/Linux`.
    pub file: String,
    /// The id: the lower-cased file name, counter included (systemd-boot 252).
    pub id: String,
    /// Display title.
    pub title: String,
    /// Sort key (`IMAGE_ID` or `ID`).
    pub sort_key: Option<String>,
    /// Version used for ordering.
    pub version: Option<String>,
    /// Machine id (Type #1 entries only; always `None` for UKIs).
    pub machine_id: Option<String>,
    /// Boot counter, if the name carries one.
    pub counter: Option<Counter>,
}

impl Entry {
    /// The entry systemd-boot makes of UKI `file` with this `.osrel`, or `None` if
    /// it would skip it (not `*.efi`, a name starting with `auto-`, or no name in
    /// `.osrel`).
    pub fn from_uki(file: &str, osrel: &OsRelease) -> Option<Entry> {
        if file.starts_with('.')
            || file.starts_with("auto-")
            || !file.to_ascii_lowercase().ends_with(".efi")
        {
            return None;
        }
        let title = osrel.title()?;
        let version = osrel.boot_version();
        let sort_key = osrel.sort_key();
        // systemd-boot parses the counter with an exact ".efi" suffix.
        let counter = EntryName::parse(file, ".efi").and_then(|n| n.counter);
        Some(Entry {
            file: file.to_owned(),
            id: file.to_lowercase(),
            title,
            sort_key,
            version,
            machine_id: None,
            counter,
        })
    }

    /// True when the entry's tries are exhausted.
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(Counter::is_bad)
    }

    /// The file name after systemd-boot boots this entry once (unchanged if uncounted).
    pub fn file_after_boot(&self) -> String {
        match EntryName::parse(&self.file, ".efi").and_then(|n| n.next()) {
            Some(next) => next.to_string(),
            None => self.file.clone(),
        }
    }
}

fn opt_cmp(a: &Option<String>, b: &Option<String>) -> Ordering {
    // strcmp16 with NULL sorting first
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(y),
    }
}

fn opt_vers(a: &Option<String>, b: &Option<String>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => verscmp::compare(x, y),
    }
}

/// systemd-boot 252's entry order (`config_entry_compare`): `Less` sorts first.
pub fn compare(a: &Entry, b: &Entry) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| {
            if a.sort_key.is_some() && b.sort_key.is_some() {
                opt_cmp(&a.sort_key, &b.sort_key)
                    .then_with(|| opt_cmp(&a.machine_id, &b.machine_id))
                    .then_with(|| opt_vers(&a.version, &b.version).reverse())
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| verscmp::compare(&a.id, &b.id).reverse())
        .then_with(|| match (a.counter, b.counter) {
            (Some(x), Some(y)) => y.left.cmp(&x.left).then(x.done.cmp(&y.done)),
            _ => Ordering::Equal,
        })
}

/// What loader.conf says that matters for selection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoaderConf {
    /// `default` pattern (lower-cased), or `@saved`.
    pub default: Option<String>,
    /// `timeout` in seconds, if set.
    pub timeout: Option<String>,
    /// `editor` setting, if set.
    pub editor: Option<String>,
}

impl LoaderConf {
    /// Parses loader.conf (`key value` lines, `#` comments).
    pub fn parse(text: &str) -> LoaderConf {
        let mut c = LoaderConf::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once([' ', '\t'])
                .map_or((line, ""), |(k, v)| (k, v.trim()));
            match k {
                "default" => c.default = Some(v.to_lowercase()),
                "timeout" => c.timeout = Some(v.to_owned()),
                "editor" => c.editor = Some(v.to_owned()),
                _ => {}
            }
        }
        c
    }

    /// True when the `default` pattern would keep choosing an entry after its tries
    /// are exhausted: it matches a counted entry but no uncounted one, so nothing
    /// it matches can take over when the counted one goes bad.
    pub fn defeats_fallback(&self, entries: &[Entry]) -> bool {
        let Some(p) = self.default.as_deref().filter(|p| *p != "@saved") else {
            return false;
        };
        let matched: Vec<&Entry> = entries
            .iter()
            .filter(|e| fnmatch::matches(p, &e.id))
            .collect();
        matched.iter().any(|e| e.counter.is_some()) && matched.iter().all(|e| e.counter.is_some())
    }
}

/// The loader's EFI variables that influence selection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EfiVars {
    /// `LoaderEntryOneShot` (consumed by the boot that reads it).
    pub entry_oneshot: Option<String>,
    /// `LoaderEntryDefault` (`bootctl set-default`), or `@saved`.
    pub entry_default: Option<String>,
    /// `LoaderEntryLastBooted`.
    pub entry_last_booted: Option<String>,
}

/// Why an entry was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Matched `LoaderEntryOneShot`.
    OneShot(String),
    /// Matched `LoaderEntryDefault` (or the saved entry it pointed to).
    EfiDefault(String),
    /// Matched loader.conf's `default` (or the saved entry it pointed to).
    ConfigDefault(String),
    /// No pattern matched; the first entry in sort order.
    FirstInOrder,
}

/// The outcome of one selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Indices into the input, in systemd-boot's order.
    pub order: Vec<usize>,
    /// Index of the entry that boots, if there is any entry.
    pub chosen: Option<usize>,
    /// Why.
    pub reason: Reason,
}

/// Picks the entry systemd-boot 252 boots (with `timeout 0`, no key pressed).
pub fn select(entries: &[Entry], conf: &LoaderConf, vars: &EfiVars) -> Selection {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    // A stable sort, like systemd-boot's insertion sort over directory order.
    order.sort_by(|&a, &b| compare(&entries[a], &entries[b]));
    let find = |pattern: &Option<String>| -> Option<usize> {
        let p = pattern.as_deref()?.to_lowercase();
        order
            .iter()
            .copied()
            .find(|&i| fnmatch::matches(&p, &entries[i].id))
    };
    let done = |chosen, reason| Selection {
        order: order.clone(),
        chosen: Some(chosen),
        reason,
    };
    if let Some(i) = find(&vars.entry_oneshot) {
        return done(
            i,
            Reason::OneShot(vars.entry_oneshot.clone().unwrap_or_default()),
        );
    }
    let efi_saved = vars.entry_default.as_deref() == Some("@saved");
    let efi_pattern = if efi_saved {
        &vars.entry_last_booted
    } else {
        &vars.entry_default
    };
    if let Some(i) = find(efi_pattern) {
        return done(
            i,
            Reason::EfiDefault(efi_pattern.clone().unwrap_or_default()),
        );
    }
    let conf_saved = conf.default.as_deref() == Some("@saved");
    let conf_pattern = if conf_saved {
        if efi_saved {
            &None
        } else {
            &vars.entry_last_booted
        }
    } else {
        &conf.default
    };
    if let Some(i) = find(conf_pattern) {
        return done(
            i,
            Reason::ConfigDefault(conf_pattern.clone().unwrap_or_default()),
        );
    }
    Selection {
        chosen: order.first().copied(),
        order,
        reason: Reason::FirstInOrder,
    }
}

/// One simulated boot: selects an entry, then applies systemd-boot's rename to it.
/// Returns the selection and, for a counted entry, the (old, new) file names.
pub fn boot(
    entries: &mut [Entry],
    conf: &LoaderConf,
    vars: &mut EfiVars,
) -> (Selection, Option<(String, String)>) {
    let sel = select(entries, conf, vars);
    // A one-shot entry is consumed by the boot that reads it.
    vars.entry_oneshot = None;
    let rename = sel.chosen.and_then(|i| {
        let e = &mut entries[i];
        let next = e.file_after_boot();
        if next == e.file {
            return None;
        }
        let old = std::mem::replace(&mut e.file, next.clone());
        e.id = next.to_lowercase();
        e.counter = EntryName::parse(&next, ".efi").and_then(|n| n.counter);
        Some((old, next))
    });
    (sel, rename)
}

#[cfg(test)]
mod tests;
