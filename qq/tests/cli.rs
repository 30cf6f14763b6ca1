//! `qq` around the flows: the mode question, firmware during prepare, the boot
//! check of an ordinary boot, and the nspawn runtime against a fake systemctl.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use upgrade::container::{Nspawn, Runtime};

#[test]
fn upgrade_mode_answers_instant_or_platform_and_why() {
    if !have_boot_files() {
        return;
    }
    let b = bundles();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_qq"))
        .env_remove("QQ_NODE")
        .args(["upgrade_mode", "--from", "7.0.0", "--to"])
        .arg(&b.platform)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["schema"], "qq.upgrade_mode/1");
    assert_eq!(v["mode"], "platform");
    assert_eq!(v["signature"], "not checked (no node keys)");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("crosses a platform change"),
        "{v}"
    );

    let n = sim_node(&b.factory);
    let o = n.qq(&["upgrade_mode", "--to", b.instant.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        (v["mode"].as_str(), v["signature"].as_str()),
        (Some("instant"), Some("verified"))
    );
    assert_eq!(v["from"], "7.0.0 (platform 7.0)");
    let o = n.qq(&["upgrade_mode", "--to", b.platform.to_str().unwrap()]);
    assert_eq!(json(&o)["mode"], "platform");
    // The status of an untouched node parses back into the documented type.
    let s: upgrade::state::Status =
        serde_json::from_slice(&n.qq(&["upgrade_status"]).stdout).unwrap();
    assert_eq!(s.schema, upgrade::state::STATUS_SCHEMA);
    assert_eq!(s.state, upgrade::state::Phase::Idle);
}

#[test]
fn firmware_is_flashed_during_prepare_and_refusals_stop_it_before_any_write() {
    if !have_boot_files() {
        return;
    }
    let b = bundles();
    let node_fw = |installed: &str| {
        let devdir = tempfile::tempdir().unwrap();
        std::fs::write(devdir.path().join("version"), installed).unwrap();
        std::fs::write(devdir.path().join("contents"), b"old").unwrap();
        let devices = serde_json::json!({
            "bmc": {
                "probe": ["cat", devdir.path().join("version")],
                "backend": {"kind": "simulated", "dir": devdir.path()}
            }
        });
        (sim_node_with(&b.factory, Some(devices)), devdir)
    };
    let d = tempfile::tempdir().unwrap();
    let bundle = build_bundle(
        d.path(),
        "fw",
        &Rel {
            bmc: Some("2.14.1"),
            ..Rel::new("7.1.0", "7.1")
        },
        &key(1),
    );
    let (n, dev) = node_fw("2.13.0");
    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        bundle.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("flashing firmware"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dev.path().join("contents")).unwrap(),
        bmc_payload("2.14.1")
    );
    assert_eq!(json(&o)["state"], "UPGRADE_PREPARED");

    // A device already newer than offered: refused before the slot is touched.
    let (n, dev) = node_fw("3.0.0");
    let disk = n.disk();
    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["error_state"], "UPGRADE_ERROR_PREPARE_FAILED");
    assert!(
        s["error_message"]
            .as_str()
            .unwrap()
            .contains("firmware fw-bmc: 2.14.1 is older than the installed 3.0.0"),
        "{s}"
    );
    assert!(
        !s["error_message"]
            .as_str()
            .unwrap()
            .contains("--allow-older"),
        "{s}"
    );
    assert_eq!(n.disk(), disk);
    assert_eq!(std::fs::read(dev.path().join("contents")).unwrap(), b"old");
}

#[test]
fn boot_check_after_an_ordinary_boot_starts_the_active_container() {
    let Some(n) = factory_node() else { return };
    n.agent().machine().reboot().unwrap();
    upgrade::sim::boot_firmware(&n.node).unwrap();
    assert_eq!(n.container(), None, "a reboot stops the container");
    let o = n.qq(&["boot_check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_IDLE");
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
}

#[test]
fn boot_check_that_finds_a_rollback_records_it_starts_the_old_container_and_succeeds() {
    // The boot path found the new slot's tries run out and the firmware back on
    // the old slot: it records the rollback, starts the old container and has
    // done its job (exit 0). It exited 1, so `qimg-boot-check.service` failed on
    // every rolled-back node, and systemd killed what it had started with it: the
    // process runtime's container (a real cluster under QEMU ran on without its
    // storage service until its rolling reboot's data-safety gate waited forever).
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        b.panic.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The commit asks for its reboot; the firmware's tries run out on the
    // panicking platform and it boots slot A again.
    let asked = n.agent().commit(&qimg::NoProgress).unwrap();
    assert!(
        matches!(asked, upgrade::CommitOutcome::Rebooting { .. }),
        "{asked:?}"
    );
    upgrade::sim::boot_firmware(&n.node).unwrap();
    assert_eq!(n.container(), None, "the reboot stopped the container");
    let o = n.qq(&["boot_check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 tries exhausted"), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["error_state"], "UPGRADE_ERROR_ROLLED_BACK", "{s}");
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert_eq!(n.running().slot, bootctl::layout::Slot::A);
}

const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
# A stand-in for systemctl: records calls, keeps one unit's state next to itself.
d=$(dirname "$0")
echo "$*" >> "$d/calls"
case "$1" in
  start) echo "$2" > "$d/active" ;;
  stop) rm -f "$d/active" ;;
  is-active) if [ "$(cat "$d/active" 2>/dev/null)" = "$2" ]; then echo active; else echo inactive; exit 3; fi ;;
  list-units) [ -f "$d/active" ] && echo "$(cat "$d/active") loaded active running Product container" ;;
esac
exit 0
"#;

#[test]
fn the_nspawn_runtime_drives_the_template_unit() {
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("systemctl");
    std::fs::write(&fake, FAKE_SYSTEMCTL).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rt = Nspawn { systemctl: fake };
    let v = |s: &str| s.parse::<qimg::Version>().unwrap();
    assert_eq!(rt.running().unwrap(), None);
    rt.start(&v("7.1.0"), Path::new("/var/lib/qimg/containers/7.1.0"))
        .unwrap();
    rt.wait_healthy(&v("7.1.0"), Duration::from_secs(2))
        .unwrap();
    assert_eq!(rt.running().unwrap(), Some(v("7.1.0")));
    let err = rt
        .wait_healthy(&v("7.2.0"), Duration::from_secs(2))
        .unwrap_err();
    let text = upgrade::chain(&err);
    assert!(text.contains("unit is inactive"), "{text}");
    rt.stop().unwrap();
    assert_eq!(rt.running().unwrap(), None);
    let calls = std::fs::read_to_string(d.path().join("calls")).unwrap();
    assert_eq!(
        calls
            .lines()
            .filter(|l| !l.starts_with("list-units"))
            .collect::<Vec<_>>(),
        vec![
            "start qimg-container@7.1.0.service",
            "is-active qimg-container@7.1.0.service",
            "is-active qimg-container@7.2.0.service",
            "stop qimg-container@*.service",
        ]
    );
}

#[test]
fn on_failure_is_checked_and_belongs_to_a_cluster() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let path = b.platform.to_str().unwrap();
    let o = n.qq(&["upgrade_cluster", "--path", path, "--on-failure", "ignore"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expected rollback or stop"),
        "{}",
        stderr(&o)
    );
    let disk = n.disk();
    for extra in [
        ["--on-failure", "stop"],
        ["--override", "free_space"],
        ["--auto-finalize-after", "0"],
    ] {
        let o = n.qq(&[&["upgrade_cluster", "--path", path][..], &extra].concat());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(
                "--on-failure, --override, --canary and --auto-finalize-after apply to a cluster"
            ),
            "{}",
            stderr(&o)
        );
    }
    // A check that does not exist: its name refused, the names listed.
    let o = n.qq(&["upgrade_cluster", "--path", path, "--override", "space"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("mixed_releases"), "{}", stderr(&o));
    assert_eq!(n.disk(), disk, "a refused request changes nothing");
    assert_eq!(n.status()["state"], "UPGRADE_IDLE");
}

#[test]
fn factory_install_gives_a_fresh_node_its_container_once_and_only_for_its_platform() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    // A node that runs a container is refused, and keeps it.
    let o = n.qq(&["factory_install", "--path", b.factory.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a refusal: {}", stderr(&o));
    assert!(stderr(&o).contains("already runs 7.0.0"), "{}", stderr(&o));
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    // A fresh disk: no container installed and none running.
    n.agent().runtime().stop().unwrap();
    let state = &n.node.config.state;
    std::fs::remove_dir_all(state.join("containers")).unwrap();
    let o = n.qq(&["factory_install", "--path", b.platform.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a refusal: {}", stderr(&o));
    assert!(
        stderr(&o).contains("the bundle's platform is 7.1 and the node booted platform 7.0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(n.container(), None, "a refused install starts nothing");
    let o = n.qq(&["factory_install", "--path", b.factory.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "installed 7.0.0");
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
}
