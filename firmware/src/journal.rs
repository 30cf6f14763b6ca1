//! The flash journal: one small JSON file per component, replaced atomically (temp
//! file, fsync, rename, fsync of the directory) at every step, so a prepare killed at
//! any point can be resumed or reported exactly (fwupd keeps `pending.db` for the
//! same reason).
//!
//! Steps: `planned` → `writing` → `written` → `verified` → `activated`, or `failed`
//! with a reason. A capsule (activation at reboot) stays `verified` — staged — until
//! the results after the reboot move it to `activated` or `failed`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where a component's flash stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Step {
    /// Decided, nothing written.
    Planned,
    /// Being written: a restart writes again from the start.
    Writing,
    /// Written, not yet verified.
    Written,
    /// Verified (read back, or staged for activation at reboot).
    Verified,
    /// Running the new version.
    Activated,
    /// Failed; nothing more is attempted for it.
    Failed {
        /// Why.
        reason: String,
    },
}

impl Step {
    /// The step's name, as in the journal (`planned`, …, `failed`).
    pub fn name(&self) -> &'static str {
        match self {
            Step::Planned => "planned",
            Step::Writing => "writing",
            Step::Written => "written",
            Step::Verified => "verified",
            Step::Activated => "activated",
            Step::Failed { .. } => "failed",
        }
    }

    /// The step in words: its name, and for `failed` the reason.
    pub fn text(&self) -> String {
        match self {
            Step::Failed { reason } => format!("failed: {reason}"),
            other => other.name().to_owned(),
        }
    }
}

/// One component's journal record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always `qfirmware.journal/1`.
    pub schema: String,
    /// Bundle component name.
    pub component: String,
    /// Device component id.
    pub device: String,
    /// Installed version before.
    pub from: Option<String>,
    /// Version being installed.
    pub to: String,
    /// SHA-256 of the payload (hex), to tell a resumed flash of the same payload.
    pub payload_sha256: String,
    /// The payload's version format (to read an ESRT `u32` after the reboot).
    #[serde(default)]
    pub format: qimg::firmware::VersionFormat,
    /// The boot id (`/proc/sys/kernel/random/boot_id`) when it was staged: results
    /// are only judged in a later boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The ESP file of a staged capsule, removed when the result is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_file: Option<String>,
    /// Where it stands.
    pub step: Step,
}

/// The journal directory.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

fn jerr(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Journal {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// A journal in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Journal, Error> {
        std::fs::create_dir_all(dir).map_err(jerr(dir))?;
        Ok(Journal {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.json"))
    }

    /// The record of `component`, if any.
    pub fn get(&self, component: &str) -> Result<Option<Record>, Error> {
        let p = self.path(component);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Journal {
                    path: p,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Journal { path: p, source }),
        }
    }

    /// Every record, by component name.
    pub fn all(&self) -> Result<Vec<Record>, Error> {
        let mut out = vec![];
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(jerr(&self.dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        for n in names {
            if let Some(r) = self.get(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Writes `record` durably: temp file, fsync, rename, fsync of the directory.
    pub fn put(&self, record: &Record) -> Result<(), Error> {
        let p = self.path(&record.component);
        qutil::fs::write_json(&p, record).map_err(jerr(&p))
    }

    /// Moves `record` to `step` and writes it.
    pub fn advance(&self, record: &mut Record, step: Step) -> Result<(), Error> {
        record.step = step;
        self.put(record)
    }

    /// Takes the journal's exclusive lock (held until the file is dropped), so two
    /// flashes never run on one node at once.
    pub fn lock(&self) -> Result<qutil::lock::Lock, Error> {
        let p = self.dir.join(".lock");
        match qutil::lock::try_lock(&p).map_err(jerr(&p))? {
            Ok(l) => Ok(l),
            Err(_) => Err(Error::Busy { path: p }),
        }
    }

    /// Forgets a component (after its result was reported).
    pub fn remove(&self, component: &str) -> Result<(), Error> {
        let p = self.path(component);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Journal { path: p, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_the_serialized_tags() {
        let all = [
            Step::Planned,
            Step::Writing,
            Step::Written,
            Step::Verified,
            Step::Activated,
            Step::Failed { reason: "x".into() },
        ];
        for s in all {
            assert_eq!(serde_json::to_value(&s).unwrap()["step"], s.name());
        }
    }

    #[test]
    fn records_survive_and_replace_atomically() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(&d.path().join("journal")).unwrap();
        let mut r = Record {
            schema: "qfirmware.journal/1".into(),
            component: "fw-bmc".into(),
            device: "bmc".into(),
            from: Some("1.0".into()),
            to: "2.0".into(),
            payload_sha256: "00".repeat(32),
            format: Default::default(),
            boot_id: None,
            staged_file: None,
            step: Step::Planned,
        };
        j.put(&r).unwrap();
        j.advance(&mut r, Step::Writing).unwrap();
        j.advance(&mut r, Step::Failed { reason: "x".into() })
            .unwrap();
        let j2 = Journal::open(&d.path().join("journal")).unwrap();
        assert_eq!(j2.get("fw-bmc").unwrap(), Some(r.clone()));
        assert_eq!(j2.all().unwrap(), vec![r]);
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("journal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty());
        j2.remove("fw-bmc").unwrap();
        assert_eq!(j2.get("fw-bmc").unwrap(), None);
    }
}
