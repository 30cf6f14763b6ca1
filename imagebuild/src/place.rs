//! A filesystem image written straight into the bundle, at its final offset.
//!
//! Format version 2 reserves the manifest's length before any payload is built
//! (`qimg::Manifest::reserved_len`), so the first payload's offset is known up
//! front. An image stored as is (`images = "none"`) is then written once, by
//! backhand, through [`FileAt`] into the bundle's temporary file; the hash pass reads
//! it back from the page cache, and its padding and hash tree follow it. Nothing is
//! staged, so memory does not grow with the image.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Pieces the image is read back in.
const CHUNK: usize = 4 << 20;

/// A window of `file` starting at `base`: offsets are relative to it.
pub struct FileAt<'a> {
    file: &'a File,
    base: u64,
    pos: u64,
    len: u64,
}

impl<'a> FileAt<'a> {
    /// An empty window at `base` of `file`.
    pub fn new(file: &'a File, base: u64) -> FileAt<'a> {
        FileAt {
            file,
            base,
            pos: 0,
            len: 0,
        }
    }

    /// Bytes written so far (the highest offset reached).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with the whole content from the start, in pieces of 4 MiB.
    pub fn scan(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < self.len {
            let n = (self.len - at).min(CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], self.base + at)?;
            f(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Writes `bytes` after the content (the image's padding and hash tree).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.base + self.len)?;
        self.len += bytes.len() as u64;
        self.pos = self.len;
        Ok(())
    }
}

impl Write for FileAt<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.base + self.pos)?;
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FileAt<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the window"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_seeks_and_appends_inside_the_window_only() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"HEAD").unwrap();
        {
            let mut w = FileAt::new(&f, 4);
            w.write_all(b"..cdef").unwrap();
            w.seek(SeekFrom::Start(0)).unwrap();
            w.write_all(b"ab").unwrap();
            assert_eq!(w.stream_position().unwrap(), 2);
            assert_eq!(w.seek(SeekFrom::End(-1)).unwrap(), 5);
            assert!(w.seek(SeekFrom::Current(-6)).is_err());
            assert_eq!(w.len(), 6);
            let mut seen = Vec::new();
            w.scan(|b| {
                seen.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, b"abcdef");
            w.append(b"TAIL").unwrap();
            assert_eq!(w.len(), 10);
        }
        let mut all = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut all).unwrap();
        assert_eq!(all, "HEADabcdefTAIL");
    }
}
