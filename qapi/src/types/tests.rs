use super::*;

#[test]
fn modes_as_qumulo_spells_them() {
    use crate::status::Mode;
    let wire = |m: Mode| serde_json::to_value(UpgradeType::from(m)).unwrap();
    assert_eq!(wire(Mode::Platform), "SOFTWARE_AND_PLATFORM");
    assert_eq!(wire(Mode::Instant), "SOFTWARE_ONLY");
}

#[test]
fn error_classes_round_trip_as_spelled() {
    for c in ErrorClass::ALL {
        let text = serde_json::to_string(c).unwrap();
        assert_eq!(text, format!("\"{}\"", c.as_str()));
        assert!(c.as_str().ends_with("_error"), "{c}");
        assert_eq!(serde_json::from_str::<ErrorClass>(&text).unwrap(), *c);
    }
    let mut names: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), ErrorClass::ALL.len(), "sorted and distinct");
}

#[test]
fn the_agents_documentation_names_every_error_class() {
    let doc = include_str!("../../../docs/qimgd.md");
    for c in ErrorClass::ALL {
        assert!(
            doc.contains(&format!("`{}`", c.as_str())),
            "docs/qimgd.md's error table does not name {c}"
        );
    }
}

#[test]
fn reboot_states_round_trip_as_spelled() {
    for (st, text) in [
        (RebootState::Idle, "REBOOT_IDLE"),
        (RebootState::InProgress, "REBOOT_IN_PROGRESS"),
        (RebootState::Paused, "REBOOT_PAUSED"),
        (RebootState::PausedDueToError, "REBOOT_PAUSED_DUE_TO_ERROR"),
    ] {
        assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<RebootState>(&format!("\"{text}\"")).unwrap(),
            st
        );
    }
}

#[test]
fn plan_phases_are_named_as_on_the_wire_and_end_or_run() {
    use PlanPhase::*;
    for (p, active) in [
        (Preparing, true),
        (Prepared, true),
        (Committing, true),
        (Committed, false),
        (Discarding, true),
        (RollingBack, true),
        (Failed, false),
        (RolledBack, false),
    ] {
        assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        assert_eq!(
            serde_json::from_value::<PlanPhase>(p.name().into()).unwrap(),
            p
        );
        assert_eq!(p.is_active(), active, "{p:?}");
    }
}

#[test]
fn node_steps_are_named_as_on_the_wire() {
    use NodeStep::*;
    for s in [
        Preparing,
        Prepared,
        Committing,
        Committed,
        Discarded,
        RollingBack,
        RolledBack,
        Failed,
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        assert_eq!(
            serde_json::from_value::<NodeStep>(s.name().into()).unwrap(),
            s
        );
    }
}

#[test]
fn the_cluster_upgrade_body_is_typed_and_reads_an_agent_that_gave_no_mode() {
    let j = serde_json::json!({
        "generation": 3, "phase": "rolling_back", "rolling": true,
        "batches": [[2], [1]], "batch": 0, "restriping": false,
        "nodes": [{"id": 2, "name": "n2", "online": true, "step": "rolled_back",
                   "progress": 100, "error": null, "installed": "7.0.0"}]
    });
    let u: ClusterUpgrade = serde_json::from_value(j).unwrap();
    assert_eq!(u.phase, PlanPhase::RollingBack);
    assert_eq!(u.mode, None);
    assert_eq!(u.nodes[0].step, Some(NodeStep::RolledBack));
    let back = serde_json::to_value(&u).unwrap();
    assert_eq!(back["phase"], "rolling_back");
    assert_eq!(back["nodes"][0]["step"], "rolled_back");
}

#[test]
fn the_prepare_body_stays_qumulos_unless_on_failure_is_asked() {
    let mut r = PrepareRequest {
        image_path: "/u.qimg".into(),
        auto_commit: true,
        do_rolling_reboot: false,
        num_nodes_to_reboot: None,
        on_failure: None,
        overrides: vec![],
        canary: None,
        soak_secs: None,
        auto_finalize_after_secs: None,
    };
    let v = serde_json::to_value(&r).unwrap();
    assert!(v.get("on_failure").is_none(), "{v}");
    assert!(v.get("overrides").is_none(), "{v}");
    r.on_failure = Some(OnFailure::Stop);
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains(r#""on_failure":"stop""#), "{text}");
    assert_eq!(serde_json::from_str::<PrepareRequest>(&text).unwrap(), r);
    let e = serde_json::from_str::<PrepareRequest>(
        r#"{"image_path": "/u.qimg", "on_failure": "ignore"}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown variant"), "{e}");
    assert_eq!(OnFailure::default(), OnFailure::Rollback);
}
