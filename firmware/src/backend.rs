//! Flash backends behind one trait.
//!
//! - [`Simulated`]: a device in a directory, with fault injection, for tests and demos.
//! - [`FlashFile`]: an MTD-like device file: erase-block aligned writes, read-back.
//! - [`Tool`]: a vendor tool (e.g. `nvme fw-download` + `fw-commit --action=1`) run
//!   under a time limit, output captured.
//! - [`Capsule`]: UEFI capsule-on-disk: the capsule under `EFI/UpdateCapsule/` on the
//!   ESP (live or in an image, through `bootctl`) and bit 0x4 in `OsIndications`.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootctl::efivars::{EFI_GLOBAL_GUID, read_var, write_var};
use bootctl::esp::Esp;
use serde::{Deserialize, Serialize};

/// What verification established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Checked now (read back, or the device reports the new version).
    Now,
    /// Staged: the result is known after the reboot that activates it.
    AtReboot,
}

/// Why a device write or check failed, in the device's or the tool's words (kept
/// in the journal as the `failed` step's reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceFailure(pub String);

impl From<String> for DeviceFailure {
    fn from(s: String) -> DeviceFailure {
        DeviceFailure(s)
    }
}

impl From<DeviceFailure> for String {
    fn from(f: DeviceFailure) -> String {
        f.0
    }
}

impl From<&str> for DeviceFailure {
    fn from(s: &str) -> DeviceFailure {
        DeviceFailure(s.to_owned())
    }
}

/// A way to put firmware on a device.
pub trait Flasher {
    /// Writes `payload`, giving up at `deadline`.
    fn write(&mut self, payload: &[u8], deadline: Instant) -> Result<(), DeviceFailure>;
    /// Checks what was written; `version` is the payload's version.
    fn verify(&mut self, payload: &[u8], version: &str) -> Result<Verified, DeviceFailure>;
    /// The ESP file a staged update left for the firmware (removed once the result
    /// is known).
    fn staged_file(&self) -> Option<String> {
        None
    }
}

/// Faults a [`Simulated`] device can be told to have (`fault.json` in its directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// The write fails after this many bytes.
    FailAt {
        /// Bytes written before the failure.
        byte: usize,
    },
    /// The byte at this offset is written wrong.
    Corrupt {
        /// Offset.
        byte: usize,
    },
    /// The write never finishes (until the deadline).
    Hang,
    /// The write "succeeds" but the device keeps reporting its old version.
    StaleVersion,
}

/// A simulated device: `contents` (the firmware), `version`, optional `fault.json`.
#[derive(Clone, Debug)]
pub struct Simulated {
    /// Its directory.
    pub dir: PathBuf,
}

impl Simulated {
    fn fault(&self) -> Result<Option<Fault>, String> {
        match std::fs::read(self.dir.join("fault.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("fault.json: {e}")),
            Err(_) => Ok(None),
        }
    }

    /// The version the device reports.
    pub fn version(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("version"))
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

impl Flasher for Simulated {
    fn write(&mut self, payload: &[u8], deadline: Instant) -> Result<(), DeviceFailure> {
        let fault = self.fault()?;
        let mut f = std::fs::File::create(self.dir.join("contents")).map_err(|e| e.to_string())?;
        for (i, chunk) in payload.chunks(4096).enumerate() {
            let at = i * 4096;
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            match &fault {
                Some(Fault::FailAt { byte }) if at + chunk.len() > *byte => {
                    f.write_all(&chunk[..byte - at])
                        .map_err(|e| e.to_string())?;
                    return Err(format!("device error after {byte} bytes").into());
                }
                Some(Fault::Hang) => {
                    while Instant::now() <= deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return Err("timed out".into());
                }
                _ => {}
            }
            let mut c = chunk.to_vec();
            if let Some(Fault::Corrupt { byte }) = &fault
                && (at..at + chunk.len()).contains(byte)
            {
                c[byte - at] ^= 0xff;
            }
            f.write_all(&c).map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| e.to_string().into())
    }

    fn verify(&mut self, payload: &[u8], version: &str) -> Result<Verified, DeviceFailure> {
        let got = std::fs::read(self.dir.join("contents")).map_err(|e| e.to_string())?;
        if got != payload {
            return Err("read-back differs from the payload".into());
        }
        if self.fault()? != Some(Fault::StaleVersion) {
            std::fs::write(self.dir.join("version"), format!("{version}\n"))
                .map_err(|e| e.to_string())?;
        }
        match self.version() {
            Some(v) if v == version => Ok(Verified::Now),
            other => Err(format!(
                "the device still reports {} after a successful write",
                other.unwrap_or_else(|| "no version".into())
            )
            .into()),
        }
    }
}

/// A flash device file (MTD-like): the payload, padded with 0xff (the erased state)
/// to whole erase blocks, written block by block at `offset`, then read back.
///
/// With [`Banks`], the payload goes to the bank that is not active, is read back,
/// and only then does the active-bank file switch to it (atomically): the running
/// bank is never written, and a failed write leaves the device as it was.
#[derive(Clone, Debug)]
pub struct FlashFile {
    /// The device file.
    pub path: PathBuf,
    /// Erase-block size.
    pub erase_block: usize,
    /// Where the image starts (the first bank).
    pub offset: u64,
    /// A second bank, when the device has one.
    pub banks: Option<Banks>,
}

/// A device's second bank and which bank is active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banks {
    /// Where the second bank starts.
    pub second_offset: u64,
    /// A file holding `0` or `1`: the bank the device boots (missing: 0).
    pub active_file: PathBuf,
}

impl Banks {
    /// The active bank.
    pub fn active(&self) -> Result<u8, DeviceFailure> {
        match std::fs::read_to_string(&self.active_file) {
            Ok(t) => match t.trim() {
                "0" => Ok(0),
                "1" => Ok(1),
                other => Err(format!(
                    "{}: {other:?} is not a bank (0 or 1)",
                    self.active_file.display()
                )
                .into()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("{}: {e}", self.active_file.display()).into()),
        }
    }

    fn switch_to(&self, bank: u8) -> Result<(), String> {
        qutil::fs::write_atomic(&self.active_file, format!("{bank}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", self.active_file.display()))
    }
}

impl FlashFile {
    /// The payload as whole erase blocks, the last one padded with 0xff, without
    /// copying the payload.
    fn blocks<'p>(&self, payload: &'p [u8]) -> impl Iterator<Item = Cow<'p, [u8]>> {
        let eb = self.erase_block;
        payload.chunks(eb).map(move |c| {
            if c.len() == eb {
                Cow::Borrowed(c)
            } else {
                let mut v = c.to_vec();
                v.resize(eb, 0xff);
                Cow::Owned(v)
            }
        })
    }

    fn padded_len(&self, payload: &[u8]) -> u64 {
        (payload.len().div_ceil(self.erase_block) * self.erase_block) as u64
    }

    /// Where this flash writes: the inactive bank, or `offset` without banks.
    fn target(&self) -> Result<(u64, Option<u8>), String> {
        match &self.banks {
            None => Ok((self.offset, None)),
            Some(b) => Ok(match b.active()? {
                0 => (b.second_offset, Some(1)),
                _ => (self.offset, Some(0)),
            }),
        }
    }
}

impl Flasher for FlashFile {
    fn write(&mut self, payload: &[u8], deadline: Instant) -> Result<(), DeviceFailure> {
        let (at, _) = self.target()?;
        if let Some(b) = &self.banks {
            let bank = b.second_offset.abs_diff(self.offset);
            let len = self.padded_len(payload);
            if len > bank {
                return Err(format!(
                    "the payload needs {len} bytes, a bank holds {bank}: it would overwrite the other bank"
                ).into());
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        for (i, block) in self.blocks(payload).enumerate() {
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            f.seek(SeekFrom::Start(at + (i * self.erase_block) as u64))
                .and_then(|_| f.write_all(&block))
                .map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| e.to_string().into())
    }

    fn verify(&mut self, payload: &[u8], _version: &str) -> Result<Verified, DeviceFailure> {
        let (at, bank) = self.target()?;
        let mut f = std::fs::File::open(&self.path).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        let mut got = vec![0u8; self.erase_block];
        for (i, want) in self.blocks(payload).enumerate() {
            f.read_exact(&mut got).map_err(|e| e.to_string())?;
            if got[..] != want[..] {
                return Err(
                    format!("read-back differs from the payload in erase block {i}").into(),
                );
            }
        }
        match (bank, &self.banks) {
            (Some(n), Some(b)) => {
                b.switch_to(n)?;
                Ok(Verified::AtReboot)
            }
            _ => Ok(Verified::Now),
        }
    }
}

/// A vendor tool. `{payload}` in an argument is replaced by the payload's path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// Commands run in order to write and commit (e.g. `nvme fw-download`, `nvme fw-commit`).
    pub write: Vec<Vec<String>>,
    /// A command printing the device's version, for verification; without it the
    /// result is checked after the reboot.
    #[serde(default)]
    pub version: Option<Vec<String>>,
}

/// Runs `argv` until `deadline`; its output, or why it failed (with its output).
pub(crate) fn run(argv: &[String], deadline: Instant) -> Result<String, String> {
    let out = qutil::process::run_until(argv, deadline).map_err(|e| qutil::chain(&e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let prog = &argv[0];
        return Err(format!("{prog} failed ({}): {}", out.status, text.trim()));
    }
    Ok(text)
}

impl Flasher for Tool {
    fn write(&mut self, payload: &[u8], deadline: Instant) -> Result<(), DeviceFailure> {
        let tmp = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        std::fs::write(tmp.path(), payload).map_err(|e| e.to_string())?;
        let path = tmp.path().display().to_string();
        for cmd in &self.write {
            let argv: Vec<String> = cmd.iter().map(|a| a.replace("{payload}", &path)).collect();
            run(&argv, deadline)?;
        }
        Ok(())
    }

    fn verify(&mut self, _payload: &[u8], version: &str) -> Result<Verified, DeviceFailure> {
        let Some(cmd) = &self.version else {
            return Ok(Verified::AtReboot);
        };
        let got = run(cmd, Instant::now() + Duration::from_secs(60))?;
        if got.trim() == version {
            Ok(Verified::Now)
        } else {
            Err(format!(
                "the device reports {:?} after the update, expected {version}",
                got.trim()
            )
            .into())
        }
    }
}

/// `EFI_OS_INDICATIONS_FILE_CAPSULE_DELIVERY_SUPPORTED`.
pub const FILE_CAPSULE_DELIVERY: u64 = 0x4;
/// Where capsules go on the ESP.
pub const CAPSULE_DIR: &str = "EFI/UpdateCapsule";

/// A `u64` variable of `EFI_GLOBAL_VARIABLE` (`OsIndications*`), if set.
fn global_u64(dir: &Path, name: &str) -> Result<Option<u64>, String> {
    match read_var(dir, name, EFI_GLOBAL_GUID).map_err(|e| format!("{name}: {e}"))? {
        Some(d) => d
            .get(..8)
            .map(|b| Some(u64::from_le_bytes(b.try_into().expect("8 bytes"))))
            .ok_or_else(|| format!("{name}: {} bytes, expected 8", d.len())),
        None => Ok(None),
    }
}

/// UEFI capsule-on-disk.
pub struct Capsule<'e> {
    /// The ESP (live or in an image).
    pub esp: &'e mut dyn Esp,
    /// efivarfs.
    pub efivars: PathBuf,
    /// File name of the capsule (e.g. `fw-bios.cap`).
    pub file: String,
}

impl Capsule<'_> {
    fn path(&self) -> String {
        format!("{CAPSULE_DIR}/{}", self.file)
    }
}

impl Flasher for Capsule<'_> {
    fn write(&mut self, payload: &[u8], _deadline: Instant) -> Result<(), DeviceFailure> {
        let supported = global_u64(&self.efivars, "OsIndicationsSupported")?.unwrap_or(0);
        if supported & FILE_CAPSULE_DELIVERY == 0 {
            return Err(
                "the firmware does not support capsules on disk (OsIndicationsSupported)".into(),
            );
        }
        let e = |x: bootctl::Error| x.to_string();
        self.esp.create_dir(CAPSULE_DIR).map_err(e)?;
        if self.esp.exists(&self.path()).map_err(e)? {
            self.esp.remove(&self.path()).map_err(e)?;
        }
        self.esp.write_new(&self.path(), payload).map_err(e)?;
        self.esp.flush().map_err(e)?;
        let now = global_u64(&self.efivars, "OsIndications")?.unwrap_or(0);
        write_var(
            &self.efivars,
            "OsIndications",
            EFI_GLOBAL_GUID,
            &(now | FILE_CAPSULE_DELIVERY).to_le_bytes(),
        )
        .map_err(|e| format!("OsIndications: {e}").into())
    }

    fn verify(&mut self, payload: &[u8], _version: &str) -> Result<Verified, DeviceFailure> {
        let got = self.esp.read(&self.path()).map_err(|e| e.to_string())?;
        if got != payload {
            return Err("the staged capsule differs from the payload".into());
        }
        Ok(Verified::AtReboot)
    }

    fn staged_file(&self) -> Option<String> {
        Some(self.path())
    }
}
