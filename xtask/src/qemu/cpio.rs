//! A cpio archive in the "newc" format, as the kernel unpacks an initramfs.
//!
//! Each entry: a 110-byte ASCII header — `070701`, then thirteen 8-digit hex fields
//! (inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
//! rdevminor, namesize including the NUL, check = 0) — the NUL-terminated name padded
//! to 4 bytes, the data padded to 4 bytes. The archive ends with `TRAILER!!!`.

/// An archive being built.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    /// The finished archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_style_layout_is_readable_by_cpio_rules() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("bin/x", 0o755, b"hello");
        let b = c.finish();
        assert_eq!(&b[..6], b"070701");
        assert_eq!(b.len() % 4, 0);
        // The second header starts on a 4-byte boundary after "bin\0" (header 110 + 4 = 114 -> 116).
        assert_eq!(&b[116..122], b"070701");
        assert!(b.windows(10).any(|w| w == b"TRAILER!!!"));
        assert!(b.windows(5).any(|w| w == b"hello"));
    }
}
