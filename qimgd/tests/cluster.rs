//! Agents of a three-node cluster: three real etcd members with mutual TLS from
//! the cluster CA, one `qimgd` process per simulated node. Every node lists every
//! node; a token from one node is accepted by the others; a node whose agent
//! stops is listed offline once its lease expires.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tests::etcd::{EtcdCluster, spec};

fn wait_nodes(a: &Agentd, c: &Client, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok((200, v)) = c.try_get("/v1/cluster/nodes/") {
            if ok(&v) {
                return;
            }
            last = v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("waited {limit:?} for {what}; last {last}\n{}", a.log());
}

/// A cluster of `n` simulated nodes: etcd members, one agent per node, one
/// upgrade directory all of them see. `edit` changes node `i` (0-based) first.
struct Cluster {
    _dir: tempfile::TempDir,
    _etcd: EtcdCluster,
    agents: Vec<Agentd>,
    upgrade: std::path::PathBuf,
}

fn cluster(
    name: &str,
    n: u32,
    edit: impl Fn(usize, &SimNode) + Clone + 'static,
) -> Option<Cluster> {
    let d = tempfile::tempdir().unwrap();
    let s = spec(name, n, 1);
    let etcd = EtcdCluster::start(d.path(), &s)?;
    let upgrade = d.path().join("shared-upgrade");
    let mut agents = vec![];
    for (i, (node, dir)) in s.nodes.iter().zip(&etcd.nodes).enumerate() {
        let e = edit.clone();
        agents.push(Agentd::start_with(Options {
            listen: Some(vec![node.agent.to_string(), "127.0.0.2:0".into()]),
            extra: format!(
                "cluster = \"{}\"\ncluster_lease_secs = 2\n",
                dir.dir.display()
            ),
            upgrade_dir: Some(upgrade.clone()),
            node_edit: Some(Box::new(move |sim| e(i, sim))),
            ..Options::default()
        })?);
    }
    Some(Cluster {
        _dir: d,
        _etcd: etcd,
        agents,
        upgrade,
    })
}

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

fn logged_in_everywhere(c: &Cluster) -> Vec<Client> {
    let token = c.agents[0].logged_in().token;
    c.agents
        .iter()
        .map(|a| Client {
            token: token.clone(),
            ..a.client()
        })
        .collect()
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
        assert_eq!(s["state"], "UPGRADE_STATE_COMMITTED", "node {}: {s}", i + 1);
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

#[test]
fn complete_reboot_of_every_node() {
    let Some(c) = cluster("t6", 3, |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[2].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "platform.qimg"}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    let s = c.agents[0].wait_status(&clients[0], "PREPARED", Duration::from_secs(60), |s| {
        s["state"] == "UPGRADE_STATE_PREPARED" || s["error_info"].is_string()
    });
    assert_eq!(s["state"], "UPGRADE_STATE_PREPARED", "{s}");
    assert_eq!(s["progress"], 100);
    for a in &c.agents {
        assert_eq!(a.node.running().slot, bootctl::layout::Slot::A, "prepare reboots nothing");
    }
    let (st, r) = clients[1].post("/v2/upgrade/commit", "");
    assert_eq!(st, 202, "{r}");
    // Every node reboots at once; the nodes come back on slot B, healthy.
    let s = c.agents[2].wait_status(&clients[2], "COMMITTED", Duration::from_secs(120), |s| {
        s["state"] == "UPGRADE_STATE_COMMITTED" || s["error_info"].is_string()
    });
    assert_eq!(s["state"], "UPGRADE_STATE_COMMITTED", "{s}");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(a.node.running().slot, bootctl::layout::Slot::B, "node {}", i + 1);
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"), "node {}", i + 1);
    }
}
