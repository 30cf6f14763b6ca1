//! Writing a platform root image into an A/B slot.
//!
//! Order, so that a writer killed at any point leaves nothing bootable that is not
//! whole: (1) the caller removes the slot's boot entries; (2) the slot's partitions
//! are renamed `_empty`; (3) the data area goes into the root partition and the hash
//! area into the verity partition, each write confined to its partition's byte range;
//! (4) the partitions get the version label and the DPS UUIDs derived from the root
//! hash; (5) the caller installs the entry. Sizes are checked before anything is
//! written.

use std::io::{Read, Seek, SeekFrom, Write};

use gpt::DiskDevice;
use uuid::Uuid;

use crate::Error;
use crate::layout::{
    EMPTY, ROOT_TYPE, SECTOR, Slot, VERITY_TYPE, slot_label, uuids_from_root_hash,
};
use crate::table::{self, Table};

/// A slot's partitions: (entry number, first byte, length) of root and verity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotParts {
    /// Root partition: entry number, byte offset, byte length.
    pub root: (u32, u64, u64),
    /// Verity partition: entry number, byte offset, byte length.
    pub verity: (u32, u64, u64),
}

/// Finds a slot's partitions: slot A is the root partition with the lower start, and
/// each slot's verity partition is the first verity partition after its root.
pub fn parts(t: &Table, slot: Slot) -> Result<SlotParts, Error> {
    let roots = t.of_type(ROOT_TYPE);
    let veritys = t.of_type(VERITY_TYPE);
    if roots.len() != 2 || veritys.len() != 2 {
        return Err(Error::BadTable {
            reason: format!(
                "expected 2 root and 2 verity partitions, found {} and {}",
                roots.len(),
                veritys.len()
            ),
        });
    }
    let i = match slot {
        Slot::A => 0,
        Slot::B => 1,
    };
    let span = |(n, p): (u32, &gpt::partition::Partition)| {
        (
            n,
            p.first_lba * SECTOR,
            (p.last_lba - p.first_lba + 1) * SECTOR,
        )
    };
    Ok(SlotParts {
        root: span(roots[i]),
        verity: span(veritys[i]),
    })
}

/// What a slot holds, from its partition label.
pub fn label(t: &Table, slot: Slot) -> Result<String, Error> {
    let p = parts(t, slot)?;
    Ok(t.partitions[&p.root.0].name.clone())
}

/// The image to write: the data area (`hash_offset` bytes) followed by the hash area.
#[derive(Clone, Debug)]
pub struct SlotImage {
    /// Product (for the label).
    pub product: String,
    /// Version (for the label).
    pub version: String,
    /// Bytes of data before the hash area.
    pub hash_offset: u64,
    /// Total size (data + hash area).
    pub size: u64,
    /// The verity root hash.
    pub root_hash: [u8; 32],
}

fn relabel<D: DiskDevice>(
    dev: &mut D,
    p: SlotParts,
    name: &str,
    uuids: Option<(Uuid, Uuid)>,
) -> Result<Table, Error> {
    let name = name.to_owned();
    table::update(dev, move |parts| {
        for (n, uuid) in [
            (p.root.0, uuids.map(|u| u.0)),
            (p.verity.0, uuids.map(|u| u.1)),
        ] {
            let e = parts.get_mut(&n).expect("found by parts()");
            e.name = name.clone();
            if let Some(u) = uuid {
                e.part_guid = u;
            }
        }
        Ok(())
    })
}

/// Checks that `image` fits `slot` and may go there, then marks the slot `_empty`.
/// Returns where to write.
fn begin<D: DiskDevice>(dev: &mut D, slot: Slot, image: &SlotImage) -> Result<SlotParts, Error> {
    let t = table::read(dev)?;
    let p = fits(&t, slot, image)?;
    relabel(dev, p, EMPTY, None)?;
    Ok(p)
}

/// Checks, writing nothing, that `image` fits `slot` and may go there, and
/// that both of the slot's partitions read (their first and last 4 KiB): what
/// an assessment asks before a prepare. Returns the slot's partitions.
pub fn check<D: DiskDevice>(
    dev: &mut D,
    slot: Slot,
    image: &SlotImage,
) -> Result<SlotParts, Error> {
    let t = table::read(dev)?;
    let p = fits(&t, slot, image)?;
    let mut block = [0u8; 4096];
    for (_, off, len) in [p.root, p.verity] {
        for at in [off, off + len.saturating_sub(4096)] {
            dev.seek(SeekFrom::Start(at))
                .and_then(|_| dev.read_exact(&mut block))
                .map_err(|source| Error::Device {
                    what: format!("reading slot {slot} at byte {at}"),
                    source,
                })?;
        }
    }
    Ok(p)
}

/// Whether `image` fits `slot` of `t` and may go there (not the image the other
/// slot holds).
fn fits(t: &Table, slot: Slot, image: &SlotImage) -> Result<SlotParts, Error> {
    let p = parts(t, slot)?;
    slot_label(&image.product, &image.version)?;
    let hash_len =
        image
            .size
            .checked_sub(image.hash_offset)
            .ok_or_else(|| Error::SlotTooSmall {
                slot,
                reason: "hash offset beyond the image".into(),
            })?;
    if image.hash_offset > p.root.2 || hash_len > p.verity.2 {
        return Err(Error::SlotTooSmall {
            slot,
            reason: format!(
                "needs {} + {} bytes, the partitions hold {} + {}",
                image.hash_offset, hash_len, p.root.2, p.verity.2
            ),
        });
    }
    // DPS derives the partition UUIDs from the root hash: the same image in both slots
    // would give two partitions one UUID.
    let (root_uuid, _) = uuids_from_root_hash(&image.root_hash);
    let other = parts(t, slot.other())?;
    if t.partitions[&other.root.0].part_guid == root_uuid {
        return Err(Error::BadTable {
            reason: format!(
                "slot {:?} already holds this image (same verity root hash)",
                slot.other()
            ),
        });
    }
    Ok(p)
}

/// Marks `slot` `_empty` (an interrupted or cancelled write; the caller has removed
/// the slot's entries first). The other slot is untouched.
pub fn clear<D: DiskDevice>(dev: &mut D, slot: Slot) -> Result<Table, Error> {
    let t = table::read(dev)?;
    let p = parts(&t, slot)?;
    relabel(dev, p, EMPTY, None)
}

/// The one way an image gets into a slot (imagebuild's disk and install-slot, the
/// upgrade engine's prepare, `write`): [`SlotWriter::begin`] checks that the image
/// fits and may go there and marks the slot `_empty`; the image's bytes are then
/// pushed in order (`Write`): the data area goes into the root partition and the hash
/// area into the verity partition, never outside them; [`SlotWriter::finish`], once
/// the caller has verified what it pushed, checks the size and labels the slot with
/// its version and DPS UUIDs. Dropped unfinished, the slot stays `_empty`.
pub struct SlotWriter<'d, D> {
    dev: &'d mut D,
    parts: SlotParts,
    image: SlotImage,
    slot: Slot,
    pos: u64,
    sparse: bool,
}

impl<'d, D: DiskDevice> SlotWriter<'d, D> {
    /// Starts writing `image` into `slot` of `dev`. With `sparse`, all-zero 4 KiB
    /// blocks are skipped: only for partitions known to hold zeros (a fresh image).
    pub fn begin(
        dev: &'d mut D,
        slot: Slot,
        image: &SlotImage,
        sparse: bool,
    ) -> Result<SlotWriter<'d, D>, Error> {
        let parts = begin(dev, slot, image)?;
        Ok(SlotWriter {
            dev,
            parts,
            image: image.clone(),
            slot,
            pos: 0,
            sparse,
        })
    }

    /// Where the image goes.
    pub fn parts(&self) -> SlotParts {
        self.parts
    }

    /// After the caller verified the bytes it pushed: checks that the whole image
    /// arrived, flushes, and labels the slot (version, DPS UUIDs).
    pub fn finish(self) -> Result<Table, Error> {
        let slot = self.slot;
        if self.pos != self.image.size {
            return Err(Error::Device {
                what: format!("writing slot {slot}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the image ended after {} of {} bytes",
                        self.pos, self.image.size
                    ),
                ),
            });
        }
        self.dev.flush().map_err(|source| Error::Device {
            what: format!("flushing slot {slot}"),
            source,
        })?;
        commit(self.dev, self.parts, &self.image)
    }
}

impl<D: Write + Seek> Write for SlotWriter<'_, D> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pos >= self.image.size && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "more data than the image size",
            ));
        }
        // Stay within the current area.
        let (area_start, area_end, part_start) = if self.pos < self.image.hash_offset {
            (0, self.image.hash_offset, self.parts.root.1)
        } else {
            (self.image.hash_offset, self.image.size, self.parts.verity.1)
        };
        let n = (buf.len() as u64).min(area_end - self.pos) as usize;
        if self.pos < self.image.size / 2 && self.pos + n as u64 >= self.image.size / 2 {
            crate::crashpoint::reached("slot-write");
        }
        let at = part_start + (self.pos - area_start);
        let data = &buf[..n];
        let skip = self.sparse
            && n.is_multiple_of(4096)
            && at.is_multiple_of(4096)
            && data.iter().all(|&b| b == 0);
        if !skip {
            self.dev.seek(SeekFrom::Start(at))?;
            self.dev.write_all(data)?;
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.dev.flush()
    }
}

/// After the image was written and verified: the slot's partitions get the version
/// label and the DPS UUIDs derived from the root hash.
fn commit<D: DiskDevice>(dev: &mut D, parts: SlotParts, image: &SlotImage) -> Result<Table, Error> {
    let label = slot_label(&image.product, &image.version)?;
    relabel(
        dev,
        parts,
        &label,
        Some(uuids_from_root_hash(&image.root_hash)),
    )
}

/// Writes `image` (read from `src`) into `slot` through a [`SlotWriter`]. The
/// caller has removed the slot's boot entries.
pub fn write<D: DiskDevice, R: Read>(
    dev: &mut D,
    slot: Slot,
    image: &SlotImage,
    src: &mut R,
    sparse: bool,
) -> Result<Table, Error> {
    let mut w = SlotWriter::begin(dev, slot, image, sparse)?;
    std::io::copy(&mut src.take(image.size), &mut w).map_err(|source| Error::Device {
        what: format!("writing slot {slot}"),
        source,
    })?;
    w.finish()
}
