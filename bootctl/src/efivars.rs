//! The boot loader's EFI variables, read from (and written to) efivarfs.
//!
//! A file `<Name>-<vendor GUID>` holds a 4-byte little-endian attribute word followed
//! by the value; systemd-boot's strings are UTF-16LE, NUL-terminated. The directory
//! is `/sys/firmware/efi/efivars` on a node; tests point it at a directory of fakes.

use std::path::{Path, PathBuf};

use crate::Error;

/// systemd-boot's vendor GUID (`LoaderEntrySelected`, `LoaderBootCountPath`, …).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where efivarfs is mounted on a node.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Non-volatile, boot-service and runtime access.
const ATTR_NV_BS_RT: u32 = 0x7;

/// The loader's variables in one efivarfs directory.
#[derive(Clone, Debug)]
pub struct LoaderVars {
    dir: PathBuf,
}

fn decode(bytes: &[u8]) -> Option<String> {
    let data = bytes.get(4..)?;
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Encodes a string variable as efivarfs expects it (attributes, UTF-16LE, NUL).
pub fn encode(value: &str) -> Vec<u8> {
    let mut b = ATTR_NV_BS_RT.to_le_bytes().to_vec();
    for u in value.encode_utf16().chain([0]) {
        b.extend_from_slice(&u.to_le_bytes());
    }
    b
}

impl LoaderVars {
    /// Variables in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> LoaderVars {
        LoaderVars {
            dir: dir.as_ref().to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{LOADER_GUID}"))
    }

    /// A string variable, if set.
    pub fn get(&self, name: &str) -> Result<Option<String>, Error> {
        let p = self.path(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(decode(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::File { path: p, source }),
        }
    }

    /// Sets a string variable (a new file: efivarfs makes existing ones immutable, so
    /// an existing variable is removed first).
    pub fn set(&self, name: &str, value: &str) -> Result<(), Error> {
        let p = self.path(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, encode(value)).map_err(|source| Error::File { path: p, source })
    }

    /// The entry file the loader booted, with its current name: the base name of
    /// `LoaderBootCountPath` (the name after the loader's rename) for a counted entry,
    /// else `LoaderEntrySelected`.
    pub fn booted_entry(&self) -> Result<Option<String>, Error> {
        if let Some(p) = self.get("LoaderBootCountPath")? {
            return Ok(p.rsplit(['\\', '/']).next().map(str::to_owned));
        }
        self.get("LoaderEntrySelected")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_booted_entry() {
        let d = tempfile::tempdir().unwrap();
        let v = LoaderVars::new(d.path());
        assert_eq!(v.booted_entry().unwrap(), None);
        v.set("LoaderEntrySelected", "qimg-a-7.0.efi").unwrap();
        assert_eq!(
            v.get("LoaderEntrySelected").unwrap().as_deref(),
            Some("qimg-a-7.0.efi")
        );
        assert_eq!(v.booted_entry().unwrap().as_deref(), Some("qimg-a-7.0.efi"));
        v.set("LoaderBootCountPath", "\\EFI\\Linux\\qimg-b-7.1+2-1.efi")
            .unwrap();
        assert_eq!(
            v.booted_entry().unwrap().as_deref(),
            Some("qimg-b-7.1+2-1.efi")
        );
        let raw =
            std::fs::read(d.path().join(format!("LoaderEntrySelected-{LOADER_GUID}"))).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(&raw[raw.len() - 2..], &[0, 0]);
    }
}
