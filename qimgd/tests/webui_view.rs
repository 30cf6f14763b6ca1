//! The Web UI's one decision, `view(overview)` in `qimgd/webui/app.js`, checked
//! case by case in a real browser (headless Chromium): the page is loaded from
//! an agent, and each row's overview (the body of `GET /v1/qimg/overview`) is
//! given to the page's own function, whose answer says everything the page
//! shows. The flows in `webui.rs` check that painting it works.

mod common;

use common::browser::Browser;
use common::*;
use serde_json::{Value, json};

fn status(state: &str, progress: Option<u8>, error: Option<&str>) -> Value {
    json!({
        "state": state,
        "progress": progress,
        "settings": {
            "install_path": "/up.qimg", "target_version": "7.1.0",
            "upgrade_type": "SOFTWARE_AND_PLATFORM", "auto_commit": false,
            "do_rolling_reboot": true, "num_nodes_to_reboot": 1
        },
        "error_info": error,
    })
}

fn node(id: u32, online: bool) -> Value {
    json!({
        "id": id, "node_name": format!("n{id}"),
        "node_status": if online { "online" } else { "offline" },
        "software_version": "7.0.0", "boot_slot": "a", "api_address": format!("127.0.0.1:{}", 9000 + id)
    })
}

fn plan(phase: &str, nodes: Value) -> Value {
    json!({
        "generation": 4, "phase": phase, "rolling": true,
        "batches": [[1], [2], [3]], "batch": 1, "restriping": false,
        "nodes": nodes, "mode": "platform", "from_version": "7.0.0",
        "target_version": "7.1.0", "downtime_ms": null
    })
}

fn reboot(state: &str, done: u32, error: &str) -> Value {
    json!({
        "state": state, "rolling": true, "upgrade_initiated": true,
        "total_node_count": 3, "rebooted_node_count": done, "error_message": error
    })
}

fn overview(status: Value, plan: Value, reboot: Value, blocked: Value) -> Value {
    json!({
        "version": {"revision_id": "demo 7.0.0", "build_id": "7.0.0", "flavor": "release", "build_date": ""},
        "status": status,
        "blocked": blocked,
        "nodes": [node(1, true), node(2, false), node(3, true)],
        "plan": plan,
        "reboot": reboot,
        "restriper": {"state": "RUNNING", "phase": "REPROTECT", "blocked_reason": "",
                      "data_at_risk": true, "elapsed_seconds": 1, "percent_complete": 40,
                      "coordinator_node": 1},
        "protection": {"protection_system_type": "PROTECTION_SYSTEM_TYPE_EC",
                       "max_node_failures": 1, "remaining_node_failures": 0},
    })
}

fn not_blocked() -> Value {
    json!({"is_blocked": false, "cluster_degraded": false, "blocked_reason": ""})
}

fn plan_nodes() -> Value {
    json!([
        {"id": 1, "name": "n1", "online": true, "step": "committed", "progress": 100, "error": null, "installed": "7.1.0"},
        {"id": 2, "name": "n2", "online": false, "step": "committing", "progress": 100, "error": null, "installed": "7.0.0"},
        {"id": 3, "name": "n3", "online": true, "step": "failed", "progress": 0, "error": "boom", "installed": "7.0.0"}
    ])
}

#[test]
fn the_page_decides_what_to_show_from_one_overview() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(b) = rt.block_on(Browser::start("view", 1280, 800)) else {
        return;
    };
    let Some(a) = Agentd::start() else {
        return;
    };
    let idle = status("UPGRADE_STATE_IDLE", None, None);
    let mut committed = plan("committed", plan_nodes());
    committed["downtime_ms"] = json!(57);
    let mut restriping = plan("committing", plan_nodes());
    restriping["restriping"] = json!(true);
    let admin = json!({"at_ms": 1_000_000, "by": "user \"admin\"", "from": "10.1.2.3"});
    let mut finalizable = committed.clone();
    finalizable["finality"] = json!({"finalizable": true});
    let mut finalized = committed.clone();
    finalized["finality"] = json!({"finalizable": false, "finalized": admin});
    let mut asked_back = plan("rolling_back", plan_nodes());
    asked_back["finality"] = json!({"finalizable": false, "rollback": admin});
    let mut rolled_back = plan("rolled_back", plan_nodes());
    rolled_back["finality"] = json!({"finalizable": false, "rollback": admin});
    let mut rollback_failed = plan("failed", plan_nodes());
    rollback_failed["finality"] = json!({"finalizable": false, "rollback": admin});
    let not_finalized = json!({"is_blocked": true, "cluster_degraded": false,
        "blocked_reason": "the upgrade to 7.1.0 (plan 4) is not finalized"});
    // (what, overview, the fields of the view it must have)
    let rows: Vec<(&str, Value, Value)> = vec![
        (
            "nothing ever upgraded",
            overview(idle.clone(), Value::Null, Value::Null, not_blocked()),
            json!({"startForm": true, "progress": null, "problem": "", "success": "",
                   "blocked": "", "upgradeDisabled": false, "commit": false}),
        ),
        (
            "a finished upgrade is idle and says so from the plan",
            overview(idle.clone(), committed, Value::Null, not_blocked()),
            json!({"startForm": true, "progress": null,
                   "success": "You have successfully upgraded from 7.0.0 to 7.1.0. Cluster downtime: 57 ms."}),
        ),
        (
            "blocked while idle: said, and the button disabled",
            overview(
                idle.clone(),
                Value::Null,
                Value::Null,
                json!({"is_blocked": true, "cluster_degraded": false, "blocked_reason": "a settle period"}),
            ),
            json!({"blocked": "Upgrades are blocked: a settle period", "upgradeDisabled": true, "startForm": true}),
        ),
        (
            "preparing: the mean progress on a bar of 100",
            overview(
                status("UPGRADE_STATE_PREPARING", Some(40), None),
                plan("preparing", plan_nodes()),
                Value::Null,
                not_blocked(),
            ),
            json!({"startForm": false, "blocked": "",
                   "progress": {"title": "Preparing the upgrade",
                                "text": "Verifying the upgrade file and writing the new release on every node: 40 %",
                                "bar": {"max": 100, "value": 40}}}),
        ),
        (
            "prepared without auto-commit: the commit button",
            overview(
                status("UPGRADE_STATE_PREPARED", Some(100), None),
                plan("prepared", plan_nodes()),
                Value::Null,
                not_blocked(),
            ),
            json!({"commit": true, "progress": {"title": "Prepared",
                   "text": "Every node is prepared. Commit to finish the upgrade.", "bar": {"max": 100, "value": 100}}}),
        ),
        (
            "a rolling reboot: the batch by name, pause offered, the restriper's wait",
            overview(
                status("UPGRADE_STATE_REBOOTING", Some(100), None),
                restriping,
                reboot("REBOOT_IN_PROGRESS", 1, ""),
                not_blocked(),
            ),
            json!({"pause": true, "resume": false, "commit": false,
                   "restriper": "Waiting for the data to be safe before the next nodes reboot: the restriper is 40 % done (data at risk until it finishes).",
                   "progress": {"title": "Rolling reboot", "text": "Rebooted 1 of 3 nodes; batch 2 of 3: n2.",
                                "bar": {"max": 3, "value": 1}}}),
        ),
        (
            "paused on an error: the problem, resume offered",
            overview(
                status(
                    "UPGRADE_STATE_REBOOTING",
                    Some(100),
                    Some("node 2 not back"),
                ),
                plan("committing", plan_nodes()),
                reboot("REBOOT_PAUSED_DUE_TO_ERROR", 1, "node 2 not back"),
                not_blocked(),
            ),
            json!({"pause": false, "resume": true,
                   "problem": "The reboots are paused on an error: node 2 not back. Fix the cause, then resume."}),
        ),
        (
            "rolling back: said, with the reboots' progress",
            overview(
                status("UPGRADE_STATE_COMMITTING", Some(100), Some("node 3: boom")),
                plan("rolling_back", plan_nodes()),
                reboot("REBOOT_IN_PROGRESS", 0, ""),
                not_blocked(),
            ),
            json!({"startForm": false,
                   "problem": "The upgrade failed and the cluster is rolling back to the previous release: node 3: boom",
                   "progress": {"title": "Rolling back", "text": "Rebooted 0 of 3 nodes; batch 2 of 3: n2.",
                                "bar": {"max": 3, "value": 0}}}),
        ),
        (
            "committed, not finalized: finalize and roll back offered, no blocked banner",
            overview(
                idle.clone(),
                finalizable,
                Value::Null,
                not_finalized.clone(),
            ),
            json!({"startForm": true, "upgradeDisabled": true, "blocked": "", "rollbackTo": "7.0.0",
                   "success": "You have successfully upgraded from 7.0.0 to 7.1.0. Cluster downtime: 57 ms.",
                   "finality": "Until you finalize it, the cluster can be rolled back to 7.0.0; a new upgrade can start once it is finalized."}),
        ),
        (
            "finalized: said, no buttons",
            overview(idle.clone(), finalized, Value::Null, not_blocked()),
            json!({"finality": "", "rollbackTo": null, "upgradeDisabled": false,
                   "success": "You have successfully upgraded from 7.0.0 to 7.1.0. Cluster downtime: 57 ms. Finalized by user \"admin\"."}),
        ),
        (
            "rolling back on request: progress, not a problem",
            overview(
                status("UPGRADE_STATE_COMMITTING", Some(100), None),
                asked_back,
                reboot("REBOOT_IN_PROGRESS", 1, ""),
                not_blocked(),
            ),
            json!({"startForm": false, "problem": "", "finality": "",
                   "progress": {"title": "Rolling back", "text": "Rebooted 1 of 3 nodes; batch 2 of 3: n2.",
                                "bar": {"max": 3, "value": 1}}}),
        ),
        (
            "rolled back on request: who asked, the release it runs",
            overview(idle.clone(), rolled_back, Value::Null, not_blocked()),
            json!({"startForm": true, "problem": "", "progress": null, "finality": "",
                   "success": "The cluster was rolled back to 7.0.0 (asked by user \"admin\")."}),
        ),
        (
            "a rollback on request that failed: said as the rollback's",
            overview(
                status(
                    "UPGRADE_STATE_IDLE",
                    None,
                    Some("the rollback failed on node n3: boom"),
                ),
                rollback_failed,
                Value::Null,
                not_blocked(),
            ),
            json!({"problem": "The rollback did not complete: the rollback failed on node n3: boom"}),
        ),
        (
            "failed: every node back, in words",
            overview(
                status("UPGRADE_STATE_IDLE", None, Some("node 3: boom")),
                plan("failed", plan_nodes()),
                Value::Null,
                not_blocked(),
            ),
            json!({"startForm": true, "progress": null,
                   "problem": "The upgrade failed; every node is back on the release it ran before: node 3: boom"}),
        ),
    ];
    rt.block_on(async {
        b.c.goto(&format!("https://127.0.0.1:{}/", a.port("127.0.0.1")))
            .await
            .unwrap();
        for (what, o, want) in rows {
            let got =
                b.c.execute("return window.qimgView(arguments[0]);", vec![o])
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            for (k, v) in want.as_object().unwrap() {
                assert_eq!(&got[k], v, "{what}: {k} in {got:#}");
            }
            // The node rows: one per node, offline and failed marked.
            let nodes = got["nodes"].as_array().unwrap();
            assert_eq!(nodes.len(), 3, "{what}");
            assert_eq!(nodes[1]["statusBad"], true, "{what}");
            assert_eq!(nodes[1]["status"], "offline (rebooting or down)", "{what}");
        }
        // A node's part in the plan.
        let o = overview(
            status("UPGRADE_STATE_REBOOTING", Some(100), None),
            plan("committing", plan_nodes()),
            reboot("REBOOT_IN_PROGRESS", 1, ""),
            not_blocked(),
        );
        let got =
            b.c.execute("return window.qimgView(arguments[0]);", vec![o])
                .await
                .unwrap();
        let steps: Vec<(&str, bool)> = got["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["step"].as_str().unwrap(), n["stepBad"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("committed", false),
                ("committing", false),
                ("failed: boom", true)
            ]
        );
        // The history: a row per upgrade as the agent lists them (newest
        // first), who started it, its result and why, how long it took; one
        // under way counts to now.
        let mut asked_for = record(6, Some("rolled_back"), Some("rolled back on request"), 1_000);
        asked_for["generation"] = json!(2);
        asked_for["rollback"] = json!({"at_ms": 1, "by": "user \"admin\"", "from": "10.1.2.3"});
        let mut o = overview(idle.clone(), Value::Null, Value::Null, not_blocked());
        o["history"] = json!({"schema": "qimg.upgrade_history/1", "upgrades": [
            record(5, None, None, 1_000_000),
            record(4, Some("rolled_back"), Some("node 3 failed its commit"), 400_000),
            record(3, Some("upgraded"), None, 65_500),
            asked_for,
        ]});
        let got =
            b.c.execute("return window.qimgView(arguments[0], 1030000);", vec![o])
                .await
                .unwrap();
        let rows: Vec<Value> = got["history"].as_array().unwrap().clone();
        let pick = |r: &Value, k: &str| r[k].clone();
        assert_eq!(
            rows.iter()
                .map(|r| (
                    pick(r, "id"),
                    pick(r, "result"),
                    pick(r, "resultBad"),
                    pick(r, "took")
                ))
                .collect::<Vec<_>>(),
            vec![
                (
                    json!("#5"),
                    json!("under way"),
                    json!(false),
                    json!("30.0 s")
                ),
                (
                    json!("#4"),
                    json!("rolled back: node 3 failed its commit"),
                    json!(true),
                    json!("6 min 40 s")
                ),
                (
                    json!("#3"),
                    json!("upgraded"),
                    json!(false),
                    json!("1 min 5 s")
                ),
                (
                    json!("#2"),
                    json!("rolled back: rolled back on request"),
                    json!(false),
                    json!("1.0 s")
                ),
            ]
        );
        assert_eq!(rows[1]["by"], "user \"admin\" from 10.1.2.3");
        assert_eq!(rows[1]["versions"], "7.0.0 → 7.1.0");
        assert_eq!(rows[1]["mode"], "platform, rolling");
        // The rollout waits on its canaries: said, resume offered.
        let mut soaking = plan("committing", plan_nodes());
        soaking["soaking"] = json!(true);
        soaking["soak_until_ms"] = json!(0);
        soaking["canary"] = json!(1);
        let o = overview(
            status("UPGRADE_STATE_REBOOTING", Some(100), None),
            soaking,
            reboot("REBOOT_PAUSED", 1, ""),
            not_blocked(),
        );
        let got =
            b.c.execute("return window.qimgView(arguments[0]);", vec![o])
                .await
                .unwrap();
        assert_eq!(
            got["progress"]["text"],
            "The canaries (n1) run 7.1.0; the rollout goes on when you resume it."
        );
        assert_eq!((&got["resume"], &got["pause"]), (&json!(true), &json!(false)));
        // The time left, from the plan's ETA.
        let mut o = overview(
            status("UPGRADE_STATE_REBOOTING", Some(100), None),
            plan("committing", plan_nodes()),
            reboot("REBOOT_IN_PROGRESS", 1, ""),
            not_blocked(),
        );
        o["plan"]["eta"] = json!({"phases": [{"phase": "committing", "expected_ms": 180_000,
            "elapsed_ms": 60_000, "basis": "3 batches"}], "remaining_ms": 125_000});
        let got =
            b.c.execute("return window.qimgView(arguments[0]);", vec![o])
                .await
                .unwrap();
        assert_eq!(got["eta"], "About 2 min 5 s left.");
        // The dialog's assessment: failures first, then warnings; the names a
        // start must override, once each.
        let a = json!({"schema": "qimg.upgrade_assessment/1", "image_path": "/up.qimg",
            "mode": "platform", "to_version": "7.1.0", "result": "fail", "checks": [
                {"name": "bundle", "node": 1, "result": "pass", "message": "ok"},
                {"name": "clock_skew", "node": 2, "result": "warn", "message": "3000 ms"},
                {"name": "free_space", "node": 2, "result": "fail", "message": "1 MB free"},
                {"name": "free_space", "node": 3, "result": "fail", "message": "2 MB free"},
            ]});
        let got =
            b.c.execute("return window.qimgAssessView(arguments[0]);", vec![a])
                .await
                .unwrap();
        assert_eq!(
            got,
            json!({
                "summary": "1 of 4 checks pass on every node and the cluster; 2 fail: the upgrade starts only if you override them",
                "items": [
                    {"text": "free space (node 2): 1 MB free", "bad": true},
                    {"text": "free space (node 3): 2 MB free", "bad": true},
                    {"text": "clock skew (node 2): 3000 ms", "bad": false},
                ],
                "failing": ["free_space"],
            })
        );
        // Nothing upgraded yet: an empty history.
        let o = overview(idle, Value::Null, Value::Null, not_blocked());
        let got =
            b.c.execute("return window.qimgView(arguments[0]);", vec![o])
                .await
                .unwrap();
        assert_eq!(got["history"], json!([]));
    });
}

/// An upgrade's record (`qapi::history::UpgradeRecord`) started at 1 000 s
/// (Unix ms 1 000 000), ended after `took_ms` unless under way.
fn record(generation: u64, result: Option<&str>, reason: Option<&str>, took_ms: u64) -> Value {
    json!({
        "generation": generation,
        "started": {"at_ms": 1_000_000, "by": "user \"admin\"", "from": "10.1.2.3"},
        "image_path": "/up.qimg", "from_version": "7.0.0", "to_version": "7.1.0",
        "mode": "platform", "rolling": true, "batches": [[2], [1]], "on_failure": "rollback",
        "overrides": [], "phases": [{"phase": "preparing", "at_ms": 1_000_000}],
        "nodes": [], "pauses": [], "result": result, "reason": reason,
        "ended_ms": result.map(|_| 1_000_000 + took_ms), "downtime_ms": null
    })
}
