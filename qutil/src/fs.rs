//! Files replaced atomically, and sparse copies.
//!
//! Every durable small file of the project (upgrade records, firmware journal
//! records, the active-bank file, qcloud's output) and every streamed output
//! (bundles, disk images, UKIs) goes through [`AtomicFile`]: a temporary file in the
//! target's directory, fsync, rename over the target, fsync of the directory. A
//! crash at any point leaves the old file or the new one, never a mix, and the
//! rename itself survives power loss.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A file being written that replaces `path` only on [`AtomicFile::commit`];
/// dropped without a commit, it leaves nothing behind.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    dir: PathBuf,
    mode: u32,
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

impl AtomicFile {
    /// Starts a replacement of `path` (mode 0644 once committed); the temporary file
    /// is named `.<prefix>…` in the same directory.
    pub fn new(path: &Path, prefix: &str) -> io::Result<AtomicFile> {
        let dir = dir_of(path);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{prefix}"))
            .tempfile_in(&dir)?;
        Ok(AtomicFile {
            tmp,
            path: path.to_owned(),
            dir,
            mode: 0o644,
        })
    }

    /// The permission bits the file gets at commit (default 0644; tempfile's own
    /// 0600 otherwise).
    pub fn mode(mut self, mode: u32) -> AtomicFile {
        self.mode = mode;
        self
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Where the temporary file is.
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Sets the mode, fsyncs, renames over the target, fsyncs the directory.
    pub fn commit(self) -> io::Result<()> {
        let f = self.tmp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        f.sync_all()?;
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        sync_dir(&self.dir)
    }
}

/// Replaces `path` with `bytes` atomically and durably (see [`AtomicFile`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::new(path, "tmp-")?;
    f.file().write_all(bytes)?;
    f.commit()
}

/// A secret (private key, token key, password hashes): like [`write_atomic`] but
/// mode 0600, which the temporary file has from its creation, so the bytes are
/// never readable by others, not even for a moment.
pub fn write_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::new(path, "tmp-")?.mode(0o600);
    f.file().write_all(bytes)?;
    f.commit()
}

/// A JSON record file: `v` pretty-printed with a final newline, replaced atomically
/// and durably (see [`AtomicFile`]). The upgrade state, the installed-containers
/// record and the firmware journal's records are written through it.
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Makes everything written so far on the file system holding `path` durable
/// (`syncfs(2)`): for trees of files written in one go (an extracted container),
/// where a file-by-file fsync would cost one journal commit each.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: syncfs on a descriptor we own and keep open across the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes an unprivileged writer can still use on the file system holding
/// `path` (`statvfs(3)`: available blocks times the fragment size).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    // SAFETY: statvfs is plain data; all zeroes is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Makes a directory's entries (creations, renames, removals in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The data ranges of a file (`SEEK_DATA`/`SEEK_HOLE`): (offset, length) pairs
/// covering every byte that is not a hole. A file system without hole reporting
/// answers one range covering the whole file.
pub fn data_ranges(f: &File) -> io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let len = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut out = vec![];
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor we borrow; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    Ok(out)
}

/// Copies `from` to a new file `to`, keeping holes: a reflink (`FICLONE`) where the
/// file system shares extents, otherwise the data ranges only, copied inside the
/// kernel. `to` must not exist; on failure it is removed and `from` is untouched.
pub fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let src = File::open(from)?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let copy = || -> io::Result<()> {
        const FICLONE: libc::c_ulong = 0x4004_9409;
        // SAFETY: FICLONE takes the source descriptor as its argument.
        if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
            return Ok(());
        }
        let len = src.metadata()?.len();
        for (start, n) in data_ranges(&src)? {
            let (mut off_in, mut off_out) = (start as i64, start as i64);
            let mut left = n as usize;
            while left > 0 {
                // SAFETY: both descriptors are open; the offsets are ours.
                let done = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        &mut off_in,
                        dst.as_raw_fd(),
                        &mut off_out,
                        left,
                        0,
                    )
                };
                match done {
                    d if d < 0 => return Err(io::Error::last_os_error()),
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "source shrank",
                        ));
                    }
                    d => left -= d as usize,
                }
            }
        }
        dst.set_len(len)?;
        dst.set_permissions(src.metadata()?.permissions())
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(to);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    #[test]
    fn an_uncommitted_file_leaves_nothing_and_a_commit_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::new(&p, "x-").unwrap();
            f.file().write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let s = d.path().join("secret");
        write_secret(&s, b"k").unwrap();
        let mode = std::fs::metadata(&s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&s).unwrap(), b"k");
    }

    #[test]
    fn a_sparse_copy_keeps_bytes_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut f = File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 10)).unwrap();
        f.write_all(b"end-marker").unwrap();
        drop(f);
        copy_sparse(&a, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let used =
            |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap()) * 512;
        assert!(
            used(&b) < 8 << 20,
            "the copy is not sparse: {} bytes used",
            used(&b)
        );
        // The target must be new; the source is untouched when it is not.
        assert!(copy_sparse(&a, &b).is_err());
        assert_eq!(std::fs::metadata(&a).unwrap().len(), 64 << 20);
    }
}
