//! Encoding one payload: content in, stored (possibly compressed) bytes out, with
//! the sizes and SHA-256 digests of both computed on the way.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::manifest::{Compression, Sha256 as Digest256};

/// Highest zstd level the writer uses. Higher levels need windows beyond what
/// readers allow ([`MAX_WINDOW_LOG`]).
pub const MAX_ZSTD_LEVEL: i32 = 19;
/// Largest zstd window (as a power of two) readers accept: 16 MiB, which bounds a
/// reader's memory whatever the bundle.
pub const MAX_WINDOW_LOG: u32 = 24;

/// Sizes and digests of an encoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadInfo {
    /// How it is stored.
    pub compression: Compression,
    /// Content size.
    pub size: u64,
    /// Content digest.
    pub sha256: Digest256,
    /// Stored size.
    pub stored_size: u64,
    /// Stored digest.
    pub stored_sha256: Digest256,
}

/// A writer that hashes and counts what passes through.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner writer, the byte count and the digest.
    pub fn finish(self) -> (W, u64, Digest256) {
        (
            self.inner,
            self.len,
            Digest256(self.hasher.finalize().into()),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Sink<W: Write> {
    Plain(HashingWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
}

/// Encodes one payload into `W`. Write the content, then call [`PayloadWriter::finish`].
pub struct PayloadWriter<W: Write> {
    content: Sha256,
    size: u64,
    sink: Sink<W>,
}

impl<W: Write> PayloadWriter<W> {
    /// A payload stored uncompressed.
    pub fn plain(out: W) -> Self {
        PayloadWriter {
            content: Sha256::new(),
            size: 0,
            sink: Sink::Plain(HashingWriter::new(out)),
        }
    }

    /// A payload stored as zstd at `level` (1..=19) using `workers` compression threads
    /// (0 = compress on the calling thread). The output does not depend on the
    /// number of workers as long as it is at least 1.
    pub fn zstd(out: W, level: i32, workers: u32) -> io::Result<Self> {
        if !(1..=MAX_ZSTD_LEVEL).contains(&level) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("zstd level {level} is outside 1..={MAX_ZSTD_LEVEL}"),
            ));
        }
        let mut enc = zstd::stream::write::Encoder::new(HashingWriter::new(out), level)?;
        enc.include_checksum(false)?;
        enc.window_log(level_window_log(level))?;
        if workers > 0 {
            enc.multithread(workers)?;
        }
        Ok(PayloadWriter {
            content: Sha256::new(),
            size: 0,
            sink: Sink::Zstd(enc),
        })
    }

    /// Finishes encoding; returns the output and the payload's sizes and digests.
    pub fn finish(self) -> io::Result<(W, PayloadInfo)> {
        let sha256 = Digest256(self.content.finalize().into());
        let (compression, (out, stored_size, stored_sha256)) = match self.sink {
            Sink::Plain(w) => (Compression::None, w.finish()),
            Sink::Zstd(enc) => (Compression::Zstd, enc.finish()?.finish()),
        };
        Ok((
            out,
            PayloadInfo {
                compression,
                size: self.size,
                sha256,
                stored_size,
                stored_sha256,
            },
        ))
    }
}

/// zstd's own window for a level, capped at what readers accept, and never below
/// 2^20 so that the window (and so the output) does not depend on input size hints.
fn level_window_log(level: i32) -> u32 {
    let native = match level {
        1 => 19,
        2..=4 => 21,
        5..=7 => 21,
        8..=12 => 22,
        _ => 23,
    };
    native.min(MAX_WINDOW_LOG)
}

impl<W: Write> Write for PayloadWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Plain(w) => w.write(buf)?,
            Sink::Zstd(w) => w.write(buf)?,
        };
        self.content.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..400_000u32 {
            v.extend_from_slice(
                format!("line {} {}\n", i % 977, i.wrapping_mul(2654435761)).as_bytes(),
            );
        }
        v
    }

    fn encode(data: &[u8], workers: u32) -> (Vec<u8>, PayloadInfo) {
        let mut w = PayloadWriter::zstd(Vec::new(), 3, workers).unwrap();
        for chunk in data.chunks(70_000) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn zstd_output_is_independent_of_worker_count() {
        let data = sample();
        let (one, info1) = encode(&data, 1);
        let (two, info2) = encode(&data, 2);
        let (four, _) = encode(&data, 4);
        assert_eq!(one, two);
        assert_eq!(one, four);
        assert_eq!(info1, info2);
        assert_eq!(info1.size, data.len() as u64);
        assert_eq!(info1.stored_size, one.len() as u64);
        assert!(info1.stored_size < info1.size / 2);
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), data);
        assert_eq!(info1.sha256.0, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(
            info1.stored_sha256.0,
            <[u8; 32]>::from(Sha256::digest(&one))
        );
    }

    #[test]
    fn plain_payload_digests_match() {
        let mut w = PayloadWriter::plain(Vec::new());
        w.write_all(b"abc").unwrap();
        let (out, info) = w.finish().unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(info.compression, Compression::None);
        assert_eq!(info.sha256, info.stored_sha256);
        assert_eq!(info.size, 3);
    }

    #[test]
    fn rejects_levels_readers_cannot_take() {
        assert!(PayloadWriter::zstd(Vec::new(), 20, 1).is_err());
        assert!(PayloadWriter::zstd(Vec::new(), 0, 1).is_err());
    }
}
