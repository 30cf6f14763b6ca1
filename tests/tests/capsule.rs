//! A firmware capsule staged on the ESP inside a disk image (as `imagebuild`'s
//! images and `qbootctl --image` use it), checked with fsck.vfat and mtools, and
//! removed again once its result is known.

use std::process::Command;

use bootctl::efivars::EFI_GLOBAL_GUID;
use bootctl::esp::{Esp, ImageEsp};
use firmware::backend::{Capsule, Flasher, Verified};
use firmware::flash::{FlashOptions, Outcome, Payload, flash, results};
use firmware::inventory::{Device, InstalledVersion};
use firmware::journal::{Journal, Step};
use firmware::plan::{Action, PlanItem};
use qimg::NoProgress as Quiet;
use qimg::{FirmwareInfo, Sha256, VersionFormat};
use tests::{esp_range, formatted_esp, fsck, layout_disk, mdir, run, small_layout, tool};

#[test]
fn capsule_on_an_image_esp_is_clean_exact_and_removed_after_the_result() {
    if !(tool("fsck.vfat") && tool("mdir") && tool("mtype")) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (path, f, t) = layout_disk(d.path(), "node.raw", 256 << 20, &small_layout("qimg-demo"));
    let (start, len) = esp_range(&t);
    drop(formatted_esp(f, &t, 0x0bad_cafe));
    let vars = d.path().join("efivars");
    std::fs::create_dir(&vars).unwrap();
    std::fs::write(
        vars.join(format!("OsIndicationsSupported-{EFI_GLOBAL_GUID}")),
        [7, 0, 0, 0, 0x4, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
    let open = || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        ImageEsp::open(f, start, len).unwrap()
    };
    // Text, so `mtype` shows it byte for byte.
    let payload: Vec<u8> = (0..70_000u32)
        .map(|i| b"capsule payload line\n"[(i % 21) as usize])
        .collect();
    let journal = Journal::open(&d.path().join("journal")).unwrap();
    let item = PlanItem {
        component: "fw-bios".into(),
        component_id: "bios".into(),
        device: Some("esrt-bios".into()),
        installed: Some("1.0.0".into()),
        offered: "1.1.0".into(),
        action: Action::Flash,
    };
    {
        let mut esp = open();
        let mut c = Capsule {
            esp: &mut esp,
            efivars: vars.clone(),
            file: "fw-bios.cap".into(),
        };
        let p = Payload {
            name: "fw-bios".into(),
            info: FirmwareInfo {
                version_format: VersionFormat::Triplet,
                ..FirmwareInfo::new("bios", "1.1.0")
            },
            bytes: payload.clone(),
            sha256: Sha256([9; 32]),
        };
        let o = flash(
            &journal,
            &item,
            &p,
            &mut c,
            &FlashOptions {
                root: root.clone(),
                ..FlashOptions::default()
            },
            &Quiet,
        )
        .unwrap();
        assert_eq!(o, Outcome::Staged);
        assert_eq!(c.verify(&payload, "1.1.0"), Ok(Verified::AtReboot));
    }
    fsck(&path, start, len);
    let listing = mdir(&path, start, "EFI/UpdateCapsule");
    assert!(listing.to_lowercase().contains("fw-bios"), "{listing}");
    let out = run(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{start}", path.display()))
        .arg("::/EFI/UpdateCapsule/fw-bios.cap"));
    assert_eq!(out.stdout, payload);
    assert_eq!(
        std::fs::read(vars.join(format!("OsIndications-{EFI_GLOBAL_GUID}"))).unwrap(),
        [7, 0, 0, 0, 0x4, 0, 0, 0, 0, 0, 0, 0] // NV|BS|RT, FILE_CAPSULE_DELIVERY
    );

    // After the reboot the ESRT reports 1.1.0: activated, capsule removed.
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "boot-2\n").unwrap();
    let devices = [Device {
        component_id: "esrt-bios".into(),
        installed: InstalledVersion::Esrt {
            version: 0x0101_0000,
            last_attempt_version: 0x0101_0000,
            last_attempt_status: 0,
        },
        esrt_guid: None,
        vendor: None,
        model: None,
    }];
    {
        let mut esp = open();
        let r = results(&journal, &devices, &root, Some(&mut esp as &mut dyn Esp)).unwrap();
        assert_eq!(r[0].step, Step::Activated);
        assert!(!esp.exists("EFI/UpdateCapsule/fw-bios.cap").unwrap());
    }
    fsck(&path, start, len);
    assert_eq!(journal.get("fw-bios").unwrap().unwrap().staged_file, None);
}
