//! Coordinators killed mid-upgrade, while a batch reboots and while the gate holds, and stopped cleanly (resigning).

use super::*;

#[test]
fn the_coordinator_killed_mid_upgrade_another_node_finishes_it() {
    let journal = Journal::start();
    // Every node's prepare pauses 2 s after recording its write step.
    let Some(mut c) = cluster_with(
        "t8",
        3,
        1,
        &journal.config(),
        &[("QIMG_PAUSE_AT", "step:write"), ("QIMG_PAUSE_SECS", "2")],
        |_, _| {},
    ) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().instant, c.upgrade.join("instant.qimg")).unwrap();
    let first = c.wait_coordinator("t8", Duration::from_secs(20), |_| true);
    let (st, r) = clients[first as usize % 3].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/instant.qimg", "auto_commit": true}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL the coordinator's agent in the middle of the prepare.
    let k = first as usize - 1;
    c.agents[k].kill();
    let second = c.wait_coordinator("t8", Duration::from_secs(20), |id| id != first);
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
    // The new coordinator went on with the record the first one began: one
    // upgrade, ended, every node's commit in it, each event told once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let (st, h) = clients[other].get("/v1/qimg/upgrade/history");
        assert_eq!(st, 200, "{h}");
        if h["upgrades"][0]["result"] == "upgraded" {
            break h;
        }
        assert!(Instant::now() < deadline, "no ended record in 10 s: {h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ups = h["upgrades"].as_array().unwrap();
    assert_eq!(ups.len(), 1, "{h}");
    assert_eq!(ups[0]["nodes"].as_array().unwrap().len(), 3, "{h}");
    assert_eq!(journal.events("started").len(), 1, "{:?}", journal.all());
    let finished = journal.wait_events("finished", 1, Duration::from_secs(10));
    assert_eq!(finished.len(), 1, "{:?}", journal.all());
}

#[test]
fn a_coordinator_stopped_cleanly_resigns_and_another_takes_over_at_once() {
    // Leases far longer than a takeover may take: only a resignation explains a
    // fast one (without it, the key goes when its lease expires, 60 s on).
    let Some(mut c) = cluster_with("rs", 3, 1, "cluster_lease_secs = 60\n", &[], |_, _| {}) else {
        return;
    };
    let first = c.wait_coordinator("rs", Duration::from_secs(30), |_| true);
    let stopping = &mut c.agents[first as usize - 1];
    let t = Instant::now();
    assert!(stopping.stop(Duration::from_secs(30)).success());
    let log = stopping.log();
    assert!(
        log.contains("resigned as the cluster's coordinator"),
        "{log}"
    );
    // Well within the 60 s lease.
    let next = c.wait_coordinator("rs", Duration::from_secs(20), |id| id != first);
    eprintln!(
        "node {next} took over {:.1} s after node {first} stopped",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn the_coordinator_killed_while_a_batch_reboots_and_while_the_gate_holds() {
    let Some(mut c) = cluster_with("kr", 4, 1, "[sim]\nrestripe_ms = 1500\n", &[], |_, _| {})
    else {
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
