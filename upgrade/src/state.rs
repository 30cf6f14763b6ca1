//! The persisted upgrade state: one JSON record (`upgrade.json` in the node's state
//! directory), rewritten atomically (temporary file, fsync, rename, fsync of the
//! directory) at every transition, and a lock file held by the process running a
//! prepare or commit. Killing that process at any point leaves the last record
//! written; the next `qq` command sees the lock free and recovers
//! ([`crate::prepare::recover`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, io_err};

/// Schema id of the persisted record.
pub const RECORD_SCHEMA: &str = "qq.state/1";
/// Schema id of `qq upgrade_status`.
pub const STATUS_SCHEMA: &str = "qq.upgrade_status/1";

/// The upgrade's phase, spelled as `qq upgrade_status` prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing in progress.
    #[default]
    #[serde(rename = "UPGRADE_IDLE")]
    Idle,
    /// Verifying the bundle and writing the slot, container and firmware.
    #[serde(rename = "UPGRADE_PREPARING")]
    Preparing,
    /// Everything staged; waiting for commit.
    #[serde(rename = "UPGRADE_PREPARED")]
    Prepared,
    /// Swapping the container, or rebooting into the new slot.
    #[serde(rename = "UPGRADE_COMMITTING")]
    Committing,
    /// The node runs the new release.
    #[serde(rename = "UPGRADE_COMMITTED")]
    Committed,
}

impl Phase {
    /// The name `qq upgrade_status` prints.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "UPGRADE_IDLE",
            Phase::Preparing => "UPGRADE_PREPARING",
            Phase::Prepared => "UPGRADE_PREPARED",
            Phase::Committing => "UPGRADE_COMMITTING",
            Phase::Committed => "UPGRADE_COMMITTED",
        }
    }
}

/// What went wrong last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorState {
    /// Nothing.
    #[default]
    #[serde(rename = "UPGRADE_ERROR_NO_ERROR")]
    NoError,
    /// Prepare failed; the node is as it was.
    #[serde(rename = "UPGRADE_ERROR_PREPARE_FAILED")]
    PrepareFailed,
    /// Commit failed; the node runs the old release.
    #[serde(rename = "UPGRADE_ERROR_COMMIT_FAILED")]
    CommitFailed,
    /// The new platform did not boot healthy; the node fell back to the old slot.
    #[serde(rename = "UPGRADE_ERROR_ROLLED_BACK")]
    RolledBack,
}

/// Instant (container swap) or platform (reboot into the other slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only the container changes.
    Instant,
    /// The host image changes: the node reboots into the other slot.
    Platform,
}

/// A release as installed or to be installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Release (container) version.
    pub version: String,
    /// Platform version.
    pub platform_version: String,
    /// The slot its platform runs from (`a` or `b`).
    pub slot: char,
}

/// The last commit that completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCommit {
    /// When (Unix seconds).
    pub at: u64,
    /// From which release.
    pub from: String,
    /// To which release.
    pub to: String,
}

/// The persisted record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always [`RECORD_SCHEMA`].
    pub schema: String,
    /// The phase.
    pub state: Phase,
    /// What went wrong last.
    pub error_state: ErrorState,
    /// The cause, in words.
    pub error_message: String,
    /// What is happening or happened.
    pub details: String,
    /// The bundle being installed.
    pub install_path: String,
    /// Why the last attempt was blocked ("" when it was not).
    pub blocked_reason: String,
    /// Until when (Unix seconds) it stays blocked.
    pub blocked_until: Option<u64>,
    /// The step within the phase, for recovery.
    pub step: Option<String>,
    /// Instant or platform.
    pub mode: Option<Mode>,
    /// Rolling reboots requested.
    pub rolling: bool,
    /// What the node ran when the upgrade began.
    pub from: Option<Installed>,
    /// What it installs.
    pub to: Option<Installed>,
    /// The kernel's boot id when the reboot was requested.
    pub boot_id: Option<String>,
    /// Why the new platform was given up on (set before the fallback reboot).
    pub fallback_reason: Option<String>,
    /// Downtime of the last container swap, in milliseconds.
    pub downtime_ms: Option<u64>,
    /// The last completed commit (for settle periods).
    pub last_commit: Option<LastCommit>,
    /// When this record was written (Unix seconds).
    pub updated_at: u64,
}

impl Default for Record {
    fn default() -> Record {
        Record {
            schema: RECORD_SCHEMA.into(),
            state: Phase::Idle,
            error_state: ErrorState::NoError,
            error_message: String::new(),
            details: String::new(),
            install_path: String::new(),
            blocked_reason: String::new(),
            blocked_until: None,
            step: None,
            mode: None,
            rolling: false,
            from: None,
            to: None,
            boot_id: None,
            fallback_reason: None,
            downtime_ms: None,
            last_commit: None,
            updated_at: 0,
        }
    }
}

/// `qq upgrade_status`: the reference's seven fields first, in its order, then ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The bundle being installed.
    pub install_path: String,
    /// `UPGRADE_IDLE` … `UPGRADE_COMMITTED`.
    pub state: Phase,
    /// What is happening or happened.
    pub details: String,
    /// The cause of the error state.
    pub error_message: String,
    /// `UPGRADE_ERROR_*`.
    pub error_state: ErrorState,
    /// True while an upgrade may not start.
    pub is_blocked: bool,
    /// Why.
    pub blocked_reason: String,
    /// Always [`STATUS_SCHEMA`].
    pub schema: String,
    /// Instant or platform, once known.
    pub mode: Option<Mode>,
    /// Rolling reboots requested.
    pub rolling: bool,
    /// Release the node ran when the upgrade began.
    pub from_version: Option<String>,
    /// Release being installed.
    pub to_version: Option<String>,
    /// Downtime of the last container swap, in milliseconds.
    pub downtime_ms: Option<u64>,
    /// The step within the state.
    pub step: Option<String>,
}

/// The state directory: the record and the lock.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Holds the upgrade lock while alive.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Store {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(io_err("creating state directory", dir))?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self) -> PathBuf {
        self.dir.join("upgrade.json")
    }

    /// The record (a fresh one when none was written yet).
    pub fn load(&self) -> Result<Record, Error> {
        let p = self.path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::StateDamaged {
                path: p,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(Error::Io {
                what: "reading",
                path: p,
                source: e,
            }),
        }
    }

    /// Writes `r` atomically. A crash point named `state:<STATE>` (and
    /// `step:<step>` when the step is set) follows every write, for tests.
    pub fn put(&self, r: &mut Record) -> Result<(), Error> {
        r.updated_at = crate::now();
        let mut bytes = serde_json::to_vec_pretty(r).expect("serializable");
        bytes.push(b'\n');
        write_atomic(&self.path(), &bytes)?;
        bootctl::crashpoint::reached(&format!("state:{}", r.state.name()));
        if let Some(step) = &r.step {
            bootctl::crashpoint::reached(&format!("step:{step}"));
        }
        Ok(())
    }

    fn lock_file(&self) -> Result<(File, PathBuf), Error> {
        let p = self.dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_err("opening", &p))?;
        Ok((f, p))
    }

    fn holder_reason(p: &Path) -> String {
        let holder = std::fs::read_to_string(p).unwrap_or_default();
        match holder.trim() {
            "" => "another upgrade operation is running".into(),
            pid => format!("another upgrade operation is running (pid {pid})"),
        }
    }

    /// Takes the upgrade lock (an open-file-description lock on `lock`, released
    /// when the process ends however it ends), or says who holds it.
    pub fn lock(&self) -> Result<Lock, Error> {
        let (mut f, p) = self.lock_file()?;
        let mut fl = whole_file(libc::F_WRLCK);
        // SAFETY: fcntl on a descriptor we own with a valid flock struct.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } != 0 {
            return Err(Error::Blocked {
                reason: Store::holder_reason(&p),
            });
        }
        f.set_len(0).map_err(io_err("writing", &p))?;
        write!(f, "{}", std::process::id()).map_err(io_err("writing", &p))?;
        Ok(Lock { _file: f })
    }

    /// Who holds the lock, if anyone. Only tests the lock (F_OFD_GETLK), so it
    /// never gets in the way of a process taking it.
    pub fn lock_holder(&self) -> Option<String> {
        let (f, p) = self.lock_file().ok()?;
        let mut fl = whole_file(libc::F_WRLCK);
        // SAFETY: as in `lock`.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
            return None;
        }
        (i32::from(fl.l_type) != libc::F_UNLCK).then(|| Store::holder_reason(&p))
    }

    /// The `qq upgrade_status` report.
    pub fn status(&self) -> Result<Status, Error> {
        let r = self.load()?;
        Ok(status_of(&r, self.lock_holder(), crate::now()))
    }
}

fn whole_file(kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// The report for record `r`, with the lock holder (if any) and the time now.
pub fn status_of(r: &Record, lock_holder: Option<String>, now: u64) -> Status {
    let settle = r
        .blocked_until
        .filter(|&t| t > now)
        .map(|_| r.blocked_reason.clone());
    // A record in the middle of an operation with nobody holding the lock: say so.
    let mut details = r.details.clone();
    if lock_holder.is_none() {
        match (r.state, r.step.as_deref()) {
            (Phase::Preparing, _) | (Phase::Committing, Some("swap" | "set-next")) => details
                .push_str(
                    " (interrupted: no qq process runs it; the next `qq upgrade_cluster` command recovers)",
                ),
            (Phase::Committing, Some("reboot" | "fallback")) => {
                details.push_str(" (waiting for the reboot; `qq boot_check` finishes it)")
            }
            _ => {}
        }
    }
    // A running prepare or commit is what the state describes, not a block.
    let lock_holder =
        lock_holder.filter(|_| !matches!(r.state, Phase::Preparing | Phase::Committing));
    let (is_blocked, blocked_reason) = match (lock_holder, settle) {
        (Some(h), _) => (true, h),
        (None, Some(s)) => (true, s),
        (None, None) => (false, String::new()),
    };
    Status {
        install_path: r.install_path.clone(),
        state: r.state,
        details,
        error_message: r.error_message.clone(),
        error_state: r.error_state,
        is_blocked,
        blocked_reason,
        schema: STATUS_SCHEMA.into(),
        mode: r.mode,
        rolling: r.rolling,
        from_version: r.from.as_ref().map(|i| i.version.clone()),
        to_version: r.to.as_ref().map(|i| i.version.clone()),
        downtime_ms: r.downtime_ms,
        step: r.step.clone(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    tmp.write_all(bytes)
        .map_err(io_err("writing", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("syncing", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io_err("renaming into", path)(e.error))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_the_reference_fields_in_order() {
        let r = Record {
            install_path: "/upgrade/qinstall.qimg".into(),
            state: Phase::Preparing,
            ..Record::default()
        };
        let s = status_of(&r, None, 0);
        let text = serde_json::to_string_pretty(&s).unwrap();
        let keys: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        // serde_json's map is sorted; check names and the textual order separately.
        for k in [
            "install_path",
            "state",
            "details",
            "error_message",
            "error_state",
            "is_blocked",
            "blocked_reason",
        ] {
            assert!(keys.contains(&k.to_string()), "{k}");
        }
        let order: Vec<usize> = [
            "\"install_path\"",
            "\"state\"",
            "\"details\"",
            "\"error_message\"",
            "\"error_state\"",
            "\"is_blocked\"",
            "\"blocked_reason\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let back: Status = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        assert!(text.contains("\"state\": \"UPGRADE_PREPARING\""));
        assert!(text.contains("\"error_state\": \"UPGRADE_ERROR_NO_ERROR\""));
    }

    #[test]
    fn blocked_by_the_lock_or_until_a_time() {
        let r = Record {
            blocked_until: Some(100),
            blocked_reason: "settle".into(),
            ..Record::default()
        };
        assert!(status_of(&r, None, 99).is_blocked);
        assert_eq!(status_of(&r, None, 99).blocked_reason, "settle");
        assert!(!status_of(&r, None, 100).is_blocked);
        let s = status_of(&r, Some("pid 7".into()), 200);
        assert!(s.is_blocked && s.blocked_reason == "pid 7");
    }

    fn phase() -> impl proptest::strategy::Strategy<Value = Phase> {
        proptest::sample::select(vec![
            Phase::Idle,
            Phase::Preparing,
            Phase::Prepared,
            Phase::Committing,
            Phase::Committed,
        ])
    }

    proptest::proptest! {
        #[test]
        fn any_record_round_trips_and_reports_its_fields(
            state in phase(),
            err in proptest::sample::select(vec![
                ErrorState::NoError,
                ErrorState::PrepareFailed,
                ErrorState::CommitFailed,
                ErrorState::RolledBack,
            ]),
            text in ".{0,40}",
            until in proptest::option::of(0u64..2000),
            now in 0u64..2000,
            platform in proptest::bool::ANY,
            downtime in proptest::option::of(0u64..100_000),
        ) {
            let r = Record {
                state,
                error_state: err,
                error_message: text.clone(),
                details: text.clone(),
                install_path: text.clone(),
                blocked_reason: text.clone(),
                blocked_until: until,
                step: Some(text.clone()),
                mode: Some(if platform { Mode::Platform } else { Mode::Instant }),
                from: Some(Installed { version: text.clone(), platform_version: "1".into(), slot: 'a' }),
                downtime_ms: downtime,
                last_commit: Some(LastCommit { at: now, from: text.clone(), to: text }),
                ..Record::default()
            };
            let bytes = serde_json::to_vec(&r).unwrap();
            proptest::prop_assert_eq!(&serde_json::from_slice::<Record>(&bytes).unwrap(), &r);
            let s = status_of(&r, None, now);
            proptest::prop_assert_eq!(s.state, state);
            proptest::prop_assert_eq!(s.error_state, err);
            proptest::prop_assert_eq!(s.is_blocked, until.is_some_and(|t| t > now));
            let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn records_round_trip_and_the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap(), Record::default());
        let mut r = Record {
            state: Phase::Prepared,
            mode: Some(Mode::Platform),
            ..Record::default()
        };
        s.put(&mut r).unwrap();
        assert_eq!(s.load().unwrap(), r);
        let held = s.lock().unwrap();
        assert!(matches!(s.lock(), Err(Error::Blocked { .. })));
        assert!(
            s.lock_holder()
                .unwrap()
                .contains(&std::process::id().to_string())
        );
        drop(held);
        assert!(s.lock_holder().is_none());
        std::fs::write(d.path().join("upgrade.json"), b"{").unwrap();
        assert!(matches!(s.load(), Err(Error::StateDamaged { .. })));
    }
}
