//! Whole upgrades of simulated nodes through the `qq` binary: instant, platform
//! (healthy, panicking, unhealthy), bad bundles, and the state afterwards.

mod common;

use bootctl::layout::Slot;
use common::*;

#[test]
fn instant_upgrade_swaps_the_container_and_touches_no_slot() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    let s = n.status();
    assert_eq!(s["state"], "UPGRADE_IDLE");
    let disk = n.disk();
    let o = n.upgrade(&b.instant);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_COMMITTED", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_NO_ERROR");
    assert_eq!(s["mode"], "instant");
    let downtime = s["downtime_ms"].as_u64().unwrap();
    assert!(downtime < 30_000, "{downtime}");
    assert!(
        s["details"].as_str().unwrap().contains("ms of downtime"),
        "{s}"
    );
    assert_eq!(n.container().as_deref(), Some("7.0.1"));
    assert_eq!(
        n.disk(),
        disk,
        "an instant upgrade writes nothing to the disk"
    );
    assert_eq!(n.version().as_deref(), Some("7.0.1"));
    assert_eq!(s, n.status());
}

#[test]
fn a_committed_instant_upgrade_reverted_runs_the_previous_container_and_says_so() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let o = n.upgrade(&b.instant);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(n.container().as_deref(), Some("7.0.1"));
    let agent = n.agent();
    let o = agent.revert("node 3 failed", &qimg::NoProgress).unwrap();
    assert_eq!(
        o,
        upgrade::CommitOutcome::RolledBack {
            reason: "rolled back to 7.0.0: node 3 failed".into()
        }
    );
    assert!(
        !agent.machine().reboot_pending(),
        "no reboot for a container"
    );
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    let s = n.status();
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_ROLLED_BACK", "{s}");
}

#[test]
fn platform_upgrade_prepares_without_changing_what_boots_then_reboots_and_blesses() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let slot_a = n.slot_bytes(Slot::A);
    let entries_before = n.entries();
    assert_eq!(entries_before, vec!["qimg-demo-a-7.0.efi".to_string()]);

    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        b.platform.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_PREPARED", "{s}");
    assert_eq!(s["mode"], "platform");
    // Prepared: slot A and its entry untouched, B written and labelled, its UKI
    // staged where the loader does not look; the loader would still boot A.
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
    assert_eq!(n.slot_label(Slot::B), "qimg-demo_7.1");
    assert_eq!(
        n.entries(),
        vec![
            "qimg-demo-a-7.0.efi".to_string(),
            "qimg-demo-b-7.1.efi.staged".to_string()
        ]
    );
    let mut io = n.node.open().unwrap();
    let (found, sel) =
        bootctl::entries::next(io.esp.as_mut(), PRODUCT, &Default::default()).unwrap();
    assert_eq!(found[sel.chosen.unwrap()].entry.file, "qimg-demo-a-7.0.efi");
    drop(io);
    assert_eq!(
        n.container().as_deref(),
        Some("7.0.0"),
        "prepare has no client impact"
    );

    let o = n.qq(&["upgrade_cluster", "commit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_COMMITTED", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_NO_ERROR");
    let r = n.running();
    assert_eq!(
        (r.slot, r.platform_version.to_string().as_str()),
        (Slot::B, "7.1")
    );
    assert_eq!(
        r.version.as_ref().map(ToString::to_string).as_deref(),
        Some("7.1.0")
    );
    assert_eq!(n.container().as_deref(), Some("7.1.0"));
    // Blessed (uncounted) B, and A kept as the fallback.
    assert_eq!(
        n.entries(),
        vec![
            "qimg-demo-a-7.0.efi".to_string(),
            "qimg-demo-b-7.1.efi".to_string()
        ]
    );
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
}

#[test]
fn a_committed_platform_upgrade_reverted_boots_the_previous_slot_again() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let slot_a = n.slot_bytes(Slot::A);
    let o = n.upgrade(&b.platform);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(n.running().slot, Slot::B);
    let agent = n.agent();
    let o = agent.revert("node 2 fell back", &qimg::NoProgress).unwrap();
    assert!(
        matches!(o, upgrade::CommitOutcome::Rebooting { .. }),
        "{o:?}"
    );
    // Asked to reboot; still serving the new release until it does.
    let st = agent.state().unwrap();
    assert!(
        matches!(
            st.stage,
            upgrade::state::Stage::Committing(_, upgrade::state::CommitStep::Fallback { .. })
        ),
        "{st:?}"
    );
    assert!(upgrade::sim::reboot_due(&n.node));
    assert!(agent.machine().reboot_pending());
    assert_eq!(
        n.entries(),
        vec![
            "qimg-demo-a-7.0.efi".to_string(),
            "qimg-demo-b-7.1+0-0.efi".to_string()
        ],
        "the new entry is marked bad before the reboot"
    );
    agent.run_boots().unwrap();
    let r = n.running();
    assert_eq!(
        (
            r.slot,
            r.version.as_ref().map(ToString::to_string).as_deref()
        ),
        (Slot::A, Some("7.0.0"))
    );
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert_eq!(n.slot_bytes(Slot::A), slot_a, "slot A untouched");
    let s = n.status();
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_ROLLED_BACK", "{s}");
    assert_eq!(
        s["error_message"],
        "slot b: rolled back with the cluster: node 2 fell back, booted slot a 7.0.0",
        "{s}"
    );
    // Nothing committed any more: a second revert changes nothing.
    let disk = n.disk();
    let o = agent.revert("again", &qimg::NoProgress).unwrap();
    assert!(
        matches!(&o, upgrade::CommitOutcome::RolledBack { reason } if reason.starts_with("nothing committed")),
        "{o:?}"
    );
    assert_eq!(n.disk(), disk);
}

#[test]
fn a_platform_that_panics_falls_back_after_its_tries() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let slot_a = n.slot_bytes(Slot::A);
    // An older crash's archived log, dated a day ahead (a wall-clock step): it was
    // there before the commit's reboot, so it is not the reason.
    let old = n.node.config.pstore.join("1");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("dmesg.txt"),
        "<0>[ 1.0] Kernel panic - not syncing: an older crash\n",
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(old.join("dmesg.txt"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(86400))
        .unwrap();
    let o = n.upgrade(&b.panic);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_ROLLED_BACK");
    // Why: the panic's kernel log, archived after the reboot was asked for.
    assert_eq!(
        s["error_message"],
        "slot b: 3 tries exhausted; the kernel panicked: simulated platform panic \
         (etc/qimg/sim-boot: the platform in slot b panics), booted slot a 7.0.0",
        "{s}"
    );
    let r = n.running();
    assert_eq!(
        (
            r.slot,
            r.version.as_ref().map(ToString::to_string).as_deref()
        ),
        (Slot::A, Some("7.0.0"))
    );
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
    assert_eq!(
        n.entries(),
        vec![
            "qimg-demo-a-7.0.efi".to_string(),
            "qimg-demo-b-7.1+0-3.efi".to_string()
        ]
    );
}

#[test]
fn an_unhealthy_platform_is_marked_bad_and_the_node_falls_back_at_once() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let o = n.upgrade(&b.unhealthy_platform);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["error_state"], "UPGRADE_ERROR_ROLLED_BACK", "{s}");
    let msg = s["error_message"].as_str().unwrap();
    assert!(
        msg.starts_with("slot b: health check failed: platform in slot b reports unhealthy")
            && msg.ends_with("booted slot a 7.0.0"),
        "{msg}"
    );
    // One try, then marked bad by the health gate.
    assert!(
        n.entries().contains(&"qimg-demo-b-7.1+0-1.efi".to_string()),
        "{:?}",
        n.entries()
    );
    assert_eq!(n.running().slot, Slot::A);
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
}

#[test]
fn an_unhealthy_container_is_rolled_back_to_the_old_one() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let o = n.upgrade(&b.bad_container);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_COMMIT_FAILED");
    let msg = s["error_message"].as_str().unwrap();
    assert!(
        msg.contains("database migration failed") && msg.contains("rolled back to container 7.0.0"),
        "{msg}"
    );
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert_eq!(n.version().as_deref(), Some("7.0.0"));
}

#[test]
fn consecutive_platform_upgrades_alternate_slots_and_keep_one_fallback() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let d = tempfile::tempdir().unwrap();
    let next = build_bundle(d.path(), "7.2.0", &Rel::new("7.2.0", "7.2"), &key(1));
    let o = n.upgrade(&b.platform);
    assert!(o.status.success(), "{}", stderr(&o));
    let slot_b = n.slot_bytes(Slot::B);
    let o = n.upgrade(&next);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
    let r = n.running();
    assert_eq!(
        (r.slot, r.platform_version.to_string().as_str()),
        (Slot::A, "7.2")
    );
    assert_eq!(n.container().as_deref(), Some("7.2.0"));
    assert_eq!(
        n.slot_bytes(Slot::B),
        slot_b,
        "the fallback slot was not touched"
    );
    assert_eq!(
        n.entries(),
        vec![
            "qimg-demo-a-7.2.efi".to_string(),
            "qimg-demo-b-7.1.efi".to_string()
        ]
    );
    assert_eq!(n.slot_label(Slot::A), "qimg-demo_7.2");
    // Containers: the active one and the one before it; older ones were pruned.
    let mut kept: Vec<String> = std::fs::read_dir(n.node.config.state.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, vec!["7.1.0", "7.2.0", "installed.json"]);
}
