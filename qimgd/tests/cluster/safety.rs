//! The data-safety gate's source: none on a real node without a probe, and a probed restriper.

use super::*;

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

/// A plan forged with a node's certificate (which may write any key in etcd):
/// every node rebooting at once in a "rolling" commit of a cluster that permits
/// one failure, then a batch that goes before the earlier ones are back. No
/// node reboots for either; each says why in its journal.
#[test]
fn a_forged_plan_that_takes_too_many_nodes_down_reboots_none() {
    let Some(c) = cluster_with("fp", 3, 1, "[sim]\nrestripe_ms = 200\n", &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/platform.qimg", "do_rolling_reboot": true}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    c.agents[0].wait_status(&clients[0], "PREPARED", Duration::from_secs(60), |s| {
        s["state"] == "UPGRADE_STATE_PREPARED"
    });
    let forge = |batches: serde_json::Value, batch: u32| {
        let mut p = c.plan("fp");
        p["phase"] = json!("committing");
        p["batches"] = batches;
        p["batch"] = json!(batch);
        p["batch_started_ms"] = json!(qcluster::plan::now_ms());
        let o = c
            .etcd
            .etcdctl(&c.etcd.nodes[1], &["put", "/qimg/fp/plan", &p.to_string()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let held = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.logs().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no node said {what:?} within 20 s:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // A few more looks: still nobody reboots.
        std::thread::sleep(Duration::from_secs(3));
        for (i, a) in c.agents.iter().enumerate() {
            assert_eq!(
                a.node.running().slot,
                bootctl::layout::Slot::A,
                "node {}: {}",
                i + 1,
                a.log()
            );
            let st = a.node.agent().state().unwrap();
            assert_eq!(st.phase(), upgrade::wire::Phase::Prepared, "node {}", i + 1);
        }
    };
    forge(json!([[1, 2, 3]]), 0);
    held(
        "does not reboot for it: batch 1 of plan 1 reboots 3 nodes at once; this cluster permits 1",
    );
    forge(json!([[1], [2], [3]]), 2);
    held(
        "does not reboot for it: plan 1 has batch 3 go while node 1 of an earlier batch is not back",
    );
}
