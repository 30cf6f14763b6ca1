//! A seekable staging buffer that lives in memory up to a cap and moves to an
//! unnamed temporary file beyond it.
//!
//! backhand writes a squashfs image mostly front to back, seeking back only to
//! overwrite a duplicate file's blocks and, at the end, the superblock. Staging the
//! image in memory saves writing it to the page cache and reading it back; the cap
//! keeps a multi-gigabyte image from exhausting memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Size of the in-memory chunks (no reallocation copies as the buffer grows).
const CHUNK: usize = 4 << 20;

/// See the module docs.
pub struct Spill {
    chunks: Vec<Box<[u8]>>,
    len: u64,
    pos: u64,
    cap: u64,
    dir: PathBuf,
    file: Option<File>,
}

impl Spill {
    /// A buffer that keeps up to `cap` bytes in memory, then spills into an unnamed
    /// temporary file in `dir`.
    pub fn new(cap: u64, dir: &Path) -> Spill {
        Spill {
            chunks: Vec::new(),
            len: 0,
            pos: 0,
            cap,
            dir: dir.to_owned(),
            file: None,
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

    /// True once the buffer moved to a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    fn spill(&mut self) -> io::Result<()> {
        let mut f = tempfile::tempfile_in(&self.dir)?;
        let mut left = self.len;
        for c in &self.chunks {
            let n = left.min(CHUNK as u64) as usize;
            f.write_all(&c[..n])?;
            left -= n as u64;
        }
        f.seek(SeekFrom::Start(self.pos))?;
        self.chunks = Vec::new();
        self.file = Some(f);
        Ok(())
    }

    /// Calls `f` with the whole content from the start, in pieces of at most 4 MiB,
    /// keeping it (read it again with [`Spill::into_reader`]).
    pub fn scan(&mut self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut left = self.len;
        match &mut self.file {
            Some(file) => {
                file.rewind()?;
                let mut buf = vec![0u8; CHUNK];
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    file.read_exact(&mut buf[..n])?;
                    f(&buf[..n])?;
                    left -= n as u64;
                }
                file.seek(SeekFrom::Start(self.pos))?;
            }
            None => {
                for c in &self.chunks {
                    if left == 0 {
                        break;
                    }
                    let n = left.min(CHUNK as u64) as usize;
                    f(&c[..n])?;
                    left -= n as u64;
                }
            }
        }
        Ok(())
    }

    /// A reader over the whole content from the start.
    pub fn into_reader(self) -> io::Result<SpillReader> {
        Ok(match self.file {
            Some(mut f) => {
                f.rewind()?;
                SpillReader::File(f.take(self.len))
            }
            None => SpillReader::Memory {
                chunks: self.chunks,
                len: self.len,
                pos: 0,
            },
        })
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = &mut self.file {
            let n = f.write(buf)?;
            self.pos += n as u64;
            self.len = self.len.max(self.pos);
            return Ok(n);
        }
        if self.pos + buf.len() as u64 > self.cap {
            self.spill()?;
            return self.write(buf);
        }
        let chunk = (self.pos / CHUNK as u64) as usize;
        let at = (self.pos % CHUNK as u64) as usize;
        while self.chunks.len() <= chunk {
            self.chunks.push(vec![0u8; CHUNK].into_boxed_slice());
        }
        let n = buf.len().min(CHUNK - at);
        self.chunks[chunk][at..at + n].copy_from_slice(&buf[..n]);
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Seek for Spill {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        if let Some(f) = &mut self.file {
            f.seek(SeekFrom::Start(target))?;
        }
        self.pos = target;
        Ok(target)
    }
}

/// Reads a [`Spill`] back.
pub enum SpillReader {
    /// From memory.
    Memory {
        /// The chunks.
        chunks: Vec<Box<[u8]>>,
        /// Content length.
        len: u64,
        /// Read position.
        pos: u64,
    },
    /// From the spill file.
    File(io::Take<File>),
}

impl Read for SpillReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SpillReader::File(f) => f.read(buf),
            SpillReader::Memory { chunks, len, pos } => {
                if *pos >= *len {
                    return Ok(0);
                }
                let chunk = (*pos / CHUNK as u64) as usize;
                let at = (*pos % CHUNK as u64) as usize;
                let n = buf.len().min(CHUNK - at).min((*len - *pos) as usize);
                buf[..n].copy_from_slice(&chunks[chunk][at..at + n]);
                *pos += n as u64;
                // Free chunks as soon as they are read.
                if at + n == CHUNK {
                    chunks[chunk] = Box::new([]);
                }
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes with seeks like backhand does (rewinds, overwrite, superblock at 0),
    /// into a Spill with a cap and into a Vec, and compares.
    fn exercise(cap: u64) -> (Vec<u8>, bool) {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spill::new(cap, d.path());
        let mut v = io::Cursor::new(Vec::new());
        let data: Vec<u8> = (0..3 * CHUNK + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for w in [&mut s as &mut dyn WriteSeek, &mut v] {
            w.write_all(&[9u8; 96]).unwrap();
            w.write_all(&data).unwrap();
            let back = w.stream_position().unwrap() - 5000;
            w.seek(SeekFrom::Start(back)).unwrap();
            w.write_all(&[1u8; 7000]).unwrap(); // overwrite across the end
            w.seek(SeekFrom::Start(0)).unwrap();
            w.write_all(&[2u8; 96]).unwrap();
            w.seek(SeekFrom::End(0)).unwrap();
            w.write_all(b"tail").unwrap();
        }
        assert_eq!(s.len(), v.get_ref().len() as u64);
        let spilled = s.spilled();
        // A scan sees the same bytes and leaves them to be read again.
        let mut scanned = Vec::new();
        s.scan(|b| {
            assert!(b.len() <= CHUNK);
            scanned.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(scanned == *v.get_ref());
        let mut out = Vec::new();
        s.into_reader().unwrap().read_to_end(&mut out).unwrap();
        assert!(out == v.into_inner());
        (out, spilled)
    }

    trait WriteSeek: Write + Seek {}
    impl<T: Write + Seek> WriteSeek for T {}

    #[test]
    fn memory_and_spilled_content_match_a_plain_buffer() {
        let (a, spilled_a) = exercise(u64::MAX);
        let (b, spilled_b) = exercise(CHUNK as u64 + 1);
        assert!(!spilled_a);
        assert!(spilled_b);
        assert!(a == b);
    }
}
