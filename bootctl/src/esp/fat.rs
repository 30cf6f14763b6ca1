//! The little raw FAT32 this crate needs beside `fatfs`: reading the boot sector,
//! following cluster chains, and repairing the `.`/`..` entries `fatfs` 0.3.6
//! writes into new directories (it gives them long-name entries, and on FAT32 points
//! a top-level `..` at the root cluster instead of 0; `fsck.vfat` rejects both).
//!
//! Boot sector fields used (FAT32 BPB, little-endian):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 11 | 2 | bytes per sector |
//! | 13 | 1 | sectors per cluster |
//! | 14 | 2 | reserved sectors |
//! | 16 | 1 | number of FATs |
//! | 36 | 4 | sectors per FAT (FAT32) |
//! | 44 | 4 | root directory cluster |
//! | 510 | 2 | signature `55 AA` |
//!
//! Directory entry (32 bytes): `0` name\[11\] (8.3, space-padded); `11` attributes
//! (`0x10` directory, `0x0f` long-name entry); `20` cluster high u16; `26` cluster low
//! u16; `28` size u32. A first name byte of `0x00` ends the directory, `0xe5` marks a
//! deleted entry.

use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;

/// The FAT32 geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bpb {
    /// Bytes per sector.
    pub bytes_per_sector: u64,
    /// Sectors per cluster.
    pub sectors_per_cluster: u64,
    /// Reserved sectors before the first FAT.
    pub reserved: u64,
    /// Number of FATs.
    pub fats: u64,
    /// Sectors per FAT.
    pub fat_sectors: u64,
    /// First cluster of the root directory.
    pub root_cluster: u32,
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

impl Bpb {
    /// Reads and checks the boot sector.
    pub fn read<D: Read + Seek>(dev: &mut D) -> io::Result<Bpb> {
        let mut b = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut b)?;
        if b[510..512] != [0x55, 0xaa] {
            return Err(bad("no FAT boot sector signature"));
        }
        let u16at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let bpb = Bpb {
            bytes_per_sector: u16at(11),
            sectors_per_cluster: u64::from(b[13]),
            reserved: u16at(14),
            fats: u64::from(b[16]),
            fat_sectors: u64::from(u32at(36)),
            root_cluster: u32at(44),
        };
        if bpb.bytes_per_sector < 512 || bpb.sectors_per_cluster == 0 || bpb.fat_sectors == 0 {
            return Err(bad("not a FAT32 boot sector"));
        }
        Ok(bpb)
    }

    fn cluster_bytes(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        let data = (self.reserved + self.fats * self.fat_sectors) * self.bytes_per_sector;
        data + (u64::from(cluster) - 2) * self.cluster_bytes()
    }

    /// The clusters of a chain starting at `first`.
    pub fn chain<D: Read + Seek>(&self, dev: &mut D, first: u32) -> io::Result<Vec<u32>> {
        let mut out = vec![];
        let mut c = first;
        while (2..0x0fff_fff8).contains(&c) {
            if out.len() > 1 << 20 {
                return Err(bad("cluster chain loops"));
            }
            out.push(c);
            let mut e = [0u8; 4];
            dev.seek(SeekFrom::Start(
                self.reserved * self.bytes_per_sector + u64::from(c) * 4,
            ))?;
            dev.read_exact(&mut e)?;
            c = u32::from_le_bytes(e) & 0x0fff_ffff;
        }
        Ok(out)
    }

    /// The raw entries of a directory, with their byte offsets, up to the end marker.
    fn entries<D: Read + Seek>(
        &self,
        dev: &mut D,
        first: u32,
    ) -> io::Result<Vec<(u64, [u8; ENTRY])>> {
        let mut out = vec![];
        for c in self.chain(dev, first)? {
            let base = self.cluster_offset(c);
            let mut buf = vec![0u8; self.cluster_bytes() as usize];
            dev.seek(SeekFrom::Start(base))?;
            dev.read_exact(&mut buf)?;
            for (i, e) in buf.chunks_exact(ENTRY).enumerate() {
                if e[0] == 0 {
                    return Ok(out);
                }
                out.push((base + (i * ENTRY) as u64, e.try_into().expect("32 bytes")));
            }
        }
        Ok(out)
    }
}

fn cluster_of(e: &[u8; ENTRY]) -> u32 {
    (u32::from(u16::from_le_bytes([e[20], e[21]])) << 16)
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

/// The long name spelled by the LFN entries before a short entry (stored last part
/// first; 13 UTF-16 units each at offsets 1, 14 and 28).
fn long_name(lfn: &[[u8; ENTRY]]) -> Option<String> {
    if lfn.is_empty() {
        return None;
    }
    let mut parts: Vec<&[u8; ENTRY]> = lfn.iter().collect();
    parts.sort_by_key(|e| e[0] & 0x1f);
    let mut units = vec![];
    for e in parts {
        for range in [1..11, 14..26, 28..32] {
            for c in e[range].chunks_exact(2) {
                units.push(u16::from_le_bytes([c[0], c[1]]));
            }
        }
    }
    let end = units
        .iter()
        .position(|&u| u == 0 || u == 0xffff)
        .unwrap_or(units.len());
    String::from_utf16(&units[..end]).ok()
}

fn short_name(name: &str) -> Option<[u8; 11]> {
    let up = name.to_ascii_uppercase();
    if up.is_empty() || up.len() > 8 || !up.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    let mut n = [b' '; 11];
    n[..up.len()].copy_from_slice(up.as_bytes());
    Some(n)
}

fn dot_entry(name: &[u8; 11], cluster: u32, template: &[u8; ENTRY]) -> [u8; ENTRY] {
    let mut e = *template; // keep the timestamps fatfs wrote
    e[..11].copy_from_slice(name);
    e[11] = ATTR_DIR;
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].fill(0);
    e
}

/// Repairs the `.` and `..` entries of the directory at `path` (found by long or
/// short name; every directory on the way is repaired too): the directory's first two
/// entries become plain short entries, `..` pointing at cluster 0 when the parent
/// is the root, and the long-name slots fatfs used are cleared.
pub fn fix_dot_entries<D: Read + Write + Seek>(dev: &mut D, path: &str) -> io::Result<()> {
    let bpb = Bpb::read(dev)?;
    let mut parent = bpb.root_cluster;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let want = short_name(part);
        let entries = bpb.entries(dev, parent)?;
        let mut lfn: Vec<[u8; ENTRY]> = vec![];
        let mut found = None;
        for (_, e) in &entries {
            if e[0] == 0xe5 {
                lfn.clear();
                continue;
            }
            if e[11] == ATTR_LFN {
                lfn.push(*e);
                continue;
            }
            let by_long = long_name(&lfn).is_some_and(|n| n.eq_ignore_ascii_case(part));
            let by_short = want.is_some_and(|w| e[..11] == w);
            lfn.clear();
            if e[11] & ATTR_DIR != 0 && (by_long || by_short) {
                found = Some(*e);
                break;
            }
        }
        let e = &found.ok_or_else(|| bad(format!("directory {part:?} not found")))?;
        let dir = cluster_of(e);
        let own = bpb.entries(dev, dir)?;
        let template = own
            .iter()
            .find(|(_, e)| e[11] != ATTR_LFN)
            .map(|(_, e)| *e)
            .unwrap_or([0u8; ENTRY]);
        // Entries other than '.' and '..' (and their long names) stay, compacted after them.
        let keep: Vec<[u8; ENTRY]> = {
            let mut v = vec![];
            let mut pending_lfn: Vec<[u8; ENTRY]> = vec![];
            for (_, e) in &own {
                if e[11] == ATTR_LFN {
                    pending_lfn.push(*e);
                    continue;
                }
                let dotty = &e[..11] == b".          " || &e[..11] == b"..         ";
                if !dotty && e[0] != 0xe5 {
                    v.append(&mut pending_lfn);
                    v.push(*e);
                }
                pending_lfn.clear();
            }
            v
        };
        let dotdot = if parent == bpb.root_cluster {
            0
        } else {
            parent
        };
        let mut fixed = vec![
            dot_entry(b".          ", dir, &template),
            dot_entry(b"..         ", dotdot, &template),
        ];
        fixed.extend(keep);
        // Rewrite the directory's slots in place: the fixed entries, then zeros up to
        // the old extent (the directory never grows).
        let slots = own.len().max(fixed.len());
        let offsets: Vec<u64> = {
            let mut v = vec![];
            for c in bpb.chain(dev, dir)? {
                let base = bpb.cluster_offset(c);
                for i in 0..(bpb.cluster_bytes() as usize / ENTRY) {
                    v.push(base + (i * ENTRY) as u64);
                }
            }
            v
        };
        if slots > offsets.len() {
            return Err(bad("directory does not fit its clusters"));
        }
        for (i, off) in offsets.iter().take(slots).enumerate() {
            dev.seek(SeekFrom::Start(*off))?;
            dev.write_all(fixed.get(i).unwrap_or(&[0u8; ENTRY]))?;
        }
        parent = dir;
    }
    dev.flush()
}
