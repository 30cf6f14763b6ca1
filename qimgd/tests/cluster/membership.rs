//! Every node lists the cluster and takes one token; one request upgrades every node; a node that cannot prepare makes every node discard.

use super::*;

#[test]
fn every_node_lists_the_cluster_and_accepts_one_token() {
    let Some(mut c) = cluster("t2", 3, |_, _| {}) else {
        return;
    };
    let agents = &mut c.agents;
    let c1 = agents[0].logged_in();
    // One login, every node.
    for (i, a) in agents.iter().enumerate() {
        let c = Client {
            token: c1.token.clone(),
            ..a.client()
        };
        let (st, v) = c.get("/v1/node/state");
        assert_eq!(st, 200, "node {}: {v}", i + 1);
        assert_eq!(v["node_id"], i as u64 + 1, "{v}");
    }
    let c2 = Client {
        token: c1.token.clone(),
        ..agents[1].client()
    };
    wait_nodes(&agents[1], &c2, "three nodes online", |v| {
        v.as_array().is_some_and(|a| {
            a.len() == 3
                && a.iter()
                    .all(|n| n["node_status"] == "online" && n["model_number"] == MODEL)
        })
    });
    let (st, v) = c2.get("/v1/cluster/nodes/3");
    assert_eq!(st, 200);
    assert_eq!(v["node_name"], "node3");
    let (st, _) = c2.get("/v1/cluster/nodes/4");
    assert_eq!(st, 404);

    // Node 3's agent stops: once its lease expires it is listed offline.
    let mut a3 = agents.pop().unwrap();
    a3.stop(Duration::from_secs(60));
    wait_nodes(&agents[0], &c1, "node 3 offline", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["id"] == 3 && n["node_status"] == "offline")
                && a.iter().filter(|n| n["node_status"] == "online").count() == 2
        })
    });
}

#[test]
fn one_request_upgrades_every_node_instantly() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(c) = cluster("t4", 3, |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let b = bundles();
    std::fs::copy(&b.instant, c.upgrade.join("instant.qimg")).unwrap();
    // Qumulo's client, through node 2.
    let a2 = &c.agents[1];
    let o = a2.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = a2.qumulo(&qq, &["upgrade_cluster", "--path", "/instant.qimg"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}\n{}", stderr(&o), a2.log());
    assert!(out.contains("Upgrade committed"), "{out}");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.container().as_deref(),
            Some("7.0.1"),
            "node {}",
            i + 1
        );
        let (_, s) = clients[i].get("/v3/upgrade/status");
        assert!(finished(&s), "node {}: {s}", i + 1);
        assert_eq!(s["settings"]["target_version"], "7.0.1");
    }
    // A commit now is refused.
    let (st, r) = clients[2].post("/v2/upgrade/commit", "");
    assert_eq!(
        (st, r["error_class"].as_str()),
        (409, Some("upgrade_wrong_state_error")),
        "{r}"
    );
    finalize_or_roll_back_an_instant_upgrade(&c, &clients, &qq);
}

/// After an instant upgrade committed: the next prepare waits for finalize
/// (Qumulo's own client is told why); the cluster rolls back on request to the
/// previous container on every node; upgraded again and finalized by the
/// operator, nothing rolls back any more.
fn finalize_or_roll_back_an_instant_upgrade(c: &Cluster, clients: &[Client], qq: &std::path::Path) {
    let (_, u) = clients[0].get("/v1/qimg/cluster/upgrade");
    assert_eq!(u["finality"]["finalizable"], true, "{u}");
    let generation = u["generation"].clone();
    let o = c.agents[1].qumulo(
        qq,
        &["upgrade_cluster", "prepare", "--path", "/instant.qimg"],
    );
    assert!(!o.status.success());
    assert!(
        format!("{}{}", stdout(&o), stderr(&o)).contains("is not finalized"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let (_, u) = clients[0].get("/v1/qimg/cluster/upgrade");
    assert_eq!(
        u["generation"], generation,
        "the refused prepare changed nothing"
    );
    // Bodies it cannot honour: refused, nothing changed.
    for body in [r#"{"num_nodes_to_reboot": 1}"#, r#"{"rolling": true}"#] {
        let (st, r) = clients[2].post("/v1/qimg/upgrade/rollback", body);
        assert_eq!(
            (st, r["error_class"].as_str()),
            (400, Some("invalid_request_error")),
            "{body}: {r}"
        );
    }
    let (_, u) = clients[0].get("/v1/qimg/cluster/upgrade");
    assert_eq!(u["phase"], "committed", "{u}");
    // Back, on request, every node at once (an instant upgrade).
    let (st, r) = clients[2].post("/v1/qimg/upgrade/rollback", "{}");
    assert_eq!(st, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let u = loop {
        let (_, u) = clients[0].get("/v1/qimg/cluster/upgrade");
        if u["phase"] == "rolled_back" {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "no rollback in 60 s: {u}
{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(u["generation"], generation, "the same plan");
    assert_eq!(
        u["finality"]["rollback"]["by"],
        format!("user {USER:?}"),
        "{u}"
    );
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.container().as_deref(),
            Some("7.0.0"),
            "node {}",
            i + 1
        );
        let (_, s) = clients[i].get("/v3/upgrade/status");
        assert_eq!(s["state"], "UPGRADE_STATE_IDLE", "node {}: {s}", i + 1);
        assert!(s["error_info"].is_null(), "asked for, not an error: {s}");
    }
    let (st, r) = clients[0].post("/v1/qimg/upgrade/finalize", "");
    assert_eq!(
        (st, r["error_class"].as_str()),
        (409, Some("upgrade_wrong_state_error")),
        "{r}"
    );
    assert!(
        r["description"]
            .as_str()
            .unwrap()
            .contains("rolled_back, not committed"),
        "{r}"
    );
    // Upgraded again; finalized by the operator (twice: the same answer).
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/instant.qimg", "auto_commit": true}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while clients[0].get("/v1/qimg/cluster/upgrade").1["phase"] != "committed" {
        assert!(
            Instant::now() < deadline,
            "no commit in 60 s
{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (st, f) = clients[1].post("/v1/qimg/upgrade/finalize", "");
    assert_eq!(st, 200, "{f}");
    assert_eq!(f["finalizable"], false, "{f}");
    assert_eq!(f["finalized"]["by"], format!("user {USER:?}"), "{f}");
    let (st, again) = clients[2].post("/v1/qimg/upgrade/finalize", "");
    assert_eq!((st, &again), (200, &f));
    let (st, r) = clients[0].post("/v1/qimg/upgrade/rollback", "{}");
    assert_eq!(st, 409, "{r}");
    assert!(
        r["description"]
            .as_str()
            .unwrap()
            .contains("was finalized by user"),
        "{r}"
    );
    let (_, b) = clients[0].get("/v2/upgrade/blocked");
    assert_eq!(b["is_blocked"], false, "{b}");
    for a in &c.agents {
        assert_eq!(a.node.container().as_deref(), Some("7.0.1"));
    }
}

#[test]
fn a_node_that_cannot_prepare_is_assessed_refused_and_overridden_makes_every_node_discard() {
    // Node 3 is a model the bundle does not support.
    let Some(c) = cluster("t5", 3, |i, sim| {
        if i == 2 {
            let p = sim.node.config_path.clone();
            let t = std::fs::read_to_string(&p).unwrap();
            std::fs::write(&p, t.replace(MODEL, "demo-node-9")).unwrap();
        }
    }) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let b = bundles();
    std::fs::copy(&b.platform, c.upgrade.join("platform.qimg")).unwrap();
    let slot_b: Vec<String> = c
        .agents
        .iter()
        .map(|a| a.node.slot_label(bootctl::layout::Slot::B))
        .collect();
    // The assessment names the node and why, every node's other checks and
    // the cluster's pass; it writes nothing.
    let (st, a) = clients[0].post(
        "/v1/qimg/upgrade/assess",
        &json!({"image_path": "/platform.qimg"}).to_string(),
    );
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["schema"], "qimg.upgrade_assessment/1");
    assert_eq!(
        (&a["result"], &a["to_version"]),
        (&json!("fail"), &json!("7.1.0")),
        "{a}"
    );
    let checks = a["checks"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["result"] == "fail").collect();
    assert_eq!(failed.len(), 1, "{a}");
    assert_eq!(
        (&failed[0]["name"], &failed[0]["node"]),
        (&json!("release_rules"), &json!(3))
    );
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("demo-node-9"),
        "{a}"
    );
    for node in 1..=3 {
        let bundle = checks
            .iter()
            .find(|c| c["name"] == "bundle" && c["node"] == node)
            .unwrap_or_else(|| panic!("node {node}'s bundle check in {a}"));
        assert!(
            bundle["message"]
                .as_str()
                .unwrap()
                .contains("payloads match their digests"),
            "{a}"
        );
        assert!(
            checks
                .iter()
                .any(|c| c["name"] == "free_space" && c["node"] == node && c["result"] == "pass"),
            "{a}"
        );
    }
    for name in [
        "nodes_online",
        "etcd_quorum",
        "data_protection",
        "clock_skew",
        "mixed_releases",
    ] {
        let c = checks
            .iter()
            .find(|c| c["name"] == name && c["node"].is_null());
        assert_eq!(
            c.map(|c| &c["result"]),
            Some(&json!("pass")),
            "{name} in {a}"
        );
    }
    // The prepare refuses the same way, naming the check to override.
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg"}).to_string(),
    );
    assert_eq!(
        (st, r["error_class"].as_str()),
        (409, Some("upgrade_blocked_error")),
        "{r}"
    );
    let d = r["description"].as_str().unwrap();
    assert!(
        d.contains("release_rules on node 3") && d.contains("override"),
        "{d}"
    );
    assert_eq!(c.plan("t5"), serde_json::Value::Null, "no plan written");
    // Overridden, it starts; node 3's own prepare fails and every node discards.
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "overrides": ["release_rules"]}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    let (st, r) = clients[1].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg"}).to_string(),
    );
    assert_eq!(
        (st, r["error_class"].as_str()),
        (409, Some("upgrade_blocked_error")),
        "{r}"
    );
    let s = c.agents[1].wait_status(
        &clients[1],
        "the cluster's failure",
        Duration::from_secs(60),
        |s| s["error_info"].is_string(),
    );
    let info = s["error_info"].as_str().unwrap();
    assert!(
        info.contains("node node3") && info.contains("demo-node-9"),
        "{info}"
    );
    // Every node is back where it was: nothing prepared, slot B as before.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, a) in c.agents.iter().enumerate() {
        loop {
            let st = a.node.agent().state().unwrap();
            if st.phase() == upgrade::wire::Phase::Idle {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still {:?}",
                i + 1,
                st.phase()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            a.node.slot_label(bootctl::layout::Slot::B),
            slot_b[i],
            "node {}",
            i + 1
        );
        assert_eq!(a.node.running().slot, bootctl::layout::Slot::A);
    }
    // Once every node discarded, the plan ends: a new upgrade may start, and the
    // status keeps the reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, bl) = clients[2].get("/v2/upgrade/blocked");
        if bl["is_blocked"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still blocked: {bl}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, s) = clients[2].get("/v3/upgrade/status");
    assert_eq!(s["state"], "UPGRADE_STATE_IDLE", "{s}");
    assert!(
        s["error_info"].as_str().unwrap().contains("node node3"),
        "{s}"
    );
    // The record keeps the override.
    let (_, h) = clients[2].get("/v1/qimg/upgrade/history");
    assert_eq!(
        h["upgrades"][0]["overrides"],
        json!(["release_rules"]),
        "{h}"
    );
    // An unknown check cannot be overridden: the names are listed.
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "overrides": ["space"]}).to_string(),
    );
    assert_eq!(st, 400, "{r}");
    assert!(
        r["description"].as_str().unwrap().contains("free_space"),
        "{r}"
    );
}
