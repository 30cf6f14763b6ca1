//! Agents of a three-node cluster: three real etcd members with mutual TLS from
//! the cluster CA, one `qimgd` process per simulated node. Every node lists every
//! node; a token from one node is accepted by the others; a node whose agent
//! stops is listed offline once its lease expires.

mod common;

use std::time::{Duration, Instant};

use common::sim_cluster::*;
use common::*;
use serde_json::json;

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
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::A,
            "prepare reboots nothing"
        );
    }
    let (st, r) = clients[1].post("/v2/upgrade/commit", "");
    assert_eq!(st, 202, "{r}");
    // Every node reboots at once; the nodes come back on slot B, healthy.
    let s = c.agents[2].wait_status(
        &clients[2],
        "the upgrade to finish",
        Duration::from_secs(120),
        |s| finished(s) || s["error_info"].is_string(),
    );
    assert!(finished(&s), "{s}");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"), "node {}", i + 1);
    }
}

#[test]
fn complete_reboot_where_each_node_really_powers_off() {
    let Some(mut c) = cluster_with("t7", 3, 1, "sim_reboot_exits = true\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "auto_commit": true}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    // Every agent powers off (with its etcd member), is started again by the
    // "hardware", boots slot B, passes the health gate and reports; a coordinator
    // is elected again and ends the plan.
    let committed = |_: &Cluster| {
        clients.iter().any(|cl| {
            cl.try_get("/v3/upgrade/status")
                .is_ok_and(|(s, v)| s == 200 && finished(&v))
        })
    };
    let boots = c.play_hardware(Duration::from_secs(180), committed);
    assert_eq!(boots, 3, "each node rebooted once");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"), "node {}", i + 1);
    }
}

impl Cluster {
    /// The coordinator's node id, as etcd says.
    fn coordinator(&self, name: &str) -> Option<u32> {
        let o = self.etcd.etcdctl(
            &self.etcd.nodes[0],
            &[
                "get",
                &format!("/qimg/{name}/coordinator"),
                "--print-value-only",
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    }
}

#[test]
fn the_coordinator_killed_mid_upgrade_another_node_finishes_it() {
    // Every node's prepare pauses 2 s after recording its write step.
    let Some(mut c) = cluster_with(
        "t8",
        3,
        1,
        "",
        &[("QIMG_PAUSE_AT", "step:write"), ("QIMG_PAUSE_SECS", "2")],
        |_, _| {},
    ) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().instant, c.upgrade.join("instant.qimg")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(id) = c.coordinator("t8") {
            break id;
        }
        assert!(Instant::now() < deadline, "no coordinator");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (st, r) = clients[first as usize % 3].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/instant.qimg", "auto_commit": true}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL the coordinator's agent in the middle of the prepare.
    let k = first as usize - 1;
    c.agents[k].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match c.coordinator("t8") {
            Some(id) if id != first => break id,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no other coordinator after the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(second, first);
    // The killed node comes back (systemd restarts it) and prepares again.
    c.agents[k].restart();
    let other = (k + 1) % 3;
    let s = c.agents[other].wait_status(
        &clients[other],
        "the upgrade to finish",
        Duration::from_secs(120),
        |s| finished(s) || s["error_info"].is_string(),
    );
    assert!(finished(&s), "{s}");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.container().as_deref(),
            Some("7.0.1"),
            "node {}",
            i + 1
        );
    }
    let log = c.agents[second as usize - 1].log();
    assert!(
        log.contains("this node is the cluster's coordinator"),
        "{log}"
    );
}

/// Rolls a platform upgrade over five nodes `k` at a time and checks, by sampling
/// every node's engine record, that never more than `k` nodes reboot at once,
/// that the restriper gate ran between batches and that the coordinator went last.
fn rolling(name: &str, k: u32) {
    let Some(c) = cluster_with(name, 5, 2, "sim_restripe_ms = 400\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first_coordinator = None;
    while first_coordinator.is_none() && Instant::now() < deadline {
        first_coordinator = c.coordinator(name);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "num_nodes_to_reboot": k, "auto_commit": true})
            .to_string(),
    );
    assert_eq!(st, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut max_down, mut saw_restripe, mut saw_progress, mut saw_mixed) =
        (0, false, false, false);
    loop {
        let down = c
            .agents
            .iter()
            .filter(|a| {
                a.node.agent().state().is_ok_and(|s| {
                    matches!(
                        s.stage,
                        upgrade::state::Stage::Committing(
                            _,
                            upgrade::state::CommitStep::Reboot { .. }
                        )
                    )
                })
            })
            .count();
        max_down = max_down.max(down);
        // Ask a node that is up.
        let up = (0..5).find_map(|i| {
            clients[i]
                .try_get("/v1/cluster/protection/restriper/status")
                .ok()
        });
        if let Some((200, r)) = up {
            saw_restripe |= r["state"] == "RUNNING";
        }
        // Mixed releases are visible per node while the rollout runs.
        if let Some((200, n)) = (0..5).find_map(|i| clients[i].try_get("/v1/cluster/nodes/").ok()) {
            let versions: std::collections::BTreeSet<String> = n
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x["software_version"].as_str().map(str::to_owned))
                .collect();
            saw_mixed |= versions.len() == 2;
        }
        let status = (0..5).find_map(|i| clients[i].try_get("/v1/shutdown/reboot/status").ok());
        if let Some((200, r)) = status {
            saw_progress |=
                r["state"] == "REBOOT_IN_PROGRESS" && r["rebooted_node_count"].as_u64() > Some(0);
        }
        let done = (0..5).find_map(|i| clients[i].try_get("/v3/upgrade/status").ok());
        if let Some((200, s)) = done {
            assert!(s["error_info"].is_null(), "{s}");
            if finished(&s) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "rolling by {k} not done in time");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        max_down >= 1 && max_down <= k as usize,
        "{max_down} nodes rebooting at once (k = {k})"
    );
    assert!(saw_restripe, "the data-safety gate ran between batches");
    assert!(saw_progress, "the reboot manager counted rebooted nodes");
    assert!(
        saw_mixed,
        "/v1/cluster/nodes/ showed 7.0.0 and 7.1.0 side by side"
    );
    wait_nodes(
        &c.agents[0],
        &clients[0],
        "every node on 7.1.0 from slot b",
        |v| {
            v.as_array().unwrap().iter().all(|x| {
                x["software_version"] == "7.1.0"
                    && x["boot_slot"] == "b"
                    && x["node_status"] == "online"
            })
        },
    );
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"), "node {}", i + 1);
    }
    // The plan's batches: the coordinator's node last, at most k per batch.
    let o = c.etcd.etcdctl(
        &c.etcd.nodes[0],
        &["get", &format!("/qimg/{name}/plan"), "--print-value-only"],
    );
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let batches = plan["batches"].as_array().unwrap();
    assert!(
        batches
            .iter()
            .all(|b| b.as_array().unwrap().len() <= k as usize),
        "{plan}"
    );
    // The coordinator that fixed the batches went last; before its own reboot it
    // stepped down and another node finished the rollout.
    let first = first_coordinator.expect("a coordinator before the commit");
    assert_eq!(
        batches.last().unwrap()[0].as_u64(),
        Some(u64::from(first)),
        "{plan}"
    );
    let now = c.coordinator(name);
    assert!(
        now.is_some_and(|n| n != first),
        "coordinator now {now:?}, first {first}"
    );
    let log = c.agents[first as usize - 1].log();
    assert!(log.contains("it steps down as coordinator"), "{log}");
    // More nodes at once than the protection tolerates is refused up front.
    let (st, r) = clients[1].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "num_nodes_to_reboot": 3})
            .to_string(),
    );
    assert_eq!(
        (st, r["error_class"].as_str()),
        (400, Some("invalid_request_error")),
        "{r}"
    );
}

#[test]
fn rolling_reboot_one_at_a_time() {
    rolling("r1", 1);
}

#[test]
fn rolling_reboot_two_at_a_time_and_more_is_refused() {
    rolling("r2", 2);
}

#[test]
fn a_node_that_never_comes_back_pauses_the_rolling_reboot_until_resumed() {
    let Some(mut c) = cluster_with(
        "r3",
        3,
        1,
        // The limit covers a batch whose node's etcd member restarts with it (an
        // election of up to ~3 s on a loaded machine), not a node that stays off.
        "sim_reboot_exits = true\nbatch_limit_secs = 8\nsim_restripe_ms = 200\n",
        &[],
        |_, _| {},
    ) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "auto_commit": true})
            .to_string(),
    );
    assert_eq!(st, 202, "{r}");
    // The first node to power off stays off (its "hardware" does not start it).
    let deadline = Instant::now() + Duration::from_secs(60);
    let off = loop {
        if let Some(i) = (0..3).find(|&i| c.agents[i].exited()) {
            break i;
        }
        assert!(Instant::now() < deadline, "no node rebooted");
        std::thread::sleep(Duration::from_millis(50));
    };
    let up = (off + 1) % 3;
    let s = c.agents[up].wait_status(&clients[up], "the pause", Duration::from_secs(30), |s| {
        s["error_info"].is_string()
    });
    let why = s["error_info"].as_str().unwrap();
    assert!(
        why.contains(&format!("node{}", off + 1)) && why.contains("within 8 s"),
        "{why}"
    );
    let (_, r) = clients[up].get("/v1/shutdown/reboot/status");
    assert_eq!(r["state"], "REBOOT_PAUSED_DUE_TO_ERROR", "{r}");
    let (_, b) = clients[up].get("/v2/upgrade/blocked");
    assert_eq!(b["is_blocked"], true, "{b}");
    assert!(
        b["blocked_reason"].as_str().unwrap().contains("resume"),
        "{b}"
    );
    // No other node went down meanwhile.
    for (i, a) in c.agents.iter_mut().enumerate() {
        if i != off {
            assert!(
                !a.exited(),
                "node {} rebooted while the rollout was paused",
                i + 1
            );
        }
    }
    // The node comes back; the operator resumes; the rollout ends.
    let d = c.etcd.nodes[off].clone();
    c.etcd.kill_member(&format!("node{}", off + 1));
    c.etcd.start_member(&d);
    c.agents[off].restart();
    // The member that came back may hold an election: a 503 meanwhile is retried.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, r) = clients[up].post("/v1/shutdown/reboot/resume", "");
        if st == 200 {
            break;
        }
        assert!(st == 503 && Instant::now() < deadline, "{st} {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let boots = c.play_hardware(Duration::from_secs(120), |c| {
        c.agents.iter().enumerate().any(|(i, _)| {
            clients[i]
                .try_get("/v3/upgrade/status")
                .is_ok_and(|(s, v)| s == 200 && finished(&v))
        })
    });
    assert_eq!(boots, 2, "the two other nodes rebooted after the resume");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
    }
}

#[test]
fn qumulo_client_rolls_the_cluster_while_an_etcd_member_dies() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(mut c) = cluster_with("r4", 3, 1, "sim_restripe_ms = 300\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let a1 = &c.agents[0];
    let o = a1.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = a1.qumulo(
        &qq,
        &[
            "upgrade_cluster",
            "prepare",
            "--rolling",
            "--path",
            "platform.qimg",
        ],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("Upgrade prepared, commit it to proceed"),
        "{out}"
    );
    // One etcd member dies; two keep the quorum.
    c.etcd.kill_member("node3");
    let o = a1.qumulo(&qq, &["upgrade_cluster", "commit"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let s = c.agents[0].wait_status(
        &clients[0],
        "the upgrade to finish",
        Duration::from_secs(180),
        |s| finished(s) || s["error_info"].is_string(),
    );
    assert!(finished(&s), "{s}");
    assert_eq!(s["settings"]["do_rolling_reboot"], true);
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
    }
    let o = a1.qumulo(&qq, &["upgrade_status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(finished(&v), "{v}");
    // Qumulo's lifecycle: the upgrade ended, so its client says none is running.
    let o = a1.qumulo(&qq, &["upgrade_status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(NO_UPGRADE), "{}", stdout(&o));
}

#[test]
fn the_client_gone_after_no_monitor_the_cluster_finishes_alone() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(c) = cluster_with("r5", 3, 1, "sim_restripe_ms = 200\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let a3 = &c.agents[2];
    let o = a3.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Qumulo's client sends prepare with auto_commit = --no-monitor and leaves.
    let o = a3.qumulo(
        &qq,
        &[
            "upgrade_cluster",
            "--no-monitor",
            "--rolling",
            "--path",
            "/platform.qimg",
        ],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let s = c.agents[0].wait_status(
        &clients[0],
        "the upgrade to finish",
        Duration::from_secs(180),
        |s| finished(s) || s["error_info"].is_string(),
    );
    assert!(finished(&s), "{s}");
    assert_eq!(s["settings"]["auto_commit"], true);
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"), "node {}", i + 1);
    }
}

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
    let Some(c) = cluster_with(name, 4, 1, "sim_restripe_ms = 200\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let deadline = Instant::now() + Duration::from_secs(20);
    let coordinator = loop {
        if let Some(id) = c.coordinator(name) {
            break id;
        }
        assert!(Instant::now() < deadline, "no coordinator");
        std::thread::sleep(Duration::from_millis(100));
    };
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
}

#[test]
fn a_node_whose_new_slot_panics_rolls_the_whole_cluster_back() {
    platform_rollback("pr1", "panic", true);
}

#[test]
fn a_node_whose_new_slot_is_unhealthy_rolls_the_whole_cluster_back() {
    platform_rollback("pr2", "unhealthy", false);
}

#[test]
fn a_coordinator_stopped_cleanly_resigns_and_another_takes_over_at_once() {
    // Leases far longer than a takeover may take: only a resignation explains a
    // fast one (without it, the key goes when its lease expires, 60 s on).
    let Some(mut c) = cluster_with("rs", 3, 1, "cluster_lease_secs = 60\n", &[], |_, _| {}) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(id) = c.coordinator("rs") {
            break id;
        }
        assert!(Instant::now() < deadline, "no coordinator within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopping = &mut c.agents[first as usize - 1];
    let t = Instant::now();
    assert!(stopping.stop(Duration::from_secs(30)).success());
    let log = stopping.log();
    assert!(
        log.contains("resigned as the cluster's coordinator"),
        "{log}"
    );
    let limit = Duration::from_secs(20);
    let next = loop {
        if let Some(id) = c.coordinator("rs").filter(|id| *id != first) {
            break id;
        }
        assert!(
            t.elapsed() < limit,
            "no other coordinator {limit:?} after node {first} stopped; logs:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(next, first);
    eprintln!("took over after {:.1} s", t.elapsed().as_secs_f64());
}

/// `qimgd --config <node's config> user ARGS`, the password (if any) on stdin.
fn user_cli(a: &Agentd, args: &[&str], password: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qimgd"))
        .arg("--config")
        .arg(&a.config)
        .arg("user")
        .args(args)
        .args(password.map(|_| "--password-stdin"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(p) = password {
        writeln!(child.stdin.take().unwrap(), "{p}").unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Logs `user` in on `a` until the answer is `want` (the agents see the
/// cluster's users through etcd's watch), at most 10 s; returns the token.
fn login_until(a: &Agentd, user: &str, password: &str, want: u16) -> Option<String> {
    let limit = Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let body = json!({"username": user, "password": password}).to_string();
    loop {
        let (st, b) = a.client().post("/v1/session/login", &body);
        if st == want {
            return b["bearer_token"].as_str().map(str::to_owned);
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {user}'s login to answer {want}; last {st} {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn users_are_the_clusters_managed_on_any_node() {
    let Some(c) = cluster("us", 3, |_, _| {}) else {
        return;
    };
    let (a1, a2, a3) = (&c.agents[0], &c.agents[1], &c.agents[2]);
    // Added on node 2, a user logs in on node 3.
    let o = user_cli(a2, &["add", "alice"], Some("first password"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("the cluster's etcd"), "{}", stderr(&o));
    let token = login_until(a3, "alice", "first password", 200).unwrap();
    let with = |a: &Agentd, t: &str| Client {
        token: Some(t.to_owned()),
        ..a.client()
    };
    assert_eq!(with(a1, &token).get("/v1/version").0, 200);
    // Tokens carry whole seconds: the change must be a later one.
    std::thread::sleep(Duration::from_millis(1100));
    // The password changed on node 1: the old one fails on node 3 (it passed
    // there before), the new one works on node 2, the old token nowhere.
    let o = user_cli(a1, &["passwd", "alice"], Some("second password"));
    assert!(o.status.success(), "{}", stderr(&o));
    login_until(a3, "alice", "first password", 401);
    login_until(a2, "alice", "second password", 200).unwrap();
    for a in [a1, a2, a3] {
        assert_eq!(with(a, &token).get("/v1/version").0, 401);
    }
    // Every node lists the same users; a name taken is refused on any node.
    let o = user_cli(a3, &["list"], None);
    assert_eq!(stdout(&o), "admin\nalice\n", "{}", stderr(&o));
    let o = user_cli(a1, &["add", "alice"], Some("third password"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("user alice already exists"),
        "{}",
        stderr(&o)
    );
    // Removed on node 3: gone on node 1.
    let o = user_cli(a3, &["remove", "alice"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    login_until(a1, "alice", "second password", 401);
    assert_eq!(stdout(&user_cli(a2, &["list"], None)), "admin\n");
    // A node's own users file is not read in a cluster.
    let users = a2.dir.path().join("users.json");
    let mut local = qimgd::users::Users::load(&users).unwrap();
    local.add("mallory", "local password").unwrap();
    local.save(&users).unwrap();
    login_until(a2, "mallory", "local password", 401);
}

/// Makes a node real (not simulated): the agent drives its disk as hardware.
fn real(sim: &common::fixtures::SimNode) {
    let p = &sim.node.config_path;
    let t = std::fs::read_to_string(p).unwrap();
    assert!(t.contains("simulated = true"), "{t}");
    std::fs::write(p, t.replace("simulated = true", "simulated = false")).unwrap();
}

#[test]
fn a_real_node_without_a_data_safety_source_refuses_a_rolling_reboot() {
    // Real nodes, no restriper_probe: nothing can say when the data is safe, and
    // a timer must not stand in for it.
    let Some(c) = cluster_with("ds", 3, 1, "", &[], |_, sim| real(sim)) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "auto_commit": false})
            .to_string(),
    );
    assert_eq!(
        (st, r["error_class"].as_str()),
        (409, Some("upgrade_blocked_error")),
        "{r}"
    );
    let d = r["description"].as_str().unwrap();
    assert!(d.contains("restriper_probe"), "{d}");
    assert!(d.contains("do_rolling_reboot: false"), "{d}");
    // Nothing changed: no plan, every node idle on its slot A.
    for (i, a) in c.agents.iter().enumerate() {
        let (_, s) = clients[i].get("/v3/upgrade/status");
        assert_eq!(s["state"], "UPGRADE_STATE_IDLE", "node {}: {s}", i + 1);
        assert_eq!(a.node.running().slot, bootctl::layout::Slot::A);
    }
    assert_eq!(c.plan("ds"), serde_json::Value::Null, "no plan was written");
    // The restriper's status says why it cannot answer, instead of a timer's.
    let (st, r) = clients[1]
        .try_get("/v1/cluster/protection/restriper/status")
        .unwrap();
    assert_eq!(
        (st, r["error_class"].as_str()),
        (503, Some("restriper_unavailable_error")),
        "{r}"
    );
    assert!(
        r["description"]
            .as_str()
            .unwrap()
            .contains("restriper_probe"),
        "{r}"
    );
}

#[test]
fn a_probed_restriper_holds_the_next_batch_until_the_data_is_safe() {
    // The storage software's restriper, as a probe every node runs: it answers
    // from a file the test writes.
    let answer_dir = tempfile::tempdir().unwrap();
    let answer = answer_dir.path().join("restriper.json");
    let say = |state: &str, risk: bool, pct: u8| {
        let j = json!({"state": state, "phase": "REPROTECT", "data_at_risk": risk, "percent_complete": pct});
        qutil::fs::write_atomic(&answer, j.to_string().as_bytes()).unwrap();
    };
    say("FINISHED", false, 100);
    let extra = format!(
        "restriper_probe = [\"sh\", \"-c\", \"cat '{}'\"]\n",
        answer.display()
    );
    let Some(c) = cluster_with("rp", 3, 1, &extra, &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "auto_commit": true})
            .to_string(),
    );
    assert_eq!(st, 202, "{r}");
    // Before the first node reboots, the data becomes at risk (as it would while
    // a node is down) and stays so.
    say("RUNNING", true, 40);
    let up = |path: &str| (0..3).find_map(|i| clients[i].try_get(path).ok());
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        if let Some((200, u)) = up("/v1/qimg/cluster/upgrade")
            && u["restriping"] == true
        {
            assert_eq!(u["batch"], 0, "{u}");
            break u["batches"][0][0].as_u64().unwrap() as usize;
        }
        assert!(Instant::now() < deadline, "the first batch never gated");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Held: the next batch does not start while the restriper runs.
    std::thread::sleep(Duration::from_secs(3));
    let (_, u) = up("/v1/qimg/cluster/upgrade").unwrap();
    assert_eq!(
        (u["batch"].as_u64(), u["restriping"].as_bool()),
        (Some(0), Some(true)),
        "{u}"
    );
    assert_eq!(u["nodes"][first - 1]["step"], "committed", "{u}");
    let rebooted = c
        .agents
        .iter()
        .filter(|a| a.node.running().slot == bootctl::layout::Slot::B)
        .count();
    assert_eq!(rebooted, 1, "only the first batch rebooted: {u}");
    let (st, r) = up("/v1/cluster/protection/restriper/status").unwrap();
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["state"].as_str(), r["percent_complete"].as_u64()),
        (Some("RUNNING"), Some(40)),
        "{r}"
    );
    // The data is safe again: the rollout goes on to the end.
    say("FINISHED", false, 100);
    let s = c.agents[0].wait_status(
        &clients[0],
        "the upgrade to finish",
        Duration::from_secs(180),
        |s| finished(s) || s["error_info"].is_string(),
    );
    assert!(finished(&s), "{s}");
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
    }
}

impl Cluster {
    /// The plan as etcd holds it.
    fn plan(&self, name: &str) -> serde_json::Value {
        let o = self.etcd.etcdctl(
            &self.etcd.nodes[0],
            &["get", &format!("/qimg/{name}/plan"), "--print-value-only"],
        );
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits (at most 120 s) until the plan satisfies `ok`; returns the coordinator then.
    fn coordinator_when(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = self.plan(name);
            if ok(&p)
                && let Some(id) = self.coordinator(name)
            {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "waited 120 s for {what}; plan {p}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_coordinator_killed_while_a_batch_reboots_and_while_the_gate_holds() {
    let Some(mut c) = cluster_with("kr", 4, 1, "sim_restripe_ms = 1500\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "auto_commit": true})
            .to_string(),
    );
    assert_eq!(st, 202, "{r}");
    // 1. While the first batch reboots: SIGKILL the coordinator's agent; systemd
    //    starts it again a moment later.
    let first = c.coordinator_when("kr", "the first batch rebooting", |p| {
        p["phase"] == "committing"
            && p["batch"] == 0
            && p["gate_until_ms"] == 0
            && p["batches"].as_array().is_some_and(|b| !b.is_empty())
    });
    c.agents[first as usize - 1].kill();
    std::thread::sleep(Duration::from_millis(500));
    c.agents[first as usize - 1].restart();
    // 2. While the restriper gate holds the second batch back: the same to the
    //    coordinator then (another node, or the same one elected again).
    let second = c.coordinator_when("kr", "a gate after the first batch", |p| {
        p["phase"] == "committing"
            && p["gate_until_ms"].as_u64().is_some_and(|g| g > 0)
            && p["batch"].as_u64() >= Some(0)
    });
    c.agents[second as usize - 1].kill();
    std::thread::sleep(Duration::from_millis(500));
    c.agents[second as usize - 1].restart();
    // Another node finishes it: every node on the new slot, the plan committed.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let p = c.plan("kr");
        assert!(p["error"].is_null() && p["paused_error"].is_null(), "{p}");
        if p["phase"] == "committed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not committed after two coordinator kills: {p}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::B,
            "node {}",
            i + 1
        );
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"), "node {}", i + 1);
    }
}
