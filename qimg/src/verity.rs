//! dm-verity hash trees, byte-identical to `veritysetup format` (format 1, sha256,
//! 4 KiB data and hash blocks, with superblock).
//!
//! The hash area, stored right after the data at `hash_offset`, is:
//! one 4 KiB block holding the superblock, then the tree levels top-down (the single
//! root-level block first, the leaf level last). Each digest is
//! `sha256(salt ‖ block)`, 128 digests per hash block, zero-padded. The root hash is
//! the digest of the root-level block.
//!
//! Superblock (512 bytes, little-endian, rest of the 4 KiB block zero):
//!
//! | offset | size | field                         |
//! |-------:|-----:|-------------------------------|
//! | 0      | 8    | signature `verity\0\0`        |
//! | 8      | 4    | version = 1                   |
//! | 12     | 4    | hash type = 1 (normal)        |
//! | 16     | 16   | UUID                          |
//! | 32     | 32   | algorithm, NUL-padded         |
//! | 64     | 4    | data block size               |
//! | 68     | 4    | hash block size               |
//! | 72     | 8    | number of data blocks         |
//! | 80     | 2    | salt size                     |
//! | 82     | 6    | padding                       |
//! | 88     | 256  | salt, zero-padded             |
//! | 344    | 168  | padding                       |

use crate::Invalid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::Sha256 as Digest256;

/// Data and hash block size.
pub const BLOCK_SIZE: u64 = 4096;
const DIGESTS_PER_BLOCK: u64 = BLOCK_SIZE / 32;
const SUPERBLOCK_LEN: usize = 512;
/// Longest salt the superblock can hold.
pub const MAX_SALT: usize = 256;

/// dm-verity parameters of an image, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// Hash format (`veritysetup --format`), always 1.
    pub format: u32,
    /// Hash algorithm, always `sha256`.
    pub hash_algorithm: String,
    /// Data block size in bytes (4096).
    pub data_block_size: u32,
    /// Hash block size in bytes (4096).
    pub hash_block_size: u32,
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Byte offset of the hash area (superblock) in the component.
    pub hash_offset: u64,
    /// Salt, hex.
    pub salt: String,
    /// UUID stored in the superblock.
    pub uuid: String,
    /// Root hash.
    pub root_hash: Digest256,
}

impl VerityInfo {
    /// Checks the fixed parameters and internal consistency.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.format != 1 || self.hash_algorithm != "sha256" {
            return Err(Invalid("only format 1 with sha256 is defined".into()));
        }
        if u64::from(self.data_block_size) != BLOCK_SIZE
            || u64::from(self.hash_block_size) != BLOCK_SIZE
        {
            return Err(Invalid("block sizes must be 4096".into()));
        }
        if self.data_blocks == 0 {
            return Err(Invalid("no data blocks".into()));
        }
        if Some(self.hash_offset) != self.data_blocks.checked_mul(BLOCK_SIZE) {
            return Err(Invalid("hash_offset must be data_blocks * 4096".into()));
        }
        let salt = hex::decode(&self.salt).map_err(|_| "salt is not hex".to_owned())?;
        if salt.len() > MAX_SALT {
            return Err(Invalid("salt longer than 256 bytes".into()));
        }
        parse_uuid(&self.uuid).ok_or_else(|| "uuid is not 8-4-4-4-12 hex".to_owned())?;
        Ok(())
    }
}

/// Formats 16 bytes as a lower-case 8-4-4-4-12 UUID.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses a lower-case 8-4-4-4-12 UUID.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let parts: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    if lens != [8, 4, 4, 4, 12] || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(parts.concat(), &mut out).ok()?;
    Some(out)
}

/// Number of hash blocks on each level, root level first.
fn levels(data_blocks: u64) -> Vec<u64> {
    let mut out = vec![];
    let mut n = data_blocks;
    loop {
        n = n.div_ceil(DIGESTS_PER_BLOCK);
        out.push(n);
        if n <= 1 {
            break;
        }
    }
    out.reverse();
    out
}

/// Size in bytes of the hash area (superblock block plus tree) for `data_blocks`.
pub fn hash_area_size(data_blocks: u64) -> u64 {
    if data_blocks == 0 {
        return 0;
    }
    (1 + levels(data_blocks).iter().sum::<u64>()) * BLOCK_SIZE
}

fn salted_digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Builds a hash tree from data fed in any slicing.
pub struct VerityBuilder {
    salt: Vec<u8>,
    uuid: [u8; 16],
    leaves: Vec<u8>,
    partial: Vec<u8>,
    data_len: u64,
}

/// Leaf digests are computed on two threads when an update brings at least this many blocks.
const PARALLEL_MIN_BLOCKS: usize = 256;

impl VerityBuilder {
    /// A builder with a given salt (at most 256 bytes) and superblock UUID.
    pub fn new(salt: &[u8], uuid: [u8; 16]) -> VerityBuilder {
        assert!(salt.len() <= MAX_SALT, "salt longer than 256 bytes");
        VerityBuilder {
            salt: salt.to_vec(),
            uuid,
            leaves: Vec::new(),
            partial: Vec::with_capacity(BLOCK_SIZE as usize),
            data_len: 0,
        }
    }

    fn hash_blocks(&mut self, blocks: &[u8]) {
        let bs = BLOCK_SIZE as usize;
        let n = blocks.len() / bs;
        let start = self.leaves.len();
        self.leaves.resize(start + n * 32, 0);
        let out = &mut self.leaves[start..];
        let salt = &self.salt;
        let run = |data: &[u8], out: &mut [u8]| {
            for (block, digest) in data.chunks_exact(bs).zip(out.chunks_exact_mut(32)) {
                digest.copy_from_slice(&salted_digest(salt, block));
            }
        };
        if n >= PARALLEL_MIN_BLOCKS {
            let half = n / 2;
            let (d0, d1) = blocks.split_at(half * bs);
            let (o0, o1) = out.split_at_mut(half * 32);
            std::thread::scope(|s| {
                s.spawn(|| run(d1, o1));
                run(d0, o0);
            });
        } else {
            run(blocks, out);
        }
    }

    /// Feeds data.
    pub fn update(&mut self, mut data: &[u8]) {
        let bs = BLOCK_SIZE as usize;
        self.data_len += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == bs {
                let block = std::mem::take(&mut self.partial);
                self.hash_blocks(&block);
                self.partial = block;
                self.partial.clear();
            }
        }
        let whole = data.len() / bs * bs;
        self.hash_blocks(&data[..whole]);
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// Finishes the tree. The data must be a non-empty whole number of 4 KiB blocks.
    /// Returns the parameters and the hash area (superblock block, then the tree).
    pub fn finish(mut self) -> Result<(VerityInfo, Vec<u8>), Invalid> {
        if !self.partial.is_empty() || self.data_len == 0 {
            return Err(Invalid(format!(
                "data size {} is not a positive multiple of {BLOCK_SIZE}",
                self.data_len
            )));
        }
        let data_blocks = self.data_len / BLOCK_SIZE;
        let bs = BLOCK_SIZE as usize;
        // Build levels bottom-up; each level is the digests of the one below, padded to blocks.
        let mut below = std::mem::take(&mut self.leaves);
        let mut stored: Vec<Vec<u8>> = Vec::new();
        loop {
            let blocks = below.len().div_ceil(bs);
            below.resize(blocks * bs, 0);
            let done = blocks == 1;
            let next: Vec<u8> = below
                .chunks_exact(bs)
                .flat_map(|b| salted_digest(&self.salt, b))
                .collect();
            stored.push(below);
            if done {
                below = next;
                break;
            }
            below = next;
        }
        let root: [u8; 32] = below[..32].try_into().expect("32 bytes");
        let mut area = Vec::with_capacity(hash_area_size(data_blocks) as usize);
        area.extend_from_slice(&self.superblock(data_blocks));
        area.resize(bs, 0);
        for level in stored.iter().rev() {
            area.extend_from_slice(level);
        }
        debug_assert_eq!(area.len() as u64, hash_area_size(data_blocks));
        let info = VerityInfo {
            format: 1,
            hash_algorithm: "sha256".into(),
            data_block_size: BLOCK_SIZE as u32,
            hash_block_size: BLOCK_SIZE as u32,
            data_blocks,
            hash_offset: data_blocks * BLOCK_SIZE,
            salt: hex::encode(&self.salt),
            uuid: format_uuid(&self.uuid),
            root_hash: Digest256(root),
        };
        Ok((info, area))
    }

    fn superblock(&self, data_blocks: u64) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(b"verity\0\0"); // offset 0
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // offset 8: version
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // offset 12: hash type
        b[16..32].copy_from_slice(&self.uuid); // offset 16
        b[32..38].copy_from_slice(b"sha256"); // offset 32
        b[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes()); // offset 64
        b[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes()); // offset 68
        b[72..80].copy_from_slice(&data_blocks.to_le_bytes()); // offset 72
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes()); // offset 80
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt); // offset 88
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn level_layout_matches_veritysetup() {
        // 64 MiB of data: 16384 blocks -> 128 leaf blocks + 1 root block + superblock.
        assert_eq!(levels(16384), vec![1, 128]);
        assert_eq!(hash_area_size(16384), 130 * 4096);
        // 1 GiB: 1 + 2 + 16 + 2048 + superblock = 2066 blocks (measured: 8,462,336 bytes).
        assert_eq!(hash_area_size(262_144), 8_462_336);
        assert_eq!(levels(1), vec![1]);
        assert_eq!(levels(128), vec![1]);
        assert_eq!(levels(129), vec![1, 2]);
    }

    #[test]
    fn single_level_tree_by_hand() {
        let salt = [7u8; 32];
        let data = vec![0xabu8; 3 * 4096];
        let mut b = VerityBuilder::new(&salt, [1; 16]);
        b.update(&data);
        let (info, area) = b.finish().unwrap();
        let mut leaf = Vec::new();
        for block in data.chunks(4096) {
            leaf.extend_from_slice(&salted_digest(&salt, block));
        }
        leaf.resize(4096, 0);
        assert_eq!(&area[4096..], &leaf[..]);
        assert_eq!(info.root_hash.0, salted_digest(&salt, &leaf));
        assert_eq!(&area[..8], b"verity\0\0");
        assert_eq!(info.hash_offset, 3 * 4096);
        info.validate().unwrap();
    }

    #[test]
    fn rejects_partial_blocks() {
        let mut b = VerityBuilder::new(&[], [0; 16]);
        b.update(&[1, 2, 3]);
        assert!(b.finish().is_err());
        assert!(VerityBuilder::new(&[], [0; 16]).finish().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn slicing_does_not_change_the_tree(blocks in 1usize..300, cut in any::<prop::sample::Index>(),
                                            seed in any::<u8>()) {
            let data: Vec<u8> = (0..blocks * 4096).map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 12) as u8).collect();
            let mut one = VerityBuilder::new(b"salt", [2; 16]);
            one.update(&data);
            let mut two = VerityBuilder::new(b"salt", [2; 16]);
            let at = cut.index(data.len());
            two.update(&data[..at]);
            for chunk in data[at..].chunks(1000) { two.update(chunk); }
            prop_assert_eq!(one.finish().unwrap(), two.finish().unwrap());
        }
    }
}
