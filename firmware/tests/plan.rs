//! Inventory from a generated root and every plan outcome.

use std::path::Path;

use firmware::inventory::{CommandProbe, InstalledVersion, inventory};
use firmware::plan::{Action, PlanOptions, Refusal, plan};
use qimg::{Activation, DeviceMatch, FirmwareInfo, VersionFormat};

const GUID: &str = "6a2b1f7e-36c2-4b0e-9f2a-2b7c3a1d5e10";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, format!("{text}\n")).unwrap();
}

/// A node with a BIOS 1.2.3, a capsule-updatable device at ESRT 0x01020304 and an NVMe drive.
fn node() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "sys/class/dmi/id/bios_version", "1.2.3");
    write(r, "sys/class/dmi/id/bios_vendor", "ACME");
    write(r, "sys/class/dmi/id/product_name", "Q-24T");
    let e = "sys/firmware/efi/esrt/entries/entry0";
    write(r, &format!("{e}/fw_class"), &GUID.to_uppercase());
    write(r, &format!("{e}/fw_version"), &0x0102_0304u32.to_string());
    write(r, &format!("{e}/last_attempt_version"), "0");
    write(r, &format!("{e}/last_attempt_status"), "0");
    write(r, "sys/class/nvme/nvme0/firmware_rev", "GXA7801Q");
    write(r, "sys/class/nvme/nvme0/model", "SAMSUNG MZQL2");
    d
}

#[test]
fn inventory_reads_every_source() {
    let d = node();
    let probes = [CommandProbe {
        component_id: "bmc".into(),
        argv: vec!["sh".into(), "-c".into(), "echo ' 4.5.6 '".into()],
    }];
    let inv = inventory(d.path(), &probes).unwrap();
    let ids: Vec<&str> = inv.iter().map(|x| x.component_id.as_str()).collect();
    assert_eq!(ids, ["bios", &format!("esrt:{GUID}"), "nvme0", "bmc"]);
    assert_eq!(inv[0].vendor.as_deref(), Some("ACME"));
    assert!(matches!(
        inv[1].installed,
        InstalledVersion::Esrt {
            version: 0x0102_0304,
            ..
        }
    ));
    assert_eq!(inv[1].esrt_guid.as_deref(), Some(GUID));
    assert_eq!(inv[2].model.as_deref(), Some("SAMSUNG MZQL2"));
    assert_eq!(
        inv[3].installed,
        InstalledVersion::Text {
            version: "4.5.6".into()
        }
    );
    // A failing probe is an error naming the device.
    let bad = [CommandProbe {
        component_id: "nic0".into(),
        argv: vec!["false".into()],
    }];
    let e = inventory(d.path(), &bad).unwrap_err().to_string();
    assert!(e.contains("nic0"), "{e}");
    // An unreadable number is an error naming the file.
    write(
        d.path(),
        "sys/firmware/efi/esrt/entries/entry0/fw_version",
        "x",
    );
    assert!(
        inventory(d.path(), &[])
            .unwrap_err()
            .to_string()
            .contains("fw_version")
    );
    // An empty root has nothing.
    assert!(
        inventory(tempfile::tempdir().unwrap().path(), &[])
            .unwrap()
            .is_empty()
    );
}

fn fw(id: &str, v: &str, fmt: VersionFormat) -> FirmwareInfo {
    FirmwareInfo {
        version_format: fmt,
        ..FirmwareInfo::new(id, v)
    }
}

fn action(offer: &FirmwareInfo, size: u64, o: &PlanOptions) -> Action {
    let d = node();
    let inv = inventory(d.path(), &[]).unwrap();
    plan(&inv, &[("fw-x", offer, size)], o).remove(0).action
}

fn refusal(offer: &FirmwareInfo, o: &PlanOptions) -> Refusal {
    match action(offer, 1000, o) {
        Action::Refuse { why } => why,
        other => panic!("{other:?}"),
    }
}

#[test]
fn skip_flash_and_every_refusal() {
    use VersionFormat::*;
    let o = PlanOptions::default();
    assert_eq!(action(&fw("bios", "1.2.4", Triplet), 1, &o), Action::Flash);
    assert_eq!(action(&fw("bios", "1.2.3", Triplet), 1, &o), Action::Skip);
    let reinstall = PlanOptions {
        allow_reinstall: true,
        ..PlanOptions::default()
    };
    assert_eq!(
        action(&fw("bios", "1.2.3", Triplet), 1, &reinstall),
        Action::Flash
    );
    assert!(matches!(
        refusal(&fw("bios", "1.2.2", Triplet), &o),
        Refusal::Downgrade { .. }
    ));
    let older = PlanOptions {
        allow_older: true,
        ..PlanOptions::default()
    };
    assert_eq!(
        action(&fw("bios", "1.2.2", Triplet), 1, &older),
        Action::Flash
    );
    assert!(matches!(
        refusal(&fw("bios", "1.2.3.0", Quad), &o),
        Refusal::FormatMismatch { .. }
    ));
    assert_eq!(refusal(&fw("nic9", "1", Plain), &o), Refusal::NoDevice);
    // Plain versions only compare for equality: a different one is an update.
    assert_eq!(
        action(&fw("nvme0", "GXA7802Q", Plain), 1, &o),
        Action::Flash
    );
    assert_eq!(action(&fw("nvme0", "GXA7801Q", Plain), 1, &o), Action::Skip);
    let mut low = fw("bios", "1.3.0", Triplet);
    low.lowest_installed = Some("1.2.5".into());
    assert!(matches!(refusal(&low, &o), Refusal::BelowLowest { .. }));
    let mut high = fw("bios", "1.3.0", Triplet);
    high.highest_installed = Some("1.2.0".into());
    assert!(matches!(refusal(&high, &o), Refusal::AboveHighest { .. }));
    // Firmware the fallback slot's platform cannot run with.
    let mut plat = fw("bios", "1.3.0", Triplet);
    plat.compatible_platforms = vec!["7.1.0".parse().unwrap()];
    let fb = PlanOptions {
        fallback_platform: Some("7.0.0".parse().unwrap()),
        ..PlanOptions::default()
    };
    assert_eq!(
        refusal(&plat, &fb),
        Refusal::IncompatibleFallback {
            platform: "7.0.0".into()
        }
    );
    let fb_ok = PlanOptions {
        fallback_platform: Some("7.1.0".parse().unwrap()),
        ..PlanOptions::default()
    };
    assert_eq!(action(&plat, 1, &fb_ok), Action::Flash);
}

#[test]
fn capsules_match_by_esrt_guid_and_need_twice_their_size_on_the_esp() {
    let mut cap = FirmwareInfo {
        version_format: VersionFormat::Quad,
        device: DeviceMatch {
            esrt_guid: Some(GUID.into()),
            ..DeviceMatch::default()
        },
        activation: Activation::Reboot,
        ..FirmwareInfo::new("system-firmware", "1.2.3.5")
    };
    let d = node();
    let inv = inventory(d.path(), &[]).unwrap();
    let small = PlanOptions {
        esp_free: Some(1500),
        ..PlanOptions::default()
    };
    let item = plan(&inv, &[("fw-sys", &cap, 1000)], &small).remove(0);
    assert_eq!(
        item.installed.as_deref(),
        Some("1.2.3.4"),
        "ESRT u32 rendered as quad"
    );
    assert_eq!(item.device.as_deref(), Some(&*format!("esrt:{GUID}")));
    assert_eq!(
        item.action,
        Action::Refuse {
            why: Refusal::EspTooSmall {
                needed: 2000,
                free: 1500
            }
        }
    );
    let roomy = PlanOptions {
        esp_free: Some(2000),
        ..PlanOptions::default()
    };
    assert_eq!(
        plan(&inv, &[("fw-sys", &cap, 1000)], &roomy)
            .remove(0)
            .action,
        Action::Flash
    );
    cap.version = "1.2.3.4".into();
    assert_eq!(
        plan(&inv, &[("fw-sys", &cap, 1000)], &roomy)
            .remove(0)
            .action,
        Action::Skip
    );
    // The plan's JSON is tagged and parses back.
    let json = serde_json::to_string(&plan(&inv, &[("fw-sys", &cap, 1000)], &small)).unwrap();
    let back: Vec<firmware::plan::PlanItem> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan(&inv, &[("fw-sys", &cap, 1000)], &small));
}

#[test]
fn two_payloads_for_one_device_flash_only_the_first() {
    let d = node();
    let inv = inventory(d.path(), &[]).unwrap();
    let by_id = fw("bios", "1.2.4", VersionFormat::Triplet);
    let by_vendor = FirmwareInfo {
        device: DeviceMatch {
            vendor: Some("ACME".into()),
            ..DeviceMatch::default()
        },
        ..fw("bios-acme", "1.2.5", VersionFormat::Triplet)
    };
    let items = plan(
        &inv,
        &[("fw-a", &by_id, 1), ("fw-b", &by_vendor, 1)],
        &PlanOptions::default(),
    );
    assert_eq!(items[0].action, Action::Flash);
    assert_eq!(items[1].device.as_deref(), Some("bios"));
    assert_eq!(
        items[1].action,
        Action::Refuse {
            why: Refusal::DeviceTaken { by: "fw-a".into() }
        }
    );
    // A skipped payload does not take the device.
    let same = fw("bios", "1.2.3", VersionFormat::Triplet);
    let items = plan(
        &inv,
        &[("fw-a", &same, 1), ("fw-b", &by_vendor, 1)],
        &PlanOptions::default(),
    );
    assert_eq!(items[0].action, Action::Skip);
    assert_eq!(items[1].action, Action::Flash);
}
