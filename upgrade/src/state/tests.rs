use super::*;
use crate::error::Error;
use crate::store::parse;
use proptest::prelude::*;

fn rel(v: &str, slot: Slot) -> Release {
    Release {
        version: v.parse().unwrap(),
        platform_version: "7.0".parse().unwrap(),
        slot,
    }
}

fn platform() -> Plan {
    Plan {
        mode: Mode::Platform,
        from: rel("7.0", Slot::A),
        to: rel("7.1", Slot::B),
    }
}

#[test]
fn status_has_the_reference_fields_in_order() {
    let s = NodeState {
        stage: Stage::Preparing(PrepareStep::Verify),
        settings: Settings {
            install_path: "/upgrade/qinstall.qimg".into(),
            ..Settings::default()
        },
        ..NodeState::default()
    };
    let text = serde_json::to_string_pretty(&status_of(&s, None, 0)).unwrap();
    let order: Vec<usize> = [
        "\"install_path\"",
        "\"state\"",
        "\"details\"",
        "\"error_message\"",
        "\"error_state\"",
        "\"is_blocked\"",
        "\"blocked_reason\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    let back: Status = serde_json::from_str(&text).unwrap();
    assert_eq!(back, status_of(&s, None, 0));
    assert!(text.contains("\"state\": \"UPGRADE_PREPARING\""));
    assert!(text.contains("\"error_state\": \"UPGRADE_ERROR_NO_ERROR\""));
    assert!(
        text.contains("(interrupted: no qq process runs it"),
        "{text}"
    );
}

#[test]
fn blocked_by_the_lock_or_until_a_time() {
    let s = NodeState {
        blocked: Some(Blocked {
            reason: "settle".into(),
            until: Some(100),
        }),
        ..NodeState::default()
    };
    assert!(status_of(&s, None, 99).is_blocked);
    assert_eq!(status_of(&s, None, 99).blocked_reason, "settle");
    assert!(!status_of(&s, None, 100).is_blocked);
    let st = status_of(
        &s,
        Some(Block::Locked {
            pid: Some("7".into()),
        }),
        200,
    );
    assert!(
        st.is_blocked && st.blocked_reason.contains("pid 7"),
        "{st:?}"
    );
}

/// The wire form of a record that is correct: a platform commit waiting for its reboot.
fn good() -> serde_json::Value {
    serde_json::json!({
        "schema": "qq.state/1",
        "state": "UPGRADE_COMMITTING",
        "error_state": "UPGRADE_ERROR_NO_ERROR",
        "error_message": "",
        "details": "rebooting",
        "install_path": "/u/b.qimg",
        "blocked_reason": "",
        "blocked_until": null,
        "step": "reboot",
        "mode": "platform",
        "rolling": false,
        "from": {"version": "7.0", "platform_version": "7.0", "slot": "a"},
        "to": {"version": "7.1", "platform_version": "7.1", "slot": "b"},
        "boot_id": "b-1",
        "fallback_reason": null,
        "kept_logs": ["200", "100"],
        "downtime_ms": null,
        "last_commit": null,
        "updated_at": 5
    })
}

fn damaged(edit: impl FnOnce(&mut serde_json::Value)) -> (String, String) {
    let mut v = good();
    edit(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    match parse(Path::new("/s/upgrade.json"), &bytes) {
        Err(e @ Error::StateDamaged { .. }) => {
            let Error::StateDamaged { field, .. } = &e else {
                unreachable!()
            };
            (field.clone(), crate::chain(&e))
        }
        other => panic!("{v}: expected StateDamaged, got {other:?}"),
    }
}

use std::path::Path;

#[test]
fn the_good_record_parses_into_its_stage() {
    let s = parse(Path::new("x"), &serde_json::to_vec(&good()).unwrap()).unwrap();
    assert_eq!(
        s.stage,
        Stage::Committing(
            Plan {
                mode: Mode::Platform,
                from: Release {
                    version: "7.0".parse().unwrap(),
                    platform_version: "7.0".parse().unwrap(),
                    slot: Slot::A
                },
                to: Release {
                    version: "7.1".parse().unwrap(),
                    platform_version: "7.1".parse().unwrap(),
                    slot: Slot::B
                },
            },
            CommitStep::Reboot {
                boot_id: BootId("b-1".into()),
                kept: Some(KeptLogs(["100".to_owned(), "200".to_owned()].into())),
            }
        )
    );
    // And back to the same bytes' meaning.
    let again = parse(
        Path::new("x"),
        &serde_json::to_vec(&Record::from(&s)).unwrap(),
    )
    .unwrap();
    assert_eq!(again, s);
}

#[test]
fn a_reboot_record_without_kept_logs_reads_as_not_noted() {
    let mut v = good();
    v.as_object_mut().unwrap().remove("kept_logs");
    let s = parse(Path::new("x"), &serde_json::to_vec(&v).unwrap()).unwrap();
    let Stage::Committing(_, CommitStep::Reboot { kept, .. }) = &s.stage else {
        panic!("{:?}", s.stage)
    };
    assert_eq!(kept, &None);
    assert_eq!(Record::from(&s).kept_logs, None);
}

#[test]
fn a_damaged_record_names_its_field() {
    use serde_json::Value::Null;
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("to", Box::new(|v| v["to"] = Null)),
        (
            "from",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("from");
            }),
        ),
        ("mode", Box::new(|v| v["mode"] = Null)),
        ("step", Box::new(|v| v["step"] = Null)),
        ("step", Box::new(|v| v["step"] = "jump".into())),
        ("step", Box::new(|v| v["step"] = "swap".into())),
        ("boot_id", Box::new(|v| v["boot_id"] = Null)),
        ("boot_id", Box::new(|v| v["boot_id"] = "".into())),
        (
            "fallback_reason",
            Box::new(|v| v["step"] = "fallback".into()),
        ),
        ("to.slot", Box::new(|v| v["to"]["slot"] = "c".into())),
        ("to.slot", Box::new(|v| v["to"]["slot"] = "a".into())),
        (
            "from.version",
            Box::new(|v| v["from"]["version"] = "7.x".into()),
        ),
        (
            "to.platform_version",
            Box::new(|v| v["to"]["platform_version"] = "".into()),
        ),
        ("state", Box::new(|v| v["state"] = "UPGRADE_DONE".into())),
        ("state", Box::new(|v| v["state"] = 5.into())),
        ("rolling", Box::new(|v| v["rolling"] = "yes".into())),
        ("to.slot", Box::new(|v| v["to"]["slot"] = 1.into())),
        ("schema", Box::new(|v| v["schema"] = "qq.state/9".into())),
        (
            "error_message",
            Box::new(|v| v["error_message"] = "boom".into()),
        ),
        (
            "blocked_reason",
            Box::new(|v| v["blocked_until"] = 9.into()),
        ),
        (
            "last_commit.to",
            Box::new(|v| v["last_commit"] = serde_json::json!({"at": 1, "from": "7.0", "to": ""})),
        ),
        (
            "step",
            Box::new(|v| {
                v["state"] = "UPGRADE_PREPARED".into();
            }),
        ),
        (
            "step",
            Box::new(|v| {
                v["state"] = "UPGRADE_IDLE".into();
            }),
        ),
    ];
    for (want, edit) in cases {
        let (field, text) = damaged(edit);
        assert_eq!(field, want, "{text}");
        assert!(
            text.starts_with("state record /s/upgrade.json is damaged: "),
            "{text}"
        );
    }
}

#[test]
fn truncated_or_foreign_bytes_are_damaged_not_a_panic() {
    let full = serde_json::to_vec_pretty(&good()).unwrap();
    for n in 0..full.len() {
        match parse(Path::new("x"), &full[..n]) {
            Err(Error::StateDamaged { .. }) => {}
            other => panic!("{n} bytes: {other:?}"),
        }
    }
    // Found by the fuzzer: a key named "" with a bad value had an empty field name.
    match parse(Path::new("x"), b"{\"\": falsl}") {
        Err(Error::StateDamaged { field, .. }) => assert_eq!(field, "\"\""),
        other => panic!("{other:?}"),
    }
    for junk in [
        &b"\xff\xfe"[..],
        b"[]",
        b"null",
        b"\"x\"",
        b"{\"state\": {}}",
    ] {
        assert!(matches!(
            parse(Path::new("x"), junk),
            Err(Error::StateDamaged { .. })
        ));
    }
}

fn stage() -> impl Strategy<Value = Stage> {
    let p = platform();
    let i = Plan {
        mode: Mode::Instant,
        from: rel("7.0", Slot::A),
        to: rel("7.0.1", Slot::A),
    };
    prop_oneof![
        Just(Stage::Idle { last: None }),
        Just(Stage::Idle {
            last: Some(p.clone())
        }),
        Just(Stage::Preparing(PrepareStep::Verify)),
        Just(Stage::Preparing(PrepareStep::Write(p.clone()))),
        Just(Stage::Preparing(PrepareStep::StageEntry(p.clone()))),
        Just(Stage::Preparing(PrepareStep::Firmware(i.clone()))),
        Just(Stage::Prepared(p.clone())),
        Just(Stage::Committing(i.clone(), CommitStep::Swap)),
        Just(Stage::Committing(p.clone(), CommitStep::SetNext)),
        prop_oneof![
            (
                "[a-z0-9-]{1,20}",
                proptest::option::of(proptest::collection::btree_set("[0-9]{1,16}", 0..4))
            )
                .prop_map(|(b, kept)| CommitStep::Reboot {
                    boot_id: BootId(b),
                    kept: kept.map(KeptLogs),
                }),
            (".{0,30}", "[a-z0-9]{1,8}").prop_map(|(reason, b)| CommitStep::Fallback {
                boot_id: BootId(b),
                reason,
            }),
        ]
        .prop_map({
            let p = p.clone();
            move |step| Stage::Committing(p.clone(), step)
        }),
        Just(Stage::Committed(i)),
    ]
}

proptest! {
    #[test]
    fn any_state_round_trips_through_its_record(
        stage in stage(),
        err in proptest::option::of((proptest::sample::select(vec![
            ErrorState::PrepareFailed, ErrorState::CommitFailed, ErrorState::RolledBack,
        ]), ".{0,40}")),
        details in ".{0,40}",
        blocked in proptest::option::of((".{1,20}", proptest::option::of(0u64..2000))),
        now in 0u64..2000,
        downtime in proptest::option::of(0u64..100_000),
    ) {
        let s = NodeState {
            stage,
            settings: Settings { install_path: details.clone(), rolling: now % 2 == 0, auto_commit: now % 3 == 0, nodes_per_batch: Some(2) },
            failure: err.map(|(kind, message)| Failure { kind, message }),
            details,
            blocked: blocked.map(|(reason, until)| Blocked { reason, until }),
            downtime_ms: downtime,
            last_commit: Some(LastCommit { at: now, from: "7.0".parse().unwrap(), to: "7.1".parse().unwrap() }),
            updated_at: now,
        };
        let bytes = serde_json::to_vec(&Record::from(&s)).unwrap();
        prop_assert_eq!(&parse(Path::new("x"), &bytes).unwrap(), &s);
        let st = status_of(&s, None, now);
        prop_assert_eq!(st.state, s.phase());
        prop_assert_eq!(st.is_blocked, s.blocked.as_ref().is_some_and(|b| b.until.is_some_and(|t| t > now)));
        let back: Status = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        prop_assert_eq!(back, st);
    }
}
