//! Reading, validating and writing the GPT of a disk image or block device, through
//! the `gpt` crate.
//!
//! Load → validate → change in memory → validate → write once: [`read`] accepts a
//! table only if its headers, CRCs, bounds and partitions are sound (recovering from
//! the backup when only the primary is damaged, and saying so); [`update`] re-reads
//! and re-validates before it writes, and writes primary and backup headers, both
//! arrays and the protective MBR together. When both copies are damaged nothing is
//! written.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use gpt::{DiskDevice, GptConfig};
use uuid::Uuid;

use crate::Error;
use crate::layout::{MAX_NAME, Plan, SECTOR};

const LB: LogicalBlockSize = LogicalBlockSize::Lb512;

/// Which copy of the table was damaged and recovered from the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// The primary header or array was damaged; the backup was used.
    PrimaryFromBackup,
    /// The backup header was damaged or missing; the primary was used.
    BackupFromPrimary,
}

/// A validated partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// Size of the device in 512-byte sectors.
    pub sectors: u64,
    /// First usable LBA.
    pub first_usable: u64,
    /// Last usable LBA.
    pub last_usable: u64,
    /// Used partitions, by 1-based entry number.
    pub partitions: BTreeMap<u32, Partition>,
    /// Set when one copy of the table was damaged.
    pub recovered: Option<Recovered>,
}

impl Table {
    /// Byte range (start, length) of the first ESP, if there is one.
    pub fn esp_range(&self) -> Option<(u64, u64)> {
        self.of_type(crate::layout::ESP_TYPE).first().map(|(_, p)| {
            (
                p.first_lba * SECTOR,
                (p.last_lba - p.first_lba + 1) * SECTOR,
            )
        })
    }

    /// Partitions of one type, in start-LBA order.
    pub fn of_type(&self, type_guid: Uuid) -> Vec<(u32, &Partition)> {
        let mut v: Vec<(u32, &Partition)> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.part_type_guid.guid == type_guid)
            .map(|(n, p)| (*n, p))
            .collect();
        v.sort_by_key(|(_, p)| p.first_lba);
        v
    }
}

fn io_err(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Device {
        what: what.to_owned(),
        source,
    }
}

fn device_sectors<D: Seek>(dev: &mut D) -> Result<u64, Error> {
    let end = dev
        .seek(SeekFrom::End(0))
        .map_err(io_err("measuring the device"))?;
    Ok(end / SECTOR)
}

/// Reads through to the device, except that the primary GPT header reads as zeros,
/// so the `gpt` crate falls back to the backup copy.
#[derive(Debug)]
struct HidePrimary<'d, D> {
    inner: &'d mut D,
}

impl<D: Read + Seek> Read for HidePrimary<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.inner.stream_position()?;
        let n = self.inner.read(buf)?;
        let (lo, hi) = (SECTOR, 2 * SECTOR);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = pos + i as u64;
            if at >= lo && at < hi {
                *b = 0;
            }
        }
        Ok(n)
    }
}

impl<D: Seek> Seek for HidePrimary<'_, D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

impl<D> Write for HidePrimary<'_, D> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only view",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn from_disk<D: DiskDevice>(
    disk: &gpt::GptDisk<D>,
    sectors: u64,
    recovered: Option<Recovered>,
) -> Result<Table, Error> {
    let h = disk.header();
    let t = Table {
        disk_guid: *disk.guid(),
        sectors,
        first_usable: h.first_usable,
        last_usable: h.last_usable,
        partitions: disk
            .partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| (*n, p.clone()))
            .collect(),
        recovered,
    };
    // The table must fit the device: the backup header sits in the last sector.
    if h.backup_lba != sectors.saturating_sub(1) && h.current_lba != sectors.saturating_sub(1) {
        return Err(Error::BadTable {
            reason: format!(
                "the table describes a disk of {} sectors but the device has {sectors}",
                h.backup_lba.max(h.current_lba) + 1
            ),
        });
    }
    validate(&t)?;
    Ok(t)
}

/// The GPT header fields checked before the `gpt` crate sees a device (offsets in
/// the header sector): `0` signature `EFI PART`; `80` u32 number of partition entries;
/// `84` u32 size of one entry. A damaged or hostile header could otherwise make the
/// crate allocate an arbitrarily large entry array.
const MAX_ENTRIES: u32 = 16_384;

fn check_header_sizes<D: Read + Seek>(dev: &mut D, lba: u64) -> Result<(), Error> {
    let mut h = [0u8; 92];
    dev.seek(SeekFrom::Start(lba * SECTOR))
        .map_err(io_err("reading a GPT header"))?;
    if dev.read_exact(&mut h).is_err() || &h[0..8] != b"EFI PART" {
        return Ok(()); // not a header: the crate reports it
    }
    let entries = u32::from_le_bytes(h[80..84].try_into().expect("4 bytes")); // offset 80
    let size = u32::from_le_bytes(h[84..88].try_into().expect("4 bytes")); // offset 84
    if entries > MAX_ENTRIES || !(128..=4096).contains(&size) || !size.is_power_of_two() {
        return Err(Error::BadTable {
            reason: format!("GPT header at LBA {lba} declares {entries} entries of {size} bytes"),
        });
    }
    Ok(())
}

/// Reads and validates the table. A damaged primary (header or array) with a sound
/// backup, or the reverse, is accepted and reported in [`Table::recovered`]; both
/// damaged is [`Error::BadTable`].
pub fn read<D: DiskDevice>(dev: &mut D) -> Result<Table, Error> {
    let sectors = device_sectors(dev)?;
    if sectors < 3 {
        return Err(Error::BadTable {
            reason: "device too small for a GPT".into(),
        });
    }
    check_header_sizes(dev, 1)?;
    check_header_sizes(dev, sectors - 1)?;
    let primary = GptConfig::new()
        .writable(false)
        .logical_block_size(LB)
        .only_valid_headers(false)
        .open_from_device(&mut *dev);
    match primary {
        Ok(disk) => {
            let recovered = match (disk.primary_header(), disk.backup_header()) {
                (Ok(_), Ok(_)) => None,
                (Err(_), Ok(_)) => Some(Recovered::PrimaryFromBackup),
                (Ok(_), Err(_)) => Some(Recovered::BackupFromPrimary),
                (Err(_), Err(_)) => unreachable!("the gpt crate needs one header"),
            };
            from_disk(&disk, sectors, recovered)
        }
        Err(first) => {
            // The primary header may be sound while its array is not: try the backup alone.
            let view = HidePrimary { inner: dev };
            match GptConfig::new()
                .writable(false)
                .logical_block_size(LB)
                .open_from_device(view)
            {
                Ok(disk) => from_disk(&disk, sectors, Some(Recovered::PrimaryFromBackup)),
                Err(second) => Err(Error::BadTable {
                    reason: format!("primary: {first}; backup: {second}"),
                }),
            }
        }
    }
}

/// Checks partition bounds, overlaps and names.
pub fn validate(t: &Table) -> Result<(), Error> {
    let bad = |reason: String| Err(Error::BadTable { reason });
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for (n, p) in &t.partitions {
        if p.first_lba > p.last_lba {
            return bad(format!("partition {n} ends before it starts"));
        }
        if p.first_lba < t.first_usable || p.last_lba > t.last_usable {
            return bad(format!(
                "partition {n} (LBA {}-{}) lies outside the usable area {}-{}",
                p.first_lba, p.last_lba, t.first_usable, t.last_usable
            ));
        }
        if p.name.encode_utf16().count() > MAX_NAME {
            return bad(format!(
                "partition {n}: name longer than {MAX_NAME} characters"
            ));
        }
        spans.push((p.first_lba, p.last_lba, *n));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 <= w[0].1 {
            return bad(format!("partitions {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok(())
}

fn write_table<D: DiskDevice>(
    dev: &mut D,
    disk_guid: Uuid,
    parts: BTreeMap<u32, Partition>,
) -> Result<(), Error> {
    let gpt_err = |e: gpt::GptError| Error::BadTable {
        reason: format!("writing the table: {e}"),
    };
    let sectors = device_sectors(dev)?;
    let mut disk = GptConfig::new()
        .writable(true)
        .logical_block_size(LB)
        .create_from_device(&mut *dev, Some(disk_guid))
        .map_err(gpt_err)?;
    disk.update_partitions(parts).map_err(gpt_err)?;
    disk.write_inplace().map_err(gpt_err)?;
    drop(disk);
    // The gpt crate leaves LBA 0 alone: write the protective MBR ourselves.
    let pmbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    pmbr.overwrite_lba0(dev).map_err(|e| Error::BadTable {
        reason: format!("writing the protective MBR: {e}"),
    })?;
    dev.flush().map_err(io_err("flushing the table"))
}

fn to_partitions(plan: &Plan) -> BTreeMap<u32, Partition> {
    plan.partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i as u32 + 1,
                Partition {
                    part_type_guid: Type {
                        guid: p.role.type_guid(),
                        os: OperatingSystem::None,
                    },
                    part_guid: p.guid,
                    first_lba: p.first_lba,
                    last_lba: p.last_lba,
                    flags: p.flags,
                    name: p.name.clone(),
                },
            )
        })
        .collect()
}

/// Writes a fresh table from a plan (for a new disk image), then reads it back and
/// validates it.
pub fn create<D: DiskDevice>(dev: &mut D, plan: &Plan) -> Result<Table, Error> {
    let sectors = device_sectors(dev)?;
    let candidate = Table {
        disk_guid: plan.disk_guid,
        sectors,
        first_usable: 34,
        last_usable: sectors.saturating_sub(34),
        partitions: to_partitions(plan),
        recovered: None,
    };
    validate(&candidate)?;
    write_table(dev, plan.disk_guid, candidate.partitions)?;
    read(dev)
}

/// Reads and validates the table, lets `change` edit the partitions in memory,
/// validates the result and writes it once (both copies and the protective MBR).
/// Returns the table as written; a recovered copy is repaired by this write.
pub fn update<D: DiskDevice>(
    dev: &mut D,
    change: impl FnOnce(&mut BTreeMap<u32, Partition>) -> Result<(), Error>,
) -> Result<Table, Error> {
    let mut t = read(dev)?;
    let before = t.partitions.clone();
    change(&mut t.partitions)?;
    for (n, p) in t.partitions.iter_mut() {
        if let Some(old) = before
            .get(n)
            .filter(|o| o.part_type_guid == p.part_type_guid)
        {
            // Bits 48-63 belong to the partition type's owner: keep them as they were,
            // except the ones qimg owns on its own partitions.
            let theirs = TYPE_BITS & !owned_bits(p.part_type_guid.guid);
            p.flags = (p.flags & !theirs) | (old.flags & theirs);
        }
    }
    validate(&t)?;
    write_table(dev, t.disk_guid, t.partitions)?;
    read(dev)
}

/// Attribute bits 48-63: defined by each partition type's owner.
const TYPE_BITS: u64 = 0xffff << 48;

/// The type-specific bits qimg owns: 60 (read-only) on root and verity partitions.
fn owned_bits(type_guid: Uuid) -> u64 {
    if [crate::layout::ROOT_TYPE, crate::layout::VERITY_TYPE].contains(&type_guid) {
        crate::layout::ATTR_READ_ONLY
    } else {
        0
    }
}
