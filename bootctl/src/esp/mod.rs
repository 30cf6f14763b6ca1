//! The EFI System Partition, live or offline, behind one interface.
//!
//! - [`DirEsp`]: a mounted ESP directory on a running node (std::fs).
//! - [`ImageEsp`]: the FAT partition inside a disk image, through `fatfs` over the
//!   partition's byte range: no mount, no loop device, no root.
//!
//! The same rules hold for both: paths are relative and `/`-separated; a new file is
//! written under a temporary name systemd-boot ignores and then renamed into place,
//! so a half-written UKI is never an entry; writing never replaces an existing file;
//! a write that does not fit is refused before anything changes.

pub mod fat;
mod image;

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

pub use image::{ImageEsp, format};

use crate::Error;

/// Directories every ESP laid out by qimg has.
pub const DIRS: [&str; 6] = [
    "EFI",
    "EFI/BOOT",
    "EFI/systemd",
    "EFI/Linux",
    "loader",
    "loader/entries",
];
/// Suffix of files being written; systemd-boot only looks at `.efi` and `.conf`.
pub const TMP_SUFFIX: &str = ".qimg-tmp";
/// Room kept free beyond a file's size (directory entries, cluster rounding).
pub const SLACK: u64 = 64 << 10;

/// Operations on an ESP. See the module docs for the rules every backend keeps.
pub trait Esp {
    /// File names (not directories) in `dir`, sorted.
    fn list(&mut self, dir: &str) -> Result<Vec<String>, Error>;
    /// A whole file.
    fn read(&mut self, path: &str) -> Result<Vec<u8>, Error>;
    /// True if `path` exists.
    fn exists(&mut self, path: &str) -> Result<bool, Error>;
    /// Bytes free.
    fn free_bytes(&mut self) -> Result<u64, Error>;
    /// Renames a file within its directory. Refuses to replace an existing file.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error>;
    /// Removes a file.
    fn remove(&mut self, path: &str) -> Result<(), Error>;
    /// Writes `data` to the new file `path` (temporary name, then rename).
    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error>;
    /// Creates a directory and its parents if missing (8.3 names on an image).
    fn create_dir(&mut self, path: &str) -> Result<(), Error>;
    /// Makes everything durable.
    fn flush(&mut self) -> Result<(), Error>;
}

/// Checks an ESP path: relative, no empty, `.` or `..` components.
pub fn check_path(path: &str) -> Result<(), Error> {
    let bad = |reason: &str| {
        Err(Error::BadPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if path.is_empty() || path.starts_with('/') {
        return bad("must be relative and not empty");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("empty, `.` or `..` component");
    }
    Ok(())
}

fn esp_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Esp {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Checks that `len` more bytes fit.
pub fn check_room(esp: &mut dyn Esp, path: &str, len: u64) -> Result<(), Error> {
    let free = esp.free_bytes()?;
    if free < len + SLACK {
        return Err(Error::EspFull {
            path: path.to_owned(),
            needed: len + SLACK,
            free,
        });
    }
    Ok(())
}

/// A mounted ESP directory.
#[derive(Debug)]
pub struct DirEsp {
    root: PathBuf,
}

impl DirEsp {
    /// The ESP mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DirEsp {
        DirEsp { root: root.into() }
    }

    fn at(&self, path: &str) -> Result<PathBuf, Error> {
        check_path(path)?;
        Ok(self.root.join(path))
    }

    fn sync_dir_of(&self, path: &str) -> Result<(), Error> {
        let p = self.at(path)?;
        let dir = p.parent().unwrap_or(&self.root).to_owned();
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(esp_err("syncing directory of", path))
    }
}

impl Esp for DirEsp {
    fn list(&mut self, dir: &str) -> Result<Vec<String>, Error> {
        let p = self.at(dir)?;
        let mut out = vec![];
        for e in std::fs::read_dir(&p).map_err(esp_err("listing", dir))? {
            let e = e.map_err(esp_err("listing", dir))?;
            if e.file_type().map_err(esp_err("listing", dir))?.is_file() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        std::fs::read(self.at(path)?).map_err(esp_err("reading", path))
    }

    fn exists(&mut self, path: &str) -> Result<bool, Error> {
        Ok(self.at(path)?.exists())
    }

    fn free_bytes(&mut self) -> Result<u64, Error> {
        let root =
            std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).map_err(|_| {
                Error::BadPath {
                    path: self.root.display().to_string(),
                    reason: "contains NUL".into(),
                }
            })?;
        // SAFETY: statvfs fills a plain struct for a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(root.as_ptr(), &mut st) } != 0 {
            return Err(esp_err("measuring free space of", ".")(
                io::Error::last_os_error(),
            ));
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let (a, b) = (self.at(from)?, self.at(to)?);
        if b.exists() {
            return Err(Error::Esp {
                op: "renaming onto",
                path: to.to_owned(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        std::fs::rename(&a, &b).map_err(esp_err("renaming", from))?;
        // On vfat a renamed file gets a new directory entry whose size is filled in
        // only when the file's inode is written back: syncing the directory alone
        // leaves a zero-length entry after a power loss (seen on a real node under
        // QEMU). Sync the file, then the directory.
        std::fs::File::open(&b)
            .and_then(|f| f.sync_all())
            .map_err(esp_err("syncing", to))?;
        self.sync_dir_of(to)
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        std::fs::remove_file(self.at(path)?).map_err(esp_err("removing", path))?;
        self.sync_dir_of(path)
    }

    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        if self.exists(path)? {
            return Err(Error::Esp {
                op: "writing",
                path: path.to_owned(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        check_room(self, path, data.len() as u64)?;
        let tmp = format!("{path}{TMP_SUFFIX}");
        let p = self.at(&tmp)?;
        let mut f = std::fs::File::create(&p).map_err(esp_err("creating", path))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(esp_err("writing", path))?;
        crate::crashpoint::reached("entry-write");
        self.rename(&tmp, path)
    }

    fn create_dir(&mut self, path: &str) -> Result<(), Error> {
        std::fs::create_dir_all(self.at(path)?).map_err(esp_err("creating directory", path))
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A byte range of a device (a partition), as a device of its own.
#[derive(Debug)]
pub struct Slice<D> {
    inner: D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<D: Seek> Slice<D> {
    /// The `len` bytes of `inner` from `start`.
    pub fn new(inner: D, start: u64, len: u64) -> Slice<D> {
        Slice {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    /// The underlying device.
    pub fn into_inner(self) -> D {
        self.inner
    }
}

impl<D: Read + Seek> Read for Slice<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: Write + Seek> Write for Slice<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D: Seek> Seek for Slice<D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = p;
        Ok(p)
    }
}
