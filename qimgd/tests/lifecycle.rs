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
    // The status ends with the node's failure; the plan, once the coordinator
    // read it (a reconciliation later).
    let up = c.wait_for(
        "/v1/qimg/cluster/upgrade",
        "the plan to end",
        Duration::from_secs(30),
        |u| u["phase"] != "discarding",
        || a.log(),
    );
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

/// `qimgd cluster voter`, the etcd unit's `ExecCondition`: 0 on a voting member
/// (its directory found under `state/cluster`, where a read-only appliance keeps
/// it), 1 on a node that is not a voter or in no cluster.
#[test]
fn cluster_voter_answers_from_the_directory_under_state() {
    let d = tempfile::tempdir().unwrap();
    let spec = tests::etcd::spec("voters", 4, 1);
    let dirs = qcluster::create(&spec, &d.path().join("made")).unwrap();
    let run = |node: Option<usize>| {
        let state = d.path().join(format!("state-{node:?}"));
        std::fs::create_dir_all(&state).unwrap();
        if let Some(i) = node {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(&dirs[i].dir)
                .arg(state.join(qimgd::config::JOINED))
                .status()
                .unwrap();
            assert!(st.success());
        }
        let conf = d.path().join(format!("qimgd-{node:?}.toml"));
        std::fs::write(
            &conf,
            format!(
                "node = \"n\"\nupgrade_dir = \"u\"\nstate = \"{}\"\n",
                state.display()
            ),
        )
        .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_qimgd"))
            .arg("--config")
            .arg(&conf)
            .args(["cluster", "voter"])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = run(Some(0));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("node 1 is a voting member of voters"), "{out}");
    let (code, out) = run(Some(3));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("node 4 is not a voting member"), "{out}");
    let (code, out) = run(None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("in no cluster"), "{out}");
}
