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
use crate::esp::Slice;
use crate::layout::{EMPTY, ROOT_TYPE, Slot, VERITY_TYPE, slot_label, uuids_from_root_hash};
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
        (n, p.first_lba * 512, (p.last_lba - p.first_lba + 1) * 512)
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

/// Copies `len` bytes from `src` into `dst`, leaving all-zero 4 KiB blocks unwritten
/// when the destination is known to be zero (`sparse`), so image files stay sparse.
fn copy<R: Read, W: Write + Seek>(
    src: &mut R,
    dst: &mut W,
    len: u64,
    sparse: bool,
) -> Result<(), Error> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Device { what, source }
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(io("reading the slot image"))?;
        for block in buf[..n].chunks(4096) {
            if sparse && block.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(io("writing the slot"))?;
            } else {
                dst.write_all(block).map_err(io("writing the slot"))?;
            }
        }
        left -= n as u64;
    }
    dst.flush().map_err(io("flushing the slot"))
}

/// Writes `image` (read from `src`) into `slot`. The caller has removed the slot's
/// boot entries. `sparse` says the slot's partitions are known to be all zeros (a
/// fresh image file), so zero blocks can be skipped.
pub fn write<D: DiskDevice, R: Read>(
    dev: &mut D,
    slot: Slot,
    image: &SlotImage,
    src: &mut R,
    sparse: bool,
) -> Result<Table, Error> {
    let t = table::read(dev)?;
    let p = parts(&t, slot)?;
    let label =
        slot_label(&image.product, &image.version).map_err(|reason| Error::BadTable { reason })?;
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
    let other = parts(&t, slot.other())?;
    if t.partitions[&other.root.0].part_guid == root_uuid {
        return Err(Error::BadTable {
            reason: format!(
                "slot {:?} already holds this image (same verity root hash)",
                slot.other()
            ),
        });
    }
    relabel(dev, p, EMPTY, None)?;
    copy(
        src,
        &mut Slice::new(&mut *dev, p.root.1, p.root.2),
        image.hash_offset,
        sparse,
    )?;
    copy(
        src,
        &mut Slice::new(&mut *dev, p.verity.1, p.verity.2),
        hash_len,
        sparse,
    )?;
    relabel(dev, p, &label, Some(uuids_from_root_hash(&image.root_hash)))
}
