//! A damaged or hand-edited `upgrade.json`: every `qq` command says which field is
//! wrong (exit 2), none panics, and nothing on the node changes.

mod common;

use bootctl::layout::Slot;
use common::*;

/// The record of a platform commit waiting for its reboot, as the engine writes it
/// (made from the typed state, so it is the wire form the engine itself produces).
fn committing() -> serde_json::Value {
    use upgrade::state::{BootId, CommitStep, Mode, NodeState, Plan, Release, Stage};
    let rel = |v: &str, p: &str, slot| Release {
        version: v.parse().unwrap(),
        platform_version: p.parse().unwrap(),
        slot,
    };
    let st = NodeState {
        stage: Stage::Committing(
            Plan {
                mode: Mode::Platform,
                from: rel("7.0.0", "7.0", Slot::A),
                to: rel("7.1.0", "7.1", Slot::B),
            },
            CommitStep::Reboot {
                boot_id: BootId("sim-boot-0".into()),
                kept: None,
            },
        ),
        ..NodeState::default()
    };
    serde_json::to_value(upgrade::wire::Record::from(&st)).unwrap()
}

#[test]
fn a_damaged_record_is_reported_by_field_and_changes_nothing() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let record = n.node.config.state.join("upgrade.json");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = committing();
        f(&mut v);
        serde_json::to_vec_pretty(&v).unwrap()
    };
    let full = edit(&|_| {});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            edit(&|v| v["to"] = serde_json::Value::Null),
            "damaged: to: missing (state UPGRADE_COMMITTING needs it)",
        ),
        (
            edit(&|v| {
                v.as_object_mut().unwrap().remove("boot_id");
            }),
            "damaged: boot_id: missing",
        ),
        (
            edit(&|v| v["to"]["slot"] = "c".into()),
            "damaged: to.slot: \"c\" is not a slot",
        ),
        (
            edit(&|v| v["from"]["version"] = 7.into()),
            "damaged: from.version: invalid type",
        ),
        (
            edit(&|v| v["step"] = "swap".into()),
            "damaged: step: \"swap\" is not a step of a platform commit",
        ),
        (
            edit(&|v| v["to"]["slot"] = "a".into()),
            "damaged: to.slot: a platform upgrade cannot install into the running slot a",
        ),
        (
            edit(&|v| v["state"] = "UPGRADE_SOMEWHERE".into()),
            "damaged: state: unknown variant",
        ),
        (full[..full.len() / 2].to_vec(), "damaged: "),
        (b"".to_vec(), "damaged: "),
    ];
    for (bytes, want) in cases {
        std::fs::write(&record, &bytes).unwrap();
        let disk = n.disk();
        for args in [
            vec!["upgrade_status"],
            vec!["upgrade_cluster", "commit"],
            vec!["upgrade_cluster", "--path", b.platform.to_str().unwrap()],
            vec!["boot_check"],
        ] {
            let o = n.qq(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: {want:?} not in {err}");
            assert!(err.contains("upgrade.json"), "{err}");
            assert_eq!(
                std::fs::read(&record).unwrap(),
                bytes,
                "{args:?} rewrote the record"
            );
            assert_eq!(n.disk(), disk, "{args:?} changed the disk");
        }
        assert_eq!(n.container().as_deref(), Some("7.0.0"));
    }
    // Repaired by hand (the record removed), the node upgrades as usual.
    std::fs::remove_file(&record).unwrap();
    let o = n.upgrade(&b.platform);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
}
