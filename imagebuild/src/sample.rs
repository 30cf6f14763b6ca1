//! Deterministic sample content: directory trees that look like a root filesystem,
//! half compressible text and half incompressible bytes. Used by `imagebuild demo`,
//! the tests and `cargo xtask bench`. The same seed and size give the same tree.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// SplitMix64: small, fast, and good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "cluster",
    "node",
    "slot",
    "verity",
    "upgrade",
    "prepare",
    "commit",
    "platform",
    "container",
    "firmware",
    "rolling",
    "reboot",
    "quorum",
    "protect",
    "stripe",
    "journal",
    "inode",
    "extent",
    "snapshot",
    "replica",
    "checksum",
    "metadata",
    "allocator",
    "scheduler",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "0x1f",
    "42",
    "ok",
    "error",
    "warn",
    "info",
];

/// Writes `size` bytes of text-like (compressible) content.
pub fn write_text(path: &Path, size: u64, rng: &mut Rng) -> std::io::Result<()> {
    let mut out = BufWriter::new(fs::File::create(path)?);
    let mut written = 0u64;
    let mut line = String::new();
    while written < size {
        line.clear();
        let words = 4 + rng.below(12);
        for i in 0..words {
            if i > 0 {
                line.push(' ');
            }
            line.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        line.push('\n');
        let take = (size - written).min(line.len() as u64) as usize;
        out.write_all(&line.as_bytes()[..take])?;
        written += take as u64;
    }
    out.flush()
}

/// A stand-in kernel of `size` bytes: random bytes with a bzImage setup header
/// (`HdrS` at 0x202). Loaders list and count a UKI made with it; it does not start.
pub fn stand_in_kernel(size: usize, rng: &mut Rng) -> Vec<u8> {
    let mut k = vec![0u8; size.max(8192)];
    rng.fill(&mut k);
    k[..1024].fill(0); // a zeroed setup header, but for its magic
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// Writes a real Unified Kernel Image to `path`, built from systemd's EFI `stub` with
/// a stand-in kernel of `kernel_size` bytes and an `.osrel` naming `product` and
/// `version`: systemd-boot lists it as an entry and sorts it by that version.
pub fn write_uki(
    path: &Path,
    stub: &Path,
    kernel_size: usize,
    rng: &mut Rng,
    product: &str,
    version: &str,
) -> std::io::Result<()> {
    let stub = fs::read(stub).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "systemd's EFI stub {}: {e} (Debian package systemd-boot-efi)",
                stub.display()
            ),
        )
    })?;
    let uki = bootctl::uki::build::build(&bootctl::uki::build::UkiInputs {
        stub,
        osrel: format!("ID={product}\nIMAGE_ID={product}\nIMAGE_VERSION={version}\n").into_bytes(),
        cmdline: "console=ttyS0".into(),
        kernel: stand_in_kernel(kernel_size, rng),
        initrd: None,
        uname: Some("6.1.0-0-amd64".into()),
    })
    .map_err(std::io::Error::other)?;
    fs::write(path, uki)
}

/// Writes `size` random (incompressible) bytes.
pub fn write_random(path: &Path, size: u64, rng: &mut Rng) -> std::io::Result<()> {
    let mut out = BufWriter::new(fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Generates a root-filesystem-like tree of about `total` bytes under `root`
/// (created if missing): nested directories, text and binary files of mixed sizes,
/// an executable, an empty file, a relative symlink and an `etc/os-release`.
/// Returns the number of regular files written.
pub fn generate_tree(
    root: &Path,
    total: u64,
    seed: u64,
    os_version: &str,
) -> std::io::Result<usize> {
    let mut rng = Rng::new(seed);
    let dirs = [
        "etc",
        "usr/bin",
        "usr/lib/qimg",
        "usr/lib/modules",
        "usr/share/doc/qimg",
        "var/lib",
        "opt/product/data",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(
        root.join("etc/os-release"),
        format!(
            "ID=qimg-sample\nNAME=\"qimg sample OS\"\nVERSION_ID={os_version}\nIMAGE_VERSION={os_version}\n"
        ),
    )?;
    fs::write(root.join("etc/empty"), b"")?;
    let tool = root.join("usr/bin/tool");
    fs::write(&tool, b"#!/bin/sh\necho sample\n")?;
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755))?;
    let link = root.join("usr/bin/tool-link");
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("tool", &link)?;
    }
    let mut written = 0u64;
    let mut files = 3;
    let mut i = 0u64;
    while written < total {
        // Sizes from 512 B to 8 MiB, log-uniform, so there are many small files and
        // a few big ones, like a real root filesystem.
        let size = (512u64 << rng.below(15)).min(total - written).max(1);
        let dir = dirs[rng.below(dirs.len() as u64) as usize];
        let compressible = rng.below(2) == 0;
        let name = format!("{dir}/f{i:05}.{}", if compressible { "txt" } else { "bin" });
        if compressible {
            write_text(&root.join(name), size, &mut rng)?;
        } else {
            write_random(&root.join(name), size, &mut rng)?;
        }
        written += size;
        files += 1;
        i += 1;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tree() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let n = generate_tree(a.path(), 300_000, 7, "1.0").unwrap();
        assert_eq!(generate_tree(b.path(), 300_000, 7, "1.0").unwrap(), n);
        let list = |p: &Path| {
            let mut v: Vec<_> = walk(p)
                .into_iter()
                .map(|x| x.strip_prefix(p).unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(list(a.path()), list(b.path()));
        for rel in list(a.path()) {
            let (x, y) = (a.path().join(&rel), b.path().join(&rel));
            if x.is_file() {
                assert_eq!(fs::read(&x).unwrap(), fs::read(&y).unwrap(), "{rel:?}");
            }
        }
        let total: u64 = list(a.path())
            .iter()
            .map(|r| fs::symlink_metadata(a.path().join(r)).unwrap())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        assert!(total >= 300_000, "{total}");
    }

    fn walk(p: &Path) -> Vec<std::path::PathBuf> {
        let mut out = vec![];
        for e in fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }
}
