//! A container component's bytes as the bundle reader verifies them: the data
//! area into `image.raw`, the hash tree into `image.verity`.

use std::io::Write;

/// Receives a container component's bytes: the data area into `image.raw`, the
/// hash tree into `image.verity`.
pub struct StagingSink {
    pub(super) data: std::io::BufWriter<std::fs::File>,
    pub(super) hash: std::io::BufWriter<std::fs::File>,
    pub(super) hash_offset: u64,
    pub(super) pos: u64,
}

impl Write for StagingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = if self.pos < self.hash_offset {
            let n = (buf.len() as u64).min(self.hash_offset - self.pos) as usize;
            self.data.write_all(&buf[..n])?;
            n
        } else {
            self.hash.write_all(buf)?;
            buf.len()
        };
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.data.flush()?;
        self.hash.flush()
    }
}
