//! The boot loader's EFI variables, read from (and written to) efivarfs.
//!
//! A file `<Name>-<vendor GUID>` holds a 4-byte little-endian attribute word followed
//! by the value; systemd-boot's strings are UTF-16LE, NUL-terminated. The directory
//! is `/sys/firmware/efi/efivars` on a node; tests point it at a directory of fakes.

use std::path::{Path, PathBuf};

use crate::Error;

/// systemd-boot's vendor GUID (`LoaderEntrySelected`, `LoaderBootCountPath`, …).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// `EFI_GLOBAL_VARIABLE` (`OsIndications`, `OsIndicationsSupported`, …).
pub const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Where efivarfs is mounted on a node.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Non-volatile, boot-service and runtime access.
const ATTR_NV_BS_RT: u32 = 0x7;

/// The loader's variables in one efivarfs directory.
#[derive(Clone, Debug)]
pub struct LoaderVars {
    dir: PathBuf,
}

fn decode(data: &[u8]) -> Option<String> {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// The bytes of an efivarfs file holding `data`: attributes (NV|BS|RT), then the data.
pub fn file_bytes(data: &[u8]) -> Vec<u8> {
    let mut b = ATTR_NV_BS_RT.to_le_bytes().to_vec();
    b.extend_from_slice(data);
    b
}

/// A string variable's data as systemd-boot writes it: UTF-16LE, NUL-terminated.
fn encode(value: &str) -> Vec<u8> {
    value
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn var_path(dir: &Path, name: &str, guid: &str) -> PathBuf {
    dir.join(format!("{name}-{guid}"))
}

/// The data of variable `name` of vendor `guid` in efivarfs `dir` (the attribute
/// word stripped), if it is set.
pub fn read_var(dir: &Path, name: &str, guid: &str) -> Result<Option<Vec<u8>>, Error> {
    let p = var_path(dir, name, guid);
    match std::fs::read(&p) {
        Ok(b) if b.len() >= 4 => Ok(Some(b[4..].to_vec())),
        Ok(_) => Err(Error::File {
            path: p,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "shorter than its attribute word",
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::File { path: p, source }),
    }
}

/// Sets variable `name` of vendor `guid` to `data` (NV|BS|RT). efivarfs makes
/// existing variable files immutable, so an existing one is removed first.
pub fn write_var(dir: &Path, name: &str, guid: &str, data: &[u8]) -> Result<(), Error> {
    let p = var_path(dir, name, guid);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, file_bytes(data)).map_err(|source| Error::File { path: p, source })
}

impl LoaderVars {
    /// Variables in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> LoaderVars {
        LoaderVars {
            dir: dir.as_ref().to_owned(),
        }
    }

    /// A string variable, if set.
    pub fn get(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(read_var(&self.dir, name, LOADER_GUID)?.and_then(|d| decode(&d)))
    }

    /// Sets a string variable.
    pub fn set(&self, name: &str, value: &str) -> Result<(), Error> {
        write_var(&self.dir, name, LOADER_GUID, &encode(value))
    }

    /// Deletes a variable (absent is fine).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let p = var_path(&self.dir, name, LOADER_GUID);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::File { path: p, source: e })
            }
            _ => Ok(()),
        }
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

    #[test]
    fn raw_variables_strip_and_add_the_attribute_word() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            read_var(d.path(), "OsIndications", EFI_GLOBAL_GUID).unwrap(),
            None
        );
        write_var(
            d.path(),
            "OsIndications",
            EFI_GLOBAL_GUID,
            &5u64.to_le_bytes(),
        )
        .unwrap();
        let p = d.path().join(format!("OsIndications-{EFI_GLOBAL_GUID}"));
        assert_eq!(
            std::fs::read(&p).unwrap(),
            [7, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            read_var(d.path(), "OsIndications", EFI_GLOBAL_GUID).unwrap(),
            Some(5u64.to_le_bytes().to_vec())
        );
        // Replacing works although efivarfs files are immutable (removed first).
        write_var(d.path(), "OsIndications", EFI_GLOBAL_GUID, &[1]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), [7, 0, 0, 0, 1]);
        std::fs::write(&p, [7, 0]).unwrap();
        let e = read_var(d.path(), "OsIndications", EFI_GLOBAL_GUID).unwrap_err();
        assert!(e.to_string().contains("OsIndications"), "{e}");
    }
}
