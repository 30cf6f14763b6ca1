//! Writing a slot changes only that slot (sentinels everywhere else), and a failed or
//! refused write leaves nothing that claims a version.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::process::Command;

use bootctl::layout::{EMPTY, MIB, Slot, uuids_from_root_hash};
use bootctl::slot::{self, SlotImage};
use bootctl::{Error, table};
use tests::{layout_disk, run, small_layout, tool};

const DISK: u64 = 256 * MIB;

fn setup(dir: &std::path::Path) -> (std::path::PathBuf, std::fs::File) {
    let mut spec = small_layout("qimg-demo");
    spec.esp_mib = 40;
    spec.root_mib = 64;
    let (path, mut f, t) = layout_disk(dir, "disk.raw", DISK, &spec);
    // Sentinels at the first and last 16 bytes of every partition.
    for (n, p) in &t.partitions {
        for at in [p.first_lba * 512, (p.last_lba + 1) * 512 - 16] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(format!("sentinel-{n:02}-{:05}", at % 100_000).as_bytes())
                .unwrap();
        }
    }
    (path, f)
}

fn image(data_mib: u64, seed: u8) -> (SlotImage, Vec<u8>) {
    let data = data_mib * MIB;
    let hash = 100 * 4096;
    let bytes: Vec<u8> = (0..data + hash)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect();
    let mut root_hash = [seed; 32];
    root_hash[0] = 0x42;
    let img = SlotImage {
        product: "qimg-demo".into(),
        version: "7.1.0".into(),
        hash_offset: data,
        size: data + hash,
        root_hash,
    };
    (img, bytes)
}

#[test]
fn writing_slot_b_changes_only_slot_b() {
    if !tool("sgdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = setup(d.path());
    let before = std::fs::read(&path).unwrap();
    let (img, bytes) = image(20, 7);
    let t = slot::write(&mut f, Slot::B, &img, &mut &bytes[..], false).unwrap();
    let after = std::fs::read(&path).unwrap();
    let p = slot::parts(&t, Slot::B).unwrap();
    let written = [
        (p.root.1, p.root.1 + img.hash_offset),
        (p.verity.1, p.verity.1 + (img.size - img.hash_offset)),
    ];
    // GPT areas: LBA 0-33 and the last 33 LBAs (labels and UUIDs changed there).
    let gpt = [(0, 34 * 512), (DISK - 33 * 512, DISK)];
    let allowed = |i: u64| {
        written
            .iter()
            .chain(gpt.iter())
            .any(|&(a, b)| (a..b).contains(&i))
    };
    let changed: Vec<u64> = (0..DISK)
        .filter(|&i| before[i as usize] != after[i as usize])
        .collect();
    assert!(!changed.is_empty());
    let stray: Vec<&u64> = changed.iter().filter(|&&i| !allowed(i)).take(5).collect();
    assert!(
        stray.is_empty(),
        "bytes outside slot B changed at {stray:?}"
    );
    // The data and hash areas are where they belong.
    assert_eq!(
        &after[p.root.1 as usize..][..img.hash_offset as usize],
        &bytes[..img.hash_offset as usize]
    );
    assert_eq!(
        &after[p.verity.1 as usize..][..(img.size - img.hash_offset) as usize],
        &bytes[img.hash_offset as usize..]
    );
    // The end sentinel of slot B's root (beyond the image) is intact; A's are untouched.
    let end = (p.root.1 + p.root.2) as usize;
    assert!(after[end - 16..end].starts_with(b"sentinel-"));
    // Labels and DPS UUIDs.
    assert_eq!(slot::label(&t, Slot::B).unwrap(), "qimg-demo_7.1.0");
    assert_eq!(slot::label(&t, Slot::A).unwrap(), EMPTY);
    let (root_uuid, verity_uuid) = uuids_from_root_hash(&img.root_hash);
    assert_eq!(t.partitions[&p.root.0].part_guid, root_uuid);
    assert_eq!(t.partitions[&p.verity.0].part_guid, verity_uuid);
    run(Command::new("sgdisk").arg("-v").arg(&path));
}

#[test]
fn too_small_is_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = setup(d.path());
    let before = std::fs::read(&path).unwrap();
    let (img, bytes) = image(65, 1);
    assert!(matches!(
        slot::write(&mut f, Slot::A, &img, &mut &bytes[..], false),
        Err(Error::SlotTooSmall { slot: Slot::A, .. })
    ));
    assert!(std::fs::read(&path).unwrap() == before);
}

/// A reader that fails after `n` bytes, like a writer killed mid-copy.
struct Dies<'a> {
    data: &'a [u8],
    left: usize,
}

impl Read for Dies<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("killed"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn an_interrupted_write_leaves_the_slot_empty() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut f) = setup(d.path());
    let (img, bytes) = image(8, 3);
    slot::write(&mut f, Slot::B, &img, &mut &bytes[..], false).unwrap();
    let (mut newer, bytes2) = image(8, 4);
    newer.version = "7.2.0".into();
    let mut dying = Dies {
        data: &bytes2,
        left: 3 * MIB as usize,
    };
    assert!(slot::write(&mut f, Slot::B, &newer, &mut dying, false).is_err());
    let t = table::read(&mut f).unwrap();
    assert_eq!(
        slot::label(&t, Slot::B).unwrap(),
        EMPTY,
        "a half-written slot claims a version"
    );
    // The same image cannot go into both slots (DPS UUIDs would collide).
    slot::write(&mut f, Slot::B, &img, &mut &bytes[..], false).unwrap();
    assert!(slot::write(&mut f, Slot::A, &img, &mut &bytes[..], false).is_err());
}
