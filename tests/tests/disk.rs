//! `imagebuild disk`: a bootable node image from a bundle, checked with sgdisk,
//! fsck.vfat, mdir, unsquashfs and veritysetup.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use bootctl::entries;
use bootctl::esp::{Esp, ImageEsp};
use bootctl::layout::{EMPTY, Slot};
use bootctl::model::EfiVars;
use bootctl::{slot, table};
use imagebuild::Cancel;
use imagebuild::disk::{DiskOptions, SYSTEMD_BOOT, build};
use qimg::{NoProgress, Target};
use tests::{STUB, file_from_package, run, small_uki, tool};

fn cut(path: &Path, start: u64, len: u64, to: &Path) {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, buf).unwrap();
}

/// Builds a disk image from `bundle` with small test sizes.
fn disk_image(
    bundle: &Path,
    keys: &qimg::TrustedKeys,
    out: &Path,
    target: Target,
) -> Result<imagebuild::disk::DiskReport, imagebuild::Error> {
    build(&DiskOptions {
        bundle,
        keys: Some(keys),
        out,
        size: None,
        systemd_boot: Path::new(SYSTEMD_BOOT),
        target,
        esp_mib: 64,
        root_mib: None,
        data_mib: 16,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    })
}

fn make(dir: &Path, name: &str, bundle: &Path, key: &qimg::TrustedKeys) -> std::path::PathBuf {
    let out = dir.join(name);
    disk_image(bundle, key, &out, Target::Onprem).unwrap();
    out
}

#[test]
fn a_fresh_disk_image_passes_every_standard_check() {
    if !(tool("sgdisk")
        && tool("fsck.vfat")
        && tool("mdir")
        && tool("unsquashfs")
        && tool("veritysetup")
        && file_from_package(STUB, "systemd-boot-efi"))
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let spec = tests::write_inputs(d.path(), 2_000_000);
    std::fs::write(d.path().join("uki.efi"), small_uki("qumulo-core", "2.0")).unwrap();
    let key = tests::test_key(1);
    let bundle = d.path().join("b.qimg");
    tests::build(&spec, &bundle, std::slice::from_ref(&key)).unwrap();
    let trusted = qimg::TrustedKeys::new([key.public()]);
    let img = make(d.path(), "disk.raw", &bundle, &trusted);

    run(Command::new("sgdisk").arg("-v").arg(&img));
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let t = table::read(&mut f).unwrap();
    assert_eq!(slot::label(&t, Slot::A).unwrap(), "qumulo-core_2.0");
    assert_eq!(slot::label(&t, Slot::B).unwrap(), EMPTY);

    // ESP: clean for fsck, entries visible to mtools.
    let (start, len) = t.esp_range().unwrap();
    let esp_file = d.path().join("esp.img");
    cut(&img, start, len, &esp_file);
    let fsck = run(Command::new("fsck.vfat").arg("-n").arg(&esp_file));
    assert!(!String::from_utf8_lossy(&fsck.stdout).contains("Fix"));
    let at = format!("{}@@{start}", img.display());
    let linux =
        String::from_utf8(run(Command::new("mdir").args(["-i", &at, "::/EFI/Linux"])).stdout)
            .unwrap();
    assert!(linux.contains("qumulo-core-a-2.0.efi"), "{linux}");
    let boot = String::from_utf8(run(Command::new("mdir").args(["-i", &at, "::/EFI/BOOT"])).stdout)
        .unwrap();
    assert!(boot.contains("BOOTX64"), "{boot}");
    let mut e = ImageEsp::open(
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap(),
        start,
        len,
    )
    .unwrap();
    assert_eq!(
        e.read("loader/loader.conf").unwrap(),
        b"timeout 0\neditor no\n"
    );
    assert_eq!(
        e.read("EFI/BOOT/BOOTX64.EFI").unwrap(),
        std::fs::read(SYSTEMD_BOOT).unwrap()
    );
    let (found, sel) = entries::next(&mut e, "qumulo-core", &EfiVars::default()).unwrap();
    assert_eq!(
        found[sel.chosen.unwrap()].entry.file,
        "qumulo-core-a-2.0.efi"
    );
    drop(e);

    // Slot A: the squashfs and the verity tree, checked by their own tools.
    let p = slot::parts(&t, Slot::A).unwrap();
    let m = qimg::BundleReader::open(std::fs::File::open(&bundle).unwrap())
        .unwrap()
        .manifest()
        .clone();
    let v = m.components[0].kind.verity().unwrap().clone();
    let (data, hash) = (d.path().join("root.img"), d.path().join("verity.img"));
    cut(&img, p.root.1, v.hash_offset, &data);
    cut(
        &img,
        p.verity.1,
        m.components[0].size - v.hash_offset,
        &hash,
    );
    let listed =
        String::from_utf8(run(Command::new("unsquashfs").args(["-l", "-d", ""]).arg(&data)).stdout)
            .unwrap();
    assert!(listed.contains("/etc/os-release"), "{listed}");
    run(Command::new("veritysetup")
        .arg("verify")
        .arg(&data)
        .arg(&hash)
        .arg(v.root_hash.to_string()));

    // Sparse, and the same bundle gives the same image.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&img).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len() / 4,
        "not sparse: {} of {}",
        meta.blocks() * 512,
        meta.len()
    );
    let again = make(d.path(), "again.raw", &bundle, &trusted);
    assert!(std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap());
}

#[test]
fn a_tampered_or_untrusted_bundle_makes_no_image() {
    if !file_from_package(SYSTEMD_BOOT, "systemd-boot-efi") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = tests::Fixture::new(200_000);
    let mut bytes = f.bytes.clone();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    let bad = d.path().join("bad.qimg");
    std::fs::write(&bad, &bytes).unwrap();
    for (bundle, keys) in [
        (bad.as_path(), f.trusted()),
        (
            f.bundle.as_path(),
            qimg::TrustedKeys::new([tests::test_key(5).public()]),
        ),
    ] {
        let out = d.path().join("x.raw");
        let r = disk_image(bundle, &keys, &out, Target::Onprem);
        assert!(matches!(r, Err(imagebuild::Error::Bundle { .. })), "{r:?}");
        assert!(!out.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".disk")
            })
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn a_uki_built_in_the_bundle_names_its_root_by_hash() {
    if !(file_from_package(STUB, "systemd-boot-efi")
        && file_from_package(SYSTEMD_BOOT, "systemd-boot-efi"))
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let spec = tests::write_inputs(d.path(), 300_000);
    let mut kernel = vec![0u8; 8192];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(d.path().join("vmlinuz"), kernel).unwrap();
    std::fs::write(
        d.path().join("os-release"),
        "ID=qumulo-core\nIMAGE_ID=qumulo-core\nIMAGE_VERSION=2.0\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "uki = \"uki.efi\"",
        "kernel = \"vmlinuz\"\ncmdline = \"console=ttyS0\"\nos_release = \"os-release\"",
    );
    std::fs::write(&spec, text).unwrap();
    let key = tests::test_key(1);
    let bundle = d.path().join("b.qimg");
    tests::build(&spec, &bundle, std::slice::from_ref(&key)).unwrap();

    let mut r = qimg::BundleReader::open(std::fs::File::open(&bundle).unwrap()).unwrap();
    let m = r.manifest().clone();
    let root_hash = m.components[0].kind.verity().unwrap().root_hash.to_string();
    let mut uki = Vec::new();
    r.next_component(std::io::sink(), &NoProgress).unwrap();
    r.next_component(&mut uki, &NoProgress).unwrap();
    let info = bootctl::uki::inspect(&uki).unwrap();
    assert_eq!(
        info.cmdline.as_deref(),
        Some(format!("console=ttyS0 roothash={root_hash}").as_str())
    );

    let trusted = qimg::TrustedKeys::new([key.public()]);
    let img = make(d.path(), "disk.raw", &bundle, &trusted);
    let t = table::read(&mut std::fs::File::open(&img).unwrap()).unwrap();
    let p = slot::parts(&t, Slot::A).unwrap();
    let uuid = t.partitions[&p.root.0].part_guid.simple().to_string();
    assert_eq!(
        uuid,
        root_hash[..32],
        "slot A's root partition UUID is the first half of the root hash"
    );
}

#[test]
fn cloud_images_are_whole_gib_and_targets_must_match() {
    if !file_from_package(SYSTEMD_BOOT, "systemd-boot-efi") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let spec = tests::write_inputs(d.path(), 200_000);
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("target = \"onprem\"", "target = \"cloud\"");
    std::fs::write(&spec, text).unwrap();
    let key = tests::test_key(1);
    let bundle = d.path().join("c.qimg");
    tests::build(&spec, &bundle, std::slice::from_ref(&key)).unwrap();
    let trusted = qimg::TrustedKeys::new([key.public()]);
    let opts = |target, out: &Path| disk_image(&bundle, &trusted, out, target);
    let out = d.path().join("cloud.raw");
    let r = opts(Target::Cloud, &out).unwrap();
    assert_eq!(r.size % (1 << 30), 0);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), r.size);
    let wrong = d.path().join("onprem.raw");
    assert!(matches!(
        opts(Target::Onprem, &wrong),
        Err(imagebuild::Error::Usage(_))
    ));
    assert!(!wrong.exists());
}
