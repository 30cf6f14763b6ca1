//! A commit failing on one node rolls every node back: instant, and platform (complete or rolling).

use super::*;

#[test]
fn an_instant_commit_failing_on_one_node_rolls_every_node_back() {
    let Some(c) = cluster("t9", 3, |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().instant, c.upgrade.join("instant.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/instant.qimg"}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    c.agents[0].wait_status(&clients[0], "PREPARED", Duration::from_secs(60), |s| {
        s["state"] == "UPGRADE_STATE_PREPARED"
    });
    // Node 3's staged container is broken after its prepare: its program exits
    // before it is healthy, so node 3's commit fails while the others succeed.
    let entry = c.agents[2]
        .node
        .node
        .config
        .state
        .join("containers/7.0.1/rootfs/entry");
    std::fs::write(&entry, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    let (st, r) = clients[1].post("/v2/upgrade/commit", "");
    assert_eq!(st, 202, "{r}");
    // The plan ends failed once every node is back on 7.0.0.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, b) = clients[1].get("/v2/upgrade/blocked");
        let (_, s) = clients[1].get("/v3/upgrade/status");
        if b["is_blocked"] == false && s["error_info"].is_string() {
            let info = s["error_info"].as_str().unwrap();
            assert!(info.contains("node node3"), "{info}");
            assert!(info.contains("every node goes back"), "{info}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rollback: {s} {b}\n{}",
            c.agents[0].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.container().as_deref(),
            Some("7.0.0"),
            "node {}: {}",
            i + 1,
            a.log()
        );
        let st = a.node.agent().state().unwrap();
        assert_eq!(st.phase(), upgrade::wire::Phase::Idle, "node {}", i + 1);
    }
    // Nodes 1 and 2 either committed and went back (recording the rollback and
    // why) or had not committed yet and discarded (under load the failure can
    // come first): never anything else.
    for a in &c.agents[..2] {
        let st = a.node.agent().state().unwrap();
        if let Some(f) = st.failure {
            assert_eq!(
                f.kind,
                upgrade::wire::ErrorState::RolledBack,
                "{}",
                f.message
            );
            assert!(f.message.contains("rolled back to 7.0.0"), "{}", f.message);
        }
    }
}

/// A platform upgrade where one node's hardware fails with the new platform
/// (`fault`: its kernel panics, or it boots unhealthy): the node falls back on its
/// own, the rollout stops, and every node already on the new release goes back to
/// its previous slot, so the cluster ends on 7.0.0 with the node and the reason in
/// the status. `rolling`: one node at a time (the failing node in the second
/// batch, after a node that committed); else a complete reboot.
fn platform_rollback(name: &str, fault: &str, rolling: bool) {
    let journal = Journal::start();
    let extra = format!("{}[sim]\nrestripe_ms = 200\n", journal.config());
    let Some(c) = cluster_with(name, 4, 1, &extra, &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let coordinator = c.wait_coordinator(name, Duration::from_secs(20), |_| true);
    // The batches go in node order with the coordinator last: the second node
    // that is not the coordinator reboots second.
    let order: Vec<u32> = (1..=4).filter(|id| *id != coordinator).collect();
    let (first, bad) = (order[0], order[1]);
    let bad_node = &c.agents[bad as usize - 1].node.node;
    std::fs::create_dir_all(bad_node.config.state.join("sim")).unwrap();
    std::fs::write(
        bad_node.config.state.join(upgrade::sim::FAULTS),
        format!("7.1 {fault}\n"),
    )
    .unwrap();
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let body = if rolling {
        json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "num_nodes_to_reboot": 1, "auto_commit": true})
    } else {
        json!({"image_path": "/platform.qimg", "auto_commit": true})
    };
    let (st, r) = clients[0].post("/v2/upgrade/prepare", &body.to_string());
    assert_eq!(st, 202, "{r}");
    let (mut saw_rolling_back, mut saw_first_on_b) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(240);
    let info = loop {
        let n = (0..4).find_map(|i| clients[i].try_get("/v1/qimg/cluster/upgrade").ok());
        if let Some((200, u)) = n {
            saw_rolling_back |= u["phase"] == "rolling_back";
            saw_first_on_b |= u["nodes"][first as usize - 1]["step"] == "committed";
        }
        let s = (0..4).find_map(|i| clients[i].try_get("/v3/upgrade/status").ok());
        let b = (0..4).find_map(|i| clients[i].try_get("/v2/upgrade/blocked").ok());
        if let (Some((200, s)), Some((200, b))) = (s, b) {
            assert!(!finished(&s), "{s}");
            if b["is_blocked"] == false && s["error_info"].is_string() {
                break s["error_info"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no cluster-wide rollback in time:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(info.contains(&format!("node node{bad}")), "{info}");
    let why = if fault == "panic" {
        "tries exhausted"
    } else {
        "health check failed"
    };
    assert!(info.contains(why), "{info}");
    assert!(info.contains("every node goes back"), "{info}");
    assert!(saw_rolling_back, "the plan went through rolling_back");
    if rolling {
        assert!(
            saw_first_on_b,
            "node{first} committed before node{bad} failed"
        );
    }
    // The cluster ends on one release: every node boots slot A and runs 7.0.0,
    // at rest; the nodes that had committed recorded going back with the cluster.
    let mut went_back = 0;
    for (i, a) in c.agents.iter().enumerate() {
        let id = i as u32 + 1;
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::A,
            "node {id}: {}",
            a.log()
        );
        assert_eq!(a.node.version().as_deref(), Some("7.0.0"), "node {id}");
        assert_eq!(a.node.container().as_deref(), Some("7.0.0"), "node {id}");
        let st = a.node.agent().state().unwrap();
        assert_eq!(st.phase(), upgrade::wire::Phase::Idle, "node {id}");
        let entries = a.node.entries();
        assert!(
            entries
                .iter()
                .all(|e| !e.starts_with("qimg-demo-b-7.1.efi")),
            "node {id}: slot B is not bootable as good any more: {entries:?}"
        );
        if let Some(f) = st.failure
            && f.message.contains("rolled back with the cluster")
        {
            assert_ne!(id, bad);
            went_back += 1;
        }
    }
    assert!(went_back >= 1, "at least node{first} went back");
    if !rolling {
        assert_eq!(
            went_back, 3,
            "a complete reboot: every other node went back"
        );
    }
    rollback_recorded(&c, &clients, &journal, bad);
}

/// The history says the upgrade rolled back, why, and which node failed; the
/// journal has its end once, as a warning.
fn rollback_recorded(c: &Cluster, clients: &[Client], journal: &Journal, bad: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h =
            (0..clients.len()).find_map(|i| clients[i].try_get("/v1/qimg/upgrade/history").ok());
        if let Some((200, h)) = &h
            && h["upgrades"][0]["result"].is_string()
        {
            break h.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ended record within 10 s: {h:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = &h["upgrades"][0];
    assert_eq!(h["schema"], "qimg.upgrade_history/1");
    assert_eq!(r["result"], "rolled_back", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("node{bad}")),
        "{r}"
    );
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert!(phases.contains(&"rolling_back"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"failed"));
    let node = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == bad)
        .unwrap_or_else(|| panic!("node {bad} in {r}"));
    assert_eq!(
        node["steps"].as_array().unwrap().last().unwrap()["step"],
        "failed"
    );
    let finished = journal.wait_events("finished", 1, Duration::from_secs(10));
    assert_eq!(finished.len(), 1, "{:?}", journal.all());
    assert_eq!(finished[0]["QIMG_RESULT"], "rolled_back");
    assert_eq!(finished[0]["PRIORITY"], "4", "a warning");
    assert!(
        journal
            .events("node_step")
            .iter()
            .any(|e| e["QIMG_NODE"] == bad.to_string() && e["QIMG_STEP"] == "failed"),
        "{:?}",
        journal.all()
    );
}

#[test]
fn a_node_whose_new_slot_panics_rolls_the_whole_cluster_back() {
    platform_rollback("pr1", "panic", true);
}

#[test]
fn a_node_whose_new_slot_is_unhealthy_rolls_the_whole_cluster_back() {
    platform_rollback("pr2", "unhealthy", false);
}
