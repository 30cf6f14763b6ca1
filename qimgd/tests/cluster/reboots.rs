//! Complete and rolling reboots: batches, the restriper gate, a pause on a node that never comes back, Qumulo's client, a client gone after `--no-monitor`.

use super::*;

#[test]
fn complete_reboot_of_every_node() {
    let Some(c) = cluster("t6", 3, |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[2].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "platform.qimg", "auto_finalize_after_secs": 0}).to_string(),
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
    // Finalized as it committed (`auto_finalize_after_secs: 0`): no rollback,
    // nothing blocks the next upgrade.
    let (_, u) = clients[0].get("/v1/qimg/cluster/upgrade");
    assert_eq!(u["finality"]["finalizable"], false, "{u}");
    assert_eq!(
        u["finality"]["finalized"]["by"], "auto_finalize_after",
        "{u}"
    );
    let (_, b) = clients[1].get("/v2/upgrade/blocked");
    assert_eq!(b["is_blocked"], false, "{b}");
    let (st, r) = clients[2].post("/v1/qimg/upgrade/rollback", "{}");
    assert_eq!(st, 409, "{r}");
}

#[test]
fn complete_reboot_where_each_node_really_powers_off() {
    let Some(mut c) = cluster_with("t7", 3, 1, "[sim]\nreboot_exits = true\n", &[], |_, _| {})
    else {
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

/// Rolls a platform upgrade over five nodes `k` at a time and checks, by sampling
/// every node's engine record, that never more than `k` nodes reboot at once,
/// that the restriper gate ran between batches and that the coordinator went last.
fn rolling(name: &str, k: u32) {
    let Some(c) = cluster_with(name, 5, 2, "[sim]\nrestripe_ms = 400\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let first = c.wait_coordinator(name, Duration::from_secs(20), |_| true);
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
    // The time left while it commits, batch by batch (never more than the
    // phase's expected time).
    let mut lefts: Vec<u64> = vec![];
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
        if let Some((200, u)) =
            (0..5).find_map(|i| clients[i].try_get("/v1/qimg/cluster/upgrade").ok())
            && u["phase"] == "committing"
        {
            let eta = &u["eta"];
            assert_eq!(eta["phases"][0]["phase"], "committing", "{u}");
            let left = eta["remaining_ms"].as_u64().unwrap();
            assert!(
                left <= eta["phases"][0]["expected_ms"].as_u64().unwrap(),
                "{u}"
            );
            lefts.push(left);
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
    // No upgrade recorded before: a default per batch, counting down.
    assert!(lefts.len() >= 2, "{lefts:?}");
    assert!(
        lefts.first() > lefts.last(),
        "the time left went down: {lefts:?}"
    );
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
        "batch_limit_secs = 8\n[sim]\nreboot_exits = true\nrestripe_ms = 200\n",
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
    let Some(mut c) = cluster_with("r4", 3, 1, "[sim]\nrestripe_ms = 300\n", &[], |_, _| {}) else {
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
    let Some(c) = cluster_with("r5", 3, 1, "[sim]\nrestripe_ms = 200\n", &[], |_, _| {}) else {
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
fn canaries_go_first_soak_then_the_rollout_goes_on_and_a_failing_one_rolls_back_alone() {
    let Some(c) = cluster_with("can1", 3, 1, "[sim]\nrestripe_ms = 200\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    let coordinator = c.wait_coordinator("can1", Duration::from_secs(20), |_| true);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    // Checked first: a canary needs rolling reboots, fewer than the nodes.
    for (body, why) in [
        (
            json!({"image_path": "/platform.qimg", "canary": 1}),
            "set do_rolling_reboot",
        ),
        (
            json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "canary": 3}),
            "canary must be between 1 and 1",
        ),
        (
            json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "soak_secs": 3}),
            "set canary",
        ),
    ] {
        let (st, r) = clients[0].post("/v2/upgrade/prepare", &body.to_string());
        assert_eq!(st, 400, "{r}");
        assert!(r["description"].as_str().unwrap().contains(why), "{r}");
    }
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true, "auto_commit": true,
                "canary": 1, "soak_secs": 3})
        .to_string(),
    );
    assert_eq!(st, 202, "{r}");
    // The canary (never the coordinator's node) goes first; then the rollout
    // waits, said by the reboot manager, until the soak is over.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut soaked, mut canary) = (None, None);
    loop {
        if let Some((200, u)) =
            (0..3).find_map(|i| clients[i].try_get("/v1/qimg/cluster/upgrade").ok())
        {
            if u["soaking"] == true && soaked.is_none() {
                canary = u["batches"][0][0].as_u64();
                let r = (0..3).find_map(|i| clients[i].try_get("/v1/shutdown/reboot/status").ok());
                soaked = Some((Instant::now(), r.map(|(_, r)| r["state"].clone())));
                // Only the canary runs the new release meanwhile.
                let on_new = c
                    .agents
                    .iter()
                    .filter(|a| a.node.version().as_deref() == Some("7.1.0"))
                    .count();
                assert_eq!(on_new, 1, "{u}");
            }
            if u["phase"] == "committed" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the canary rollout did not end:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    let (_, reboot_state) = soaked.expect("the rollout soaked on its canary");
    assert_eq!(reboot_state, Some(json!("REBOOT_PAUSED")));
    assert_ne!(canary, Some(u64::from(coordinator)));
    for a in &c.agents {
        assert_eq!(a.node.version().as_deref(), Some("7.1.0"));
    }
    // The history keeps the canary's pause, its end, and the soak's length.
    let (_, h) = clients[0].get("/v1/qimg/upgrade/history");
    let pause = &h["upgrades"][0]["pauses"][0];
    assert_eq!(pause["canary"], true, "{h}");
    let soak = pause["resumed_ms"].as_u64().unwrap() - pause["at_ms"].as_u64().unwrap();
    assert!((3000..10_000).contains(&soak), "soaked {soak} ms: {h}");
    assert_eq!(h["upgrades"][0]["result"], "upgraded");
}

#[test]
fn a_failing_canary_rolls_back_alone_and_stops_the_rollout() {
    let Some(c) = cluster_with("can2", 3, 1, "[sim]\nrestripe_ms = 200\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().panic, c.upgrade.join("panic.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/panic.qimg", "do_rolling_reboot": true, "auto_commit": true, "canary": 1})
            .to_string(),
    );
    assert_eq!(st, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let h = loop {
        if let Some((200, h)) =
            (0..3).find_map(|i| clients[i].try_get("/v1/qimg/upgrade/history").ok())
            && h["upgrades"][0]["result"].is_string()
        {
            break h;
        }
        assert!(Instant::now() < deadline, "no end:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = &h["upgrades"][0];
    assert_eq!(r["result"], "rolled_back", "{h}");
    let canary = r["batches"][0][0].as_u64().unwrap() as usize;
    // Only the canary tried the new release; the others never rebooted.
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(
            a.node.running().slot,
            bootctl::layout::Slot::A,
            "node {}",
            i + 1
        );
        let steps: Vec<&str> = r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["id"] == i + 1)
            .flat_map(|n| n["steps"].as_array().unwrap().iter())
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        let tried = steps.contains(&"committing");
        assert_eq!(tried, i + 1 == canary, "node {}: {r}", i + 1);
        if i + 1 != canary {
            assert_eq!(steps.last(), Some(&"discarded"), "node {}: {r}", i + 1);
        }
    }
    assert!(
        r["pauses"].as_array().unwrap().is_empty(),
        "no soak after a failing canary: {r}"
    );
}
