//! The agent's life: SIGTERM during a prepare cancels it and the engine undoes
//! what it wrote before the agent exits; the generated certificate and key are
//! kept private; a node alone is a cluster of one, whose plan outlives its agent.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bootctl::layout::Slot;
use common::*;
use serde_json::json;

#[test]
fn sigterm_during_a_prepare_undoes_it_before_exiting() {
    let Some(mut a) = Agentd::start_with(Options {
        env: vec![
            ("QIMG_PAUSE_AT".into(), "step:write".into()),
            ("QIMG_PAUSE_SECS".into(), "2".into()),
        ],
        ..Options::default()
    }) else {
        return;
    };
    let key = a.dir.path().join("state/tls/qimgd.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let label_b = a.node.slot_label(Slot::B);
    let slot_a = a.node.slot_bytes(Slot::A);
    let c = a.logged_in();
    let p = a.place(&bundles().platform);
    let (s, r) = c.post("/v2/upgrade/prepare", &json!({"image_path": p}).to_string());
    assert_eq!(s, 202, "{r}");
    let status = a.stop(Duration::from_secs(90));
    assert!(status.success(), "{status:?}\n{}", a.log());
    let log = a.log();
    assert!(log.contains("qimgd: stopping"), "{log}");
    let st = a.node.agent().state().unwrap();
    assert_eq!(st.phase(), upgrade::wire::Phase::Idle, "{st:?}\n{log}");
    assert!(st.details.contains("cancelled"), "{}", st.details);
    assert_eq!(a.node.slot_label(Slot::B), label_b, "slot B is as it was");
    assert_eq!(a.node.slot_bytes(Slot::A), slot_a);
    assert_eq!(a.node.entries(), vec!["qimg-demo-a-7.0.efi".to_string()]);

    // A node alone is a cluster of one: its plan (state/plan.json) outlives the
    // agent. The stop cancelled the prepare, and that is how its plan ended:
    // after a restart the status says so, and the plan node by node too.
    let plan = std::fs::read_to_string(a.dir.path().join("state/plan.json")).unwrap();
    assert!(plan.contains("qimg-local-store/1"), "{plan}");
    a.restart();
    let c = a.logged_in();
    let s = a.wait_status(
        &c,
        "the cancelled plan ended",
        Duration::from_secs(30),
        |s| s["state"] == "UPGRADE_STATE_IDLE",
    );
    let why = s["error_info"].as_str().unwrap_or_default();
    assert!(why.contains("cancelled"), "{s}");
    let (code, up) = c.get("/v1/qimg/cluster/upgrade");
    assert_eq!(code, 200, "{up}");
    assert_eq!(up["phase"], "failed", "{up}");
    assert_eq!(up["nodes"].as_array().map(Vec::len), Some(1), "{up}");
    assert_eq!(up["nodes"][0]["step"], "failed", "{up}");

    // A crash is not a stop: a prepare the agent did not get to end goes on
    // when the agent starts again, as a cluster member's does.
    let (s, r) = c.post("/v2/upgrade/prepare", &json!({"image_path": p}).to_string());
    assert_eq!(s, 202, "{r}");
    a.kill();
    a.restart();
    let c = a.logged_in();
    let s = a.wait_status(
        &c,
        "the prepare started again after the crash",
        Duration::from_secs(90),
        |s| s["state"] == "UPGRADE_STATE_PREPARED",
    );
    assert_eq!(s["settings"]["install_path"], p.as_str(), "{s}");
    assert_eq!(s["progress"], 100);
    assert_eq!(s["error_info"], serde_json::Value::Null, "{s}");
    assert!(
        a.log()
            .contains("the prepare was interrupted; starting it again")
    );
    let st = a.node.agent().state().unwrap();
    assert_eq!(st.phase(), upgrade::wire::Phase::Prepared, "{st:?}");
    let (_, up) = c.get("/v1/qimg/cluster/upgrade");
    assert_eq!(
        (&up["phase"], &up["generation"]),
        (&json!("prepared"), &json!(2)),
        "{up}"
    );
    assert_eq!(up["nodes"][0]["step"], "prepared", "{up}");
}
