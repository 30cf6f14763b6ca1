//! A directory tree to a squashfs image, in-process, with `backhand`.
//!
//! Reproducible: entries are added in byte order of their paths, every timestamp
//! is SOURCE_DATE_EPOCH, owners are root (the tree is built by an unprivileged
//! release engineer; mksquashfs calls this `-all-root`). Supported entry types:
//! directories, regular files, symlinks, character and block devices, FIFOs and
//! sockets. Not carried: extended attributes (backhand's writer has no xattr
//! support) and hard links (each link is stored as a file; identical data is
//! stored once).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use backhand::compression::{CompressionOptions, Compressor};
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use crate::{Cancel, Error};

mod parallel;
pub use parallel::Stats;

/// squashfs block size: 128 KiB, mksquashfs's default.
pub const BLOCK_SIZE: u32 = 128 * 1024;

/// Reads a file on first use and closes it at end of file, so a tree of any size
/// needs only one open descriptor; counts bytes and honours cancellation.
struct LazyReader<'p> {
    path: PathBuf,
    file: Option<File>,
    done: bool,
    task: &'p dyn qimg::Task,
    cancel: &'p Cancel,
}

impl Read for LazyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        if self.done {
            return Ok(0);
        }
        let file =
            match &mut self.file {
                Some(f) => f,
                None => self.file.insert(File::open(&self.path).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
                })?),
            };
        let n = file.read(buf)?;
        if n == 0 {
            self.file = None;
            self.done = true;
        }
        self.task.advance(n as u64);
        Ok(n)
    }
}

/// Total size of regular files under `root`, for progress.
pub fn tree_size(root: &Path) -> Result<u64, Error> {
    let mut total = 0;
    for (_, meta) in walk(root)? {
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Every entry under `root` (not `root` itself), sorted by path bytes.
fn walk(root: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, Error> {
    let input = |path: &Path, source| Error::Input {
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| input(&dir, e))? {
            let entry = entry.map_err(|e| input(&dir, e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| input(&path, e))?;
            if meta.is_dir() {
                stack.push(path.clone());
            }
            entries.push((path, meta));
        }
        out.extend(entries);
    }
    out.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    Ok(out)
}

/// Builds a squashfs image of `root` into `out`, zstd-compressed at `level`, with
/// data blocks compressed on `workers` threads (0 = all on the writing thread; the
/// output is the same either way). Returns the image size in bytes (a multiple of
/// 4 KiB) and how many blocks were compressed ahead.
pub fn build<W: Write + Seek>(
    root: &Path,
    out: W,
    level: i32,
    mtime: u32,
    workers: usize,
    task: &dyn qimg::Task,
    cancel: &Cancel,
) -> Result<(u64, Stats), Error> {
    let component = root.display().to_string();
    let squashfs_err = |source| Error::Squashfs {
        root: root.to_owned(),
        source,
    };
    let entries = walk(root)?;
    let root_meta = std::fs::metadata(root).map_err(|source| Error::Input {
        path: root.to_owned(),
        source,
    })?;
    let mut fs = FilesystemWriter::default();
    if workers > 0 {
        fs.set_kind(backhand::kind::Kind::new_v4(&parallel::DISPATCH));
    }
    fs.set_block_size(BLOCK_SIZE);
    fs.set_time(mtime);
    fs.set_root_mode((root_meta.mode() & 0o7777) as u16);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    fs.set_only_root_id();
    let compressor = FilesystemCompressor::new(
        Compressor::Zstd,
        Some(CompressionOptions::Zstd(backhand::compression::Zstd {
            compression_level: level as u32,
        })),
    )
    .map_err(squashfs_err)?;
    fs.set_compressor(compressor);
    // backhand writes file data in `Path` order of the image paths.
    let mut files: Vec<(&Path, PathBuf)> = entries
        .iter()
        .filter(|(_, m)| m.is_file())
        .map(|(p, _)| (p.strip_prefix(root).expect("under root"), p.clone()))
        .collect();
    files.sort_by(|a, b| a.0.cmp(b.0));
    let files: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    for (path, meta) in &entries {
        let rel = path.strip_prefix(root).expect("walk stays under root");
        let header = NodeHeader::new((meta.mode() & 0o7777) as u16, 0, 0, mtime);
        let ft = meta.file_type();
        let added = if ft.is_dir() {
            fs.push_dir(rel, header)
        } else if ft.is_file() {
            let reader = LazyReader {
                path: path.clone(),
                file: None,
                done: false,
                task,
                cancel,
            };
            fs.push_file(reader, rel, header)
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|source| Error::Input {
                path: path.clone(),
                source,
            })?;
            fs.push_symlink(target, rel, header)
        } else if ft.is_char_device() {
            fs.push_char_device(meta.rdev() as u32, rel, header)
        } else if ft.is_block_device() {
            fs.push_block_device(meta.rdev() as u32, rel, header)
        } else if ft.is_fifo() {
            fs.push_fifo(rel, header)
        } else if ft.is_socket() {
            fs.push_socket(rel, header)
        } else {
            return Err(Error::UnsupportedFile { path: path.clone() });
        };
        added.map_err(squashfs_err)?;
    }
    let mut out = out;
    let (result, stats) = if workers > 0 {
        parallel::run(files, compressor, BLOCK_SIZE, workers, cancel, || {
            fs.write(&mut out)
        })
    } else {
        (fs.write(&mut out), Stats::default())
    };
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let (_, size) = result.map_err(|source| Error::Squashfs {
        root: PathBuf::from(component),
        source,
    })?;
    Ok((size, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn image(root: &Path, workers: usize) -> (Vec<u8>, Stats) {
        let mut out = Cursor::new(Vec::new());
        let (size, stats) = build(
            root,
            &mut out,
            3,
            1_700_000_000,
            workers,
            &qimg::NoProgress,
            &Cancel::new(),
        )
        .unwrap();
        let bytes = out.into_inner();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(size % 4096, 0);
        (bytes, stats)
    }

    #[test]
    fn parallel_compression_gives_identical_bytes_and_is_used() {
        let d = tempfile::tempdir().unwrap();
        crate::sample::generate_tree(d.path(), 6 << 20, 5, "1.0").unwrap();
        // Names whose byte order differs from `Path` order, and a sparse file.
        std::fs::create_dir_all(d.path().join("a-b")).unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        let mut rng = crate::sample::Rng::new(9);
        crate::sample::write_random(&d.path().join("a-b/x"), 300_000, &mut rng).unwrap();
        crate::sample::write_text(&d.path().join("a/b/y"), 300_000, &mut rng).unwrap();
        let mut sparse = vec![0u8; 5 * BLOCK_SIZE as usize];
        sparse[3 * BLOCK_SIZE as usize] = 1;
        std::fs::write(d.path().join("a/sparse"), &sparse).unwrap();

        let (serial, none) = image(d.path(), 0);
        assert_eq!(none, Stats::default());
        for workers in [1, 2, 3] {
            let (parallel, stats) = image(d.path(), workers);
            assert!(parallel == serial, "{workers} workers changed the image");
            assert!(stats.hits > 20, "{stats:?}");
            // Only fragments are compressed inline when the order is predicted right.
            assert!(stats.misses < stats.hits / 2, "{stats:?}");
        }
    }

    #[test]
    fn cancellation_stops_the_build() {
        let d = tempfile::tempdir().unwrap();
        crate::sample::generate_tree(d.path(), 2 << 20, 6, "1.0").unwrap();
        let cancel = Cancel::new();
        cancel.cancel();
        let r = build(
            d.path(),
            Cursor::new(Vec::new()),
            3,
            0,
            2,
            &qimg::NoProgress,
            &cancel,
        );
        assert!(matches!(r, Err(Error::Cancelled)));
    }
}
