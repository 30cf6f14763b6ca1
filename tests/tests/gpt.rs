//! The node disk layout's GPT, written and read by `bootctl::table`, checked by sgdisk.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

use bootctl::Error;
use bootctl::layout::{ATTR_READ_ONLY, LayoutSpec, MIB, ROOT_TYPE};
use bootctl::table::{self, Recovered};
use tests::{run, tool};

const DISK: u64 = 512 * MIB;

fn spec() -> LayoutSpec {
    LayoutSpec {
        product: "qimg-demo".into(),
        esp_mib: 64,
        root_mib: 120,
        verity_mib: 4,
        min_data_mib: 16,
    }
}

/// A sparse disk image with a fresh layout.
fn disk(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, File) {
    let (path, f, _) = tests::layout_disk(dir, name, DISK, &spec());
    (path, f)
}

fn sgdisk_ok(path: &std::path::Path) {
    let out = run(Command::new("sgdisk").arg("-v").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
}

fn flip(f: &mut File, offset: u64) {
    use std::io::Read;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

fn bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn fresh_layout_is_valid_for_sgdisk_and_deterministic() {
    if !tool("sgdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (a, mut f) = disk(d.path(), "a.raw");
    let (b, _) = disk(d.path(), "b.raw");
    sgdisk_ok(&a);
    assert!(bytes(&a) == bytes(&b), "same inputs, different disks");
    let t = table::read(&mut f).unwrap();
    assert_eq!(t.of_type(ROOT_TYPE).len(), 2);
    let out = run(Command::new("sgdisk").arg("-p").arg(&a));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["esp", "_empty", "data"] {
        assert!(text.contains(name), "{text}");
    }
    // sgdisk agrees on the slot partitions' type GUID and attributes.
    let out = run(Command::new("sgdisk").arg("-i").arg("2").arg(&a));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.to_lowercase()
            .contains("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        "{text}"
    );
    assert!(
        text.contains("1000000000000000"),
        "read-only attribute: {text}"
    );
    // The sparse image stays sparse.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&a).unwrap().blocks() * 512 < 1 << 20);
}

#[test]
fn damaged_primary_or_backup_is_recovered_and_repaired() {
    if !tool("sgdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = disk(d.path(), "d.raw");
    let good = table::read(&mut f).unwrap();
    let last = DISK - 512;
    for (what, offset, expect) in [
        ("primary header", 512 + 20, Recovered::PrimaryFromBackup),
        ("primary array", 1024 + 40, Recovered::PrimaryFromBackup),
        ("backup header", last + 20, Recovered::BackupFromPrimary),
    ] {
        flip(&mut f, offset);
        let t = table::read(&mut f).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(t.recovered, Some(expect), "{what}");
        assert_eq!(t.partitions, good.partitions, "{what}");
        // Any update rewrites both copies.
        let repaired = table::update(&mut f, |_| Ok(())).unwrap();
        assert_eq!(repaired.recovered, None, "{what}");
        sgdisk_ok(&path);
    }
}

#[test]
fn both_copies_damaged_is_an_error_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = disk(d.path(), "d.raw");
    flip(&mut f, 512 + 20);
    flip(&mut f, DISK - 512 + 20);
    let before = bytes(&path);
    assert!(matches!(table::read(&mut f), Err(Error::BadTable { .. })));
    let r = table::update(&mut f, |parts| {
        parts.values_mut().for_each(|p| p.name = "x".into());
        Ok(())
    });
    assert!(matches!(r, Err(Error::BadTable { .. })));
    assert!(bytes(&path) == before, "a damaged table was written over");
}

#[test]
fn disk_smaller_than_the_table_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = disk(d.path(), "d.raw");
    f.set_len(DISK - MIB).unwrap();
    let before = bytes(&path);
    match table::read(&mut f) {
        Err(Error::BadTable { reason }) => assert!(reason.contains("sectors"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(table::update(&mut f, |_| Ok(())).is_err());
    assert!(bytes(&path) == before);
}

#[test]
fn invalid_changes_are_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = disk(d.path(), "d.raw");
    let before = bytes(&path);
    // Overlap: grow slot A's root into its verity partition.
    let r = table::update(&mut f, |parts| {
        let a = parts.get_mut(&2).unwrap();
        a.last_lba += 2048;
        Ok(())
    });
    assert!(
        matches!(r, Err(Error::BadTable { ref reason }) if reason.contains("overlap")),
        "{r:?}"
    );
    // Beyond the usable area.
    let r = table::update(&mut f, |parts| {
        parts.get_mut(&6).unwrap().last_lba = DISK / 512;
        Ok(())
    });
    assert!(r.is_err());
    // Name too long.
    let r = table::update(&mut f, |parts| {
        parts.get_mut(&4).unwrap().name = "x".repeat(37);
        Ok(())
    });
    assert!(r.is_err());
    assert!(bytes(&path) == before);
}

#[test]
fn other_owners_attribute_bits_are_preserved() {
    if !tool("sgdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (path, f) = disk(d.path(), "d.raw");
    // Another tool sets type-specific bit 50 on the data partition and bit 55 on slot B.
    run(Command::new("sgdisk")
        .args(["-A", "6:set:50", "-A", "4:set:55"])
        .arg(&path));
    let mut f2 = File::options().read(true).write(true).open(&path).unwrap();
    let t = table::update(&mut f2, |parts| {
        let b = parts.get_mut(&4).unwrap();
        b.name = "qimg-demo_7.1.0".into();
        // A careless change that clears every attribute bit...
        b.flags = 0;
        parts.get_mut(&6).unwrap().flags = 0;
        Ok(())
    })
    .unwrap();
    // ... keeps the bits other owners set, and lets qimg clear its own read-only bit.
    assert_eq!(t.partitions[&4].flags, 1 << 55);
    assert_eq!(t.partitions[&6].flags, 1 << 50);
    assert_eq!(t.partitions[&4].name, "qimg-demo_7.1.0");
    assert_eq!(t.partitions[&2].flags, ATTR_READ_ONLY);
    sgdisk_ok(&path);
    drop(f);
}

mod roundtrip {
    use super::*;
    use gpt::partition::Partition;
    use gpt::partition_types::{OperatingSystem, Type};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Arbitrary valid partitions written by `update` read back identical.
        #[test]
        fn partitions_round_trip(
            parts in prop::collection::vec(
                (1u64..8, any::<u128>(), any::<u128>(), any::<u64>(), "[a-zA-Z0-9_ .-]{0,36}"),
                1..6,
            )
        ) {
            let d = tempfile::tempdir().unwrap();
            let (_, mut f) = disk(d.path(), "p.raw");
            let mut next = 2048u64;
            let mut want = std::collections::BTreeMap::new();
            for (i, (mib, ty, guid, flags, name)) in parts.into_iter().enumerate() {
                let first = next;
                let last = first + mib * 2048 - 1;
                next = last + 1;
                want.insert(i as u32 + 1, Partition {
                    part_type_guid: Type { guid: uuid::Uuid::from_u128(ty | 1), os: OperatingSystem::None },
                    part_guid: uuid::Uuid::from_u128(guid | 1),
                    first_lba: first,
                    last_lba: last,
                    flags,
                    name,
                });
            }
            let w = want.clone();
            let t = table::update(&mut f, move |p| { *p = w; Ok(()) }).unwrap();
            prop_assert_eq!(&t.partitions, &want);
            prop_assert_eq!(table::read(&mut f).unwrap().partitions, want);
        }
    }
}

#[test]
fn a_disk_without_our_layout_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let (path, mut f) = disk(d.path(), "x.raw");
    // Turn the slot-B root partition into something else (an unknown type).
    table::update(&mut f, |p| {
        p.get_mut(&4).unwrap().part_type_guid.guid = uuid::Uuid::from_u128(0x1234);
        Ok(())
    })
    .unwrap();
    let t = table::read(&mut f).unwrap();
    let before = bytes(&path);
    match bootctl::slot::parts(&t, bootctl::layout::Slot::B) {
        Err(Error::BadTable { reason }) => assert!(reason.contains("2 root"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(bytes(&path) == before);
}
