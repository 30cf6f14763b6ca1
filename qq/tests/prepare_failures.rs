//! Bundles a node must refuse: each gives UPGRADE_ERROR_PREPARE_FAILED with its
//! cause, exit code 1, and leaves the running slot, its entry and the running
//! container as they were.

mod common;

use bootctl::layout::Slot;
use common::*;

fn refused(n: &SimNode, bundle: &std::path::Path, cause: &str) {
    let disk = n.disk();
    let o = n.upgrade(bundle);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_PREPARE_FAILED", "{s}");
    let msg = s["error_message"].as_str().unwrap();
    assert!(msg.contains(cause), "{cause:?} not in {msg:?}");
    assert!(stderr(&o).contains(cause), "{}", stderr(&o));
    assert_eq!(n.disk(), disk, "refused before anything was written");
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
}

#[test]
fn bad_bundles_are_refused_with_their_cause_and_nothing_written() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let d = tempfile::tempdir().unwrap();
    let k = key(1);
    let cloud = build_bundle(
        d.path(),
        "cloud",
        &Rel {
            target: "cloud",
            ..Rel::new("7.1.0", "7.1")
        },
        &k,
    );
    refused(
        &n,
        &cloud,
        "the bundle is for cloud nodes and this node is on-prem",
    );
    let model = build_bundle(
        d.path(),
        "model",
        &Rel {
            models: "\"q-24t\"",
            ..Rel::new("7.1.0", "7.1")
        },
        &k,
    );
    refused(
        &n,
        &model,
        "hardware model demo-node-1 is not supported by 7.1.0",
    );
    let other_key = build_bundle(d.path(), "key", &Rel::new("7.1.0", "7.1"), &key(2));
    refused(&n, &other_key, "no signature by a trusted key");
    let old = build_bundle(
        d.path(),
        "old",
        &Rel {
            min_installed: "6.0",
            ..Rel::new("6.9.0", "6.9")
        },
        &k,
    );
    refused(
        &n,
        &old,
        "6.9.0 is older than the installed 7.0.0: downgrades are refused",
    );
    let too_new = build_bundle(
        d.path(),
        "too-new",
        &Rel {
            min_installed: "7.0.5",
            ..Rel::new("7.2.0", "7.2")
        },
        &k,
    );
    refused(&n, &too_new, "7.2.0 must be installed over 7.0.5 or newer");
    refused(&n, &b.factory, "7.0.0 is already installed");
    let missing = d.path().join("missing.qimg");
    refused(&n, &missing, "cannot be opened: No such file");
}

#[test]
fn a_tampered_payload_fails_mid_write_and_the_slot_is_reset() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let mut bytes = std::fs::read(&b.platform).unwrap();
    let members = tests::Members::parse(&bytes);
    let m = members
        .0
        .iter()
        .find(|m| m.header.name.starts_with("payload/"))
        .unwrap();
    // A byte near the end of the platform root: most of it streams into the slot first.
    let at = m.offset as usize + 512 + m.data.len() - 100;
    bytes[at] ^= 0x55;
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("tampered.qimg");
    std::fs::write(&bad, &bytes).unwrap();

    let slot_a = n.slot_bytes(Slot::A);
    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["error_state"], "UPGRADE_ERROR_PREPARE_FAILED", "{s}");
    assert!(
        s["error_message"]
            .as_str()
            .unwrap()
            .contains("sha256 of the stored member"),
        "{s}"
    );
    assert!(
        s["details"]
            .as_str()
            .unwrap()
            .contains("slot b reset to _empty"),
        "{s}"
    );
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
    assert_eq!(n.slot_label(Slot::B), "_empty");
    assert_eq!(n.entries(), vec!["qimg-demo-a-7.0.efi".to_string()]);
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert!(!n.node.config.state.join("containers/7.1.0").exists());
    // The node is fine for the real bundle afterwards.
    let o = n.upgrade(&b.platform);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
}
