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
    // A second plan while none is active is accepted; a commit now is refused.
    let (st, r) = clients[2].post("/v2/upgrade/commit", "");
    assert_eq!(
        (st, r["error_class"].as_str()),
        (409, Some("upgrade_wrong_state_error")),
        "{r}"
    );
}

#[test]
fn a_node_that_cannot_prepare_makes_every_node_discard() {
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
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg"}).to_string(),
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
}
