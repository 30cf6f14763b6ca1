//! The disk image side of an upload: which 512 KiB blocks hold data (holes found
//! with SEEK_DATA/SEEK_HOLE, all-zero blocks skipped after reading), each block's
//! SHA-256, and the snapshot's LINEAR aggregate checksum.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};

/// EBS direct block size (the API's 524288; moto answers 512, which is ignored).
pub const BLOCK: u64 = 512 << 10;
/// Bytes per GiB (EBS volume sizes are whole GiB).
pub const GIB: u64 = 1 << 30;

/// Byte ranges `[start, end)` of `f` that hold data, from SEEK_DATA/SEEK_HOLE. A
/// file system without them reports one range: the whole file.
pub fn data_ranges(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = vec![];
    let mut at: u64 = 0;
    while at < size {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out), // no data after `at`
                Some(libc::EINVAL) if out.is_empty() && at == 0 => Ok(vec![(0, size)]),
                _ => Err(e),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (d, h) = (data as u64, (hole as u64).min(size));
        if h > d {
            out.push((d, h));
        }
        at = h.max(d + 1);
    }
    Ok(out)
}

/// Indices of the blocks that overlap a data range, in order.
pub fn candidate_blocks(ranges: &[(u64, u64)]) -> Vec<u64> {
    let mut out: Vec<u64> = vec![];
    for &(s, e) in ranges {
        let (first, last) = (s / BLOCK, (e - 1) / BLOCK);
        for b in first..=last {
            if out.last() != Some(&b) {
                out.push(b);
            }
        }
    }
    out
}

/// Reads block `index` of `f` (`size` bytes long), zero-padded to [`BLOCK`].
/// `None` when it is all zeros.
pub fn read_block(f: &File, size: u64, index: u64) -> std::io::Result<Option<Vec<u8>>> {
    let start = index * BLOCK;
    let len = BLOCK.min(size.saturating_sub(start)) as usize;
    let mut buf = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut buf[..len], start)?;
    Ok(buf.iter().any(|&b| b != 0).then_some(buf))
}

/// SHA-256 of a block.
pub fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Base64, as the EBS API wants checksums.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The LINEAR aggregate checksum: SHA-256 over the blocks' SHA-256 digests
/// concatenated in block-index order, base64.
pub fn aggregate(digests_in_index_order: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for d in digests_in_index_order {
        h.update(d);
    }
    b64(&h.finalize())
}

/// What an image holds, for planning an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Image size in bytes.
    pub size: u64,
    /// Blocks overlapping data (some may still read as zeros).
    pub candidates: Vec<u64>,
}

/// Scans `path`.
pub fn scan(path: &Path) -> std::io::Result<(File, Scan)> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let ranges = data_ranges(&f, size)?;
    Ok((
        f,
        Scan {
            size,
            candidates: candidate_blocks(&ranges),
        },
    ))
}

/// The EBS volume size for an image: whole GiB, at least 1.
pub fn volume_gib(size: u64) -> u64 {
    size.div_ceil(GIB).max(1)
}

/// What reading and hashing an image found: the work an upload does on this side
/// of the wire, without the wire.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashReport {
    /// Image size.
    pub size: u64,
    /// Blocks in the image.
    pub blocks: u64,
    /// Blocks overlapping data (read).
    pub candidates: u64,
    /// Non-zero blocks (would be sent).
    pub nonzero: u64,
    /// The LINEAR aggregate checksum of the non-zero blocks.
    pub aggregate: String,
}

/// Reads every candidate block of `path` and hashes the non-zero ones on `threads`
/// threads, as an upload would.
pub fn hash_all(path: &Path, threads: usize) -> std::io::Result<HashReport> {
    let (f, scan) = scan(path)?;
    let threads = threads.max(1);
    let chunks: Vec<&[u64]> = scan
        .candidates
        .chunks(scan.candidates.len().div_ceil(threads).max(1))
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || -> std::io::Result<Vec<(u64, [u8; 32])>> {
                    let mut out = vec![];
                    for &b in *c {
                        if let Some(data) = read_block(f, scan.size, b)? {
                            out.push((b, digest(&data)));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hash thread panicked"))
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    let mut all: Vec<(u64, [u8; 32])> = results.into_iter().flatten().collect();
    all.sort_by_key(|(b, _)| *b);
    let digests: Vec<[u8; 32]> = all.iter().map(|(_, d)| *d).collect();
    Ok(HashReport {
        size: scan.size,
        blocks: scan.size.div_ceil(BLOCK),
        candidates: scan.candidates.len() as u64,
        nonzero: all.len() as u64,
        aggregate: aggregate(&digests),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// The blocks an upload sends: candidates that do not read as zeros.
    fn sent_blocks(f: &File, s: &Scan) -> Vec<u64> {
        s.candidates
            .iter()
            .copied()
            .filter(|&b| read_block(f, s.size, b).unwrap().is_some())
            .collect()
    }

    #[test]
    fn holes_are_skipped_and_zero_blocks_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 * BLOCK + 1000).unwrap(); // a short last block
        for (block, byte) in [(3u64, 1u8), (40, 2)] {
            f.seek(SeekFrom::Start(block * BLOCK + 17)).unwrap();
            f.write_all(&[byte; 100]).unwrap();
        }
        // Written zeros: data on disk, but nothing to send.
        f.seek(SeekFrom::Start(10 * BLOCK)).unwrap();
        f.write_all(&vec![0u8; BLOCK as usize]).unwrap();
        f.seek(SeekFrom::Start(64 * BLOCK)).unwrap();
        f.write_all(&[9u8; 1000]).unwrap();
        f.sync_all().unwrap();
        let (f, s) = scan(&p).unwrap();
        assert!(s.candidates.len() < 20, "holes found: {:?}", s.candidates);
        for b in [3, 10, 40, 64] {
            assert!(s.candidates.contains(&b), "{b} in {:?}", s.candidates);
        }
        let sent = sent_blocks(&f, &s);
        assert_eq!(sent, vec![3, 40, 64]);
        let r = hash_all(&p, 3).unwrap();
        assert_eq!(
            (r.nonzero, r.candidates, r.blocks),
            (3, s.candidates.len() as u64, 65)
        );
        let digests: Vec<[u8; 32]> = sent
            .iter()
            .map(|&b| digest(&read_block(&f, s.size, b).unwrap().unwrap()))
            .collect();
        assert_eq!(r.aggregate, aggregate(&digests));
        let last = read_block(&f, s.size, 64).unwrap().unwrap();
        assert_eq!(last.len(), BLOCK as usize);
        assert!(last[..1000].iter().all(|&b| b == 9) && last[1000..].iter().all(|&b| b == 0));
        assert_eq!(volume_gib(s.size), 1);
        assert_eq!(volume_gib(GIB + 1), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever is written where, the blocks sent are exactly the blocks holding a
        /// non-zero byte, and each reads back as the file's bytes, zero-padded.
        #[test]
        fn sent_blocks_are_exactly_the_nonzero_ones(
            size in 1u64..(12 * BLOCK),
            writes in proptest::collection::vec((0u64..(12 * BLOCK), 1usize..3000, 0u8..3), 0..12),
        ) {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("img");
            let mut f = File::create(&p).unwrap();
            f.set_len(size).unwrap();
            let mut model = vec![0u8; size as usize];
            for (at, len, byte) in writes {
                if at >= size {
                    continue;
                }
                let len = len.min((size - at) as usize);
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&vec![byte; len]).unwrap();
                model[at as usize..at as usize + len].fill(byte);
            }
            f.sync_all().unwrap();
            let (f, s) = scan(&p).unwrap();
            let sent = sent_blocks(&f, &s);
            let want: Vec<u64> = model
                .chunks(BLOCK as usize)
                .enumerate()
                .filter(|(_, c)| c.iter().any(|&b| b != 0))
                .map(|(i, _)| i as u64)
                .collect();
            proptest::prop_assert_eq!(&sent, &want);
            for b in sent {
                let data = read_block(&f, s.size, b).unwrap().unwrap();
                let start = (b * BLOCK) as usize;
                let end = (start + BLOCK as usize).min(model.len());
                proptest::prop_assert_eq!(&data[..end - start], &model[start..end]);
                proptest::prop_assert!(data[end - start..].iter().all(|&x| x == 0));
            }
        }
    }

    #[test]
    fn candidate_blocks_merge_ranges_in_one_block() {
        assert_eq!(candidate_blocks(&[(0, 10), (20, 30)]), vec![0]);
        assert_eq!(
            candidate_blocks(&[(BLOCK - 1, BLOCK + 1), (3 * BLOCK, 3 * BLOCK + 1)]),
            vec![0, 1, 3]
        );
    }

    #[test]
    fn aggregate_is_sha256_of_the_digests() {
        let a = digest(b"a");
        let b = digest(b"b");
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(aggregate(&[a, b]), b64(&digest(&cat)));
        assert_ne!(aggregate(&[a, b]), aggregate(&[b, a]));
    }
}
