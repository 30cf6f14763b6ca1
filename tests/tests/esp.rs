//! The ESP inside a disk image (fatfs) and as a directory, checked with fsck.vfat,
//! mdir and sgdisk.

use std::fs::{File, OpenOptions};

use std::path::{Path, PathBuf};
use std::process::Command;

use bootctl::Error;
use bootctl::esp::{self, DirEsp, Esp, ImageEsp};
use bootctl::layout::MIB;
use tests::{esp_range, formatted_esp, fsck, layout_disk, mdir, run, small_layout, tool};

const DISK: u64 = 384 * MIB;

/// A disk with the standard layout and a formatted ESP; returns (path, ESP start, ESP length).
fn disk(dir: &Path) -> (PathBuf, u64, u64) {
    let mut spec = small_layout("qimg-demo");
    spec.root_mib = 100;
    spec.verity_mib = 4;
    let (path, f, t) = layout_disk(dir, "disk.raw", DISK, &spec);
    let (start, len) = esp_range(&t);
    drop(formatted_esp(f, &t, 0x1234_abcd));
    (path, start, len)
}

fn open(path: &Path, start: u64, len: u64) -> ImageEsp<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    ImageEsp::open(f, start, len).unwrap()
}

#[test]
fn image_esp_is_clean_for_fsck_and_readable_by_mtools() {
    if !(tool("fsck.vfat") && tool("mdir") && tool("sgdisk")) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (path, start, len) = disk(d.path());
    fsck(&path, start, len);
    {
        let mut e = open(&path, start, len);
        e.write_new("EFI/BOOT/BOOTX64.EFI", &vec![0xaa; 150_000])
            .unwrap();
        e.write_new("loader/loader.conf", b"timeout 0\neditor no\n")
            .unwrap();
        e.write_new("EFI/Linux/qimg-demo-a-7.0.0.efi", &vec![1; 400_000])
            .unwrap();
        e.write_new("EFI/Linux/qimg-demo-b-7.1.0+3-0.efi", &vec![2; 400_000])
            .unwrap();
        // What systemd-boot does on a boot attempt: a same-length rename.
        e.rename(
            "EFI/Linux/qimg-demo-b-7.1.0+3-0.efi",
            "EFI/Linux/qimg-demo-b-7.1.0+2-1.efi",
        )
        .unwrap();
        e.flush().unwrap();
    }
    fsck(&path, start, len);
    run(Command::new("sgdisk").arg("-v").arg(&path));
    let listing = mdir(&path, start, "EFI/Linux");
    assert!(listing.contains("qimg-demo-a-7.0.0.efi"), "{listing}");
    assert!(listing.contains("qimg-demo-b-7.1.0+2-1.efi"), "{listing}");
    assert!(!listing.contains("qimg-tmp"), "{listing}");
    let mut e = open(&path, start, len);
    assert_eq!(
        e.list("EFI/Linux").unwrap(),
        ["qimg-demo-a-7.0.0.efi", "qimg-demo-b-7.1.0+2-1.efi"]
    );
    assert_eq!(
        e.read("loader/loader.conf").unwrap(),
        b"timeout 0\neditor no\n"
    );
    assert_eq!(e.read("EFI/BOOT/BOOTX64.EFI").unwrap().len(), 150_000);
}

#[test]
fn full_esp_is_refused_before_anything_changes() {
    let d = tempfile::tempdir().unwrap();
    let (path, start, len) = disk(d.path());
    let before = std::fs::read(&path).unwrap();
    let mut e = open(&path, start, len);
    let free = e.free_bytes().unwrap();
    match e.write_new("EFI/Linux/huge.efi", &vec![0; free as usize]) {
        Err(Error::EspFull {
            needed, free: f, ..
        }) => {
            assert!(needed > f);
            assert_eq!(f, free);
        }
        other => panic!("{other:?}"),
    }
    e.flush().unwrap();
    drop(e);
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a refused write changed the disk"
    );
}

#[test]
fn same_inputs_same_esp_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let write = |dir: &Path| {
        let (path, start, len) = disk(dir);
        let mut e = open(&path, start, len);
        e.write_new("EFI/Linux/x+3-0.efi", b"uki").unwrap();
        e.rename("EFI/Linux/x+3-0.efi", "EFI/Linux/x+2-1.efi")
            .unwrap();
        e.flush().unwrap();
        drop(e);
        std::fs::read(&path).unwrap()
    };
    assert!(write(a.path()) == write(b.path()));
}

#[test]
fn both_backends_keep_the_same_rules() {
    let d = tempfile::tempdir().unwrap();
    let (path, start, len) = disk(d.path());
    let dir = d.path().join("mounted");
    for sub in esp::DIRS {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut image = open(&path, start, len);
    let mut mounted = DirEsp::new(&dir);
    for e in [&mut image as &mut dyn Esp, &mut mounted] {
        e.write_new("EFI/Linux/a.efi", b"a").unwrap();
        e.write_new("EFI/Linux/b.efi", b"b").unwrap();
        // Never replace an existing file, by write or by rename.
        assert!(e.write_new("EFI/Linux/a.efi", b"x").is_err());
        assert!(e.rename("EFI/Linux/a.efi", "EFI/Linux/b.efi").is_err());
        assert_eq!(e.read("EFI/Linux/a.efi").unwrap(), b"a");
        e.rename("EFI/Linux/a.efi", "EFI/Linux/c.efi").unwrap();
        assert!(!e.exists("EFI/Linux/a.efi").unwrap());
        e.remove("EFI/Linux/b.efi").unwrap();
        assert_eq!(e.list("EFI/Linux").unwrap(), ["c.efi"]);
        for bad in ["/EFI/x", "EFI/../x", "", "EFI//x"] {
            assert!(
                matches!(e.write_new(bad, b""), Err(Error::BadPath { .. })),
                "{bad}"
            );
        }
        assert!(e.free_bytes().unwrap() > 0);
    }
}

#[test]
fn files_carry_valid_fat_timestamps() {
    // Firmware validates timestamps when systemd-boot renames an entry; month 0 or
    // day 0 made OVMF refuse the boot-counting rename ("Invalid Parameter").
    let d = tempfile::tempdir().unwrap();
    let (path, start, len) = disk(d.path());
    {
        let mut e = open(&path, start, len);
        e.write_new("EFI/Linux/x+3-0.efi", b"uki").unwrap();
        e.flush().unwrap();
    }
    let mut f = File::options().read(true).write(true).open(&path).unwrap();
    let fs = fatfs::FileSystem::new(
        bootctl::esp::Slice::new(&mut f, start, len),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let dir = fs.root_dir().open_dir("EFI/Linux").unwrap();
    let mut seen = 0;
    for e in dir.iter() {
        let e = e.unwrap();
        for date in [e.created().date, e.modified().date] {
            assert!(
                date.year >= 1980 && (1..=12).contains(&date.month) && (1..=31).contains(&date.day),
                "{}: {date:?}",
                e.file_name()
            );
        }
        seen += usize::from(e.is_file());
    }
    assert_eq!(seen, 1);
}

#[test]
fn directories_created_later_are_clean_for_fsck() {
    if !tool("fsck.vfat") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (path, start, len) = disk(d.path());
    {
        let mut e = open(&path, start, len);
        e.create_dir("EFI/UpdateCapsule").unwrap();
        e.create_dir("EFI/UpdateCapsule").unwrap(); // idempotent
        e.write_new("EFI/UpdateCapsule/fw.cap", b"capsule").unwrap();
        e.flush().unwrap();
        assert_eq!(e.list("EFI/UpdateCapsule").unwrap(), ["fw.cap"]);
    }
    fsck(&path, start, len);
}
