//! The boot disk as the table and slot code write it. `Write::flush` on a `File`
//! does nothing, so a table or a slot "flushed" through the generic device code
//! stayed in the page cache: a node whose power was cut mid-prepare came back with
//! the old label on a half-written slot (seen on a real node under QEMU). Through
//! [`Durable`], `flush` is `fdatasync`: a slot is labelled `_empty` on the disk
//! before its first data byte, and its version after its last.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// A disk (a block device or an image file) whose `flush` makes writes durable.
#[derive(Debug)]
pub struct Durable(pub File);

impl Read for Durable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Durable {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Seek for Durable {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_disk_reads_back_what_it_wrote_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut d = Durable(f);
        d.write_all(b"label").unwrap();
        d.flush().unwrap();
        d.seek(SeekFrom::Start(0)).unwrap();
        let mut back = [0u8; 5];
        d.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"label");
        assert_eq!(std::fs::read(&p).unwrap(), b"label");
    }
}
