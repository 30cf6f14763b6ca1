//! Our `qq` rolls a platform upgrade over a three-node cluster (real etcd
//! members, three in-process agents): one line per node's step, the batches and
//! the data-safety gate on stderr, the end reported on stdout; then the
//! upgrade's record (`qq upgrade_history`) and its events in the journal, each
//! told once although the coordinator changed on the way (its node reboots
//! last and hands over).

mod common;

use std::process::Command;

use common::*;
use tests::etcd::{EtcdCluster, free_port, spec};

#[test]
fn rolling_upgrade_of_a_cluster_with_a_line_per_node() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("q1", 3, 1);
    let Some(etcd) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    let upgrade = d.path().join("upgrade");
    let journal = Journal::start();
    let mut agents = vec![];
    let mut nodes = vec![];
    let mut port2 = 0;
    for (n, dir) in s.nodes.iter().zip(&etcd.nodes) {
        let Some(node) = factory_node() else { return };
        let adir = d.path().join(&n.name);
        let p = free_port();
        if n.id == 2 {
            port2 = p;
        }
        let listen = [n.agent.to_string(), format!("127.0.0.2:{p}")];
        let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
        let config = agent_config(
            &node,
            &adir,
            &listen,
            Some(&upgrade),
            &format!(
                "cluster = \"{}\"\ncluster_lease_secs = 2\n{}[sim]\nrestripe_ms = 300\n",
                dir.dir.display(),
                journal.config()
            ),
        );
        agents.push(qimgd::daemon::spawn(qimgd::config::Config::load(&config).unwrap()).unwrap());
        nodes.push(node);
    }
    add_cluster_user(&etcd.nodes[0].dir);
    std::fs::copy(&bundles().platform, upgrade.join("platform.qimg")).unwrap();
    let qq = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qq"))
            .args(["--host", "127.0.0.2", "--port", &port2.to_string()])
            .arg("--credentials-store")
            .arg(d.path().join("credentials"))
            .args(args)
            .env_remove("QQ_NODE")
            .output()
            .unwrap()
    };
    let o = qq(&["login", "-u", AGENT_USER, "-p", AGENT_PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    assessment(&qq);
    preview_changes_nothing(&qq);
    let o = qq(&["upgrade_cluster", "--rolling", "--path", "/platform.qimg"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // A line per node and step the monitor saw (a fast node's prepare can end
    // between two polls: its prepare lines are not promised, its commit is).
    assert!(err.contains(": prepar"), "{err}");
    for name in ["node1", "node2", "node3"] {
        assert!(err.contains(&format!("{name}: committed")), "{err}");
    }
    assert!(err.contains("rolling reboot: batch 1/3"), "{err}");
    assert!(err.contains("rolling reboot: batch 3/3"), "{err}");
    assert!(err.contains("waiting for the restriper"), "{err}");
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n.running().slot, bootctl::layout::Slot::B, "node {}", i + 1);
    }
    let o = qq(&["nodes_list"]);
    let list = json(&o);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    history_of_the_rolling_upgrade(&qq, &journal);
    let next = build_bundle(
        &bundles().dir,
        "platform-7.2.0",
        &Rel::new("7.2.0", "7.2"),
        &key(1),
    );
    std::fs::copy(&next, upgrade.join("next.qimg")).unwrap();
    finalize_first_or_roll_back(&qq, &nodes, &journal);
    preview_from_the_history(&qq);
    drop(agents);
}

/// The committed upgrade stays finalizable: the next one is refused until it
/// is finalized, naming finalize; `rollback` brings every node back to slot A
/// batch by batch, the record says who asked; then nothing is left to
/// finalize or roll back.
fn finalize_first_or_roll_back(
    qq: &dyn Fn(&[&str]) -> std::process::Output,
    nodes: &[SimNode],
    journal: &Journal,
) {
    use qapi::history::{UpgradeHistory, UpgradeResult};
    for args in [
        &["upgrade_cluster", "--path", "/next.qimg"][..],
        &["upgrade_cluster", "--path", "/next.qimg", "--dry-run"][..],
    ] {
        let o = qq(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("is not finalized") && err.contains("qq upgrade_cluster finalize"),
            "{err}"
        );
    }
    let o = qq(&["upgrade_blocked"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("not finalized"));
    let o = qq(&["upgrade_cluster", "rollback"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    for name in ["node1", "node2", "node3"] {
        assert!(err.contains(&format!("{name}: rolled back")), "{err}");
    }
    assert!(err.contains("rolling reboot: batch 3/3"), "{err}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n.running().slot, bootctl::layout::Slot::A, "node {}", i + 1);
        assert_eq!(n.container().as_deref(), Some("7.0.0"), "node {}", i + 1);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let o = qq(&["upgrade_history", "--json"]);
        let h: UpgradeHistory = serde_json::from_slice(&o.stdout).unwrap();
        let r = h.upgrades[0].clone();
        if r.result == Some(UpgradeResult::RolledBack) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rolled back record within 10 s: {r:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(r.generation, 1, "the same upgrade's record");
    let by = r.rollback.as_ref().expect("who asked");
    assert_eq!(by.by, format!("user {AGENT_USER:?}"));
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("rolled back on request")
    );
    for n in &r.nodes {
        assert_eq!(
            n.outcome(),
            Some(qapi::types::NodeStep::RolledBack),
            "{n:?}"
        );
    }
    let finished = journal.wait_events("finished", 2, std::time::Duration::from_secs(10));
    assert_eq!(finished.len(), 2, "{:?}", journal.all());
    assert_eq!(finished[1]["QIMG_RESULT"], "rolled_back");
    assert_eq!(finished[1]["PRIORITY"], "6", "asked for: not a warning");
    // Nothing committed any more: neither again.
    for args in [
        &["upgrade_cluster", "rollback"][..],
        &["upgrade_cluster", "finalize"][..],
    ] {
        let o = qq(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("rolled_back, not committed"),
            "{}",
            stderr(&o)
        );
    }
}

/// `upgrade_assess`: every node's checks and the cluster's, in words and as
/// JSON; a file no node has fails (exit 1).
fn assessment(qq: &dyn Fn(&[&str]) -> std::process::Output) {
    use qapi::assess::{Assessment, CheckName, Verdict};
    let o = qq(&[
        "upgrade_assess",
        "--path",
        "/platform.qimg",
        "--num-nodes-to-reboot",
        "1",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let a: Assessment = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(a.schema, qapi::assess::ASSESSMENT_SCHEMA);
    assert_eq!(a.result, Verdict::Pass, "{a:?}");
    for node in 1..=3 {
        for name in [
            CheckName::Bundle,
            CheckName::ReleaseRules,
            CheckName::InactiveSlot,
            CheckName::FreeSpace,
        ] {
            assert!(
                a.checks
                    .iter()
                    .any(|c| c.name == name && c.node == Some(node)),
                "{name:?} of node {node}: {a:?}"
            );
        }
    }
    let quorum = a
        .checks
        .iter()
        .find(|c| c.name == CheckName::EtcdQuorum)
        .unwrap();
    assert!(
        quorum
            .message
            .contains("with the largest batch down 2 remain"),
        "{quorum:?}"
    );
    let o = qq(&["upgrade_assess", "--path", "/platform.qimg"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("pass release_rules (node 2): "), "{text}");
    assert!(text.ends_with("every check passes\n"), "{text}");
    let o = qq(&["upgrade_assess", "--path", "/none.qimg"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("FAIL bundle: no node has /none.qimg"),
        "{text}"
    );
}

/// `--dry-run` before any upgrade: the plan with the stated defaults, and
/// nothing started.
fn preview_changes_nothing(qq: &dyn Fn(&[&str]) -> std::process::Output) {
    let dry = [
        "upgrade_cluster",
        "--rolling",
        "--path",
        "/platform.qimg",
        "--dry-run",
    ];
    let o = qq(&[&dry[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let p: qapi::history::Preview = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p.schema, qapi::history::PREVIEW_SCHEMA);
    assert_eq!((p.mode, p.rolling), (qapi::types::PlanMode::Platform, true));
    assert_eq!(p.to_version, "7.1.0");
    // Three batches of one, the coordinator's node last.
    assert_eq!(p.batches.len(), 3, "{p:?}");
    assert!(p.batches.iter().all(|b| b.len() == 1), "{p:?}");
    assert!(
        p.phases.iter().all(|ph| ph.basis.contains("a default")),
        "{p:?}"
    );
    assert_eq!(
        p.total_ms,
        p.phases.iter().map(|ph| ph.expected_ms).sum::<u64>()
    );
    // In words too.
    let o = qq(&dry);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("upgrade 7.0.0 -> 7.1.0 (platform, rolling reboots)"),
        "{text}"
    );
    assert!(text.contains(" then "), "{text}");
    assert!(text.contains("nothing was started"), "{text}");
    // Nothing started: no upgrade recorded, the status idle.
    let o = qq(&["upgrade_history", "--json"]);
    let h: qapi::history::UpgradeHistory = serde_json::from_slice(&o.stdout).unwrap();
    assert!(h.upgrades.is_empty(), "{h:?}");
    let o = qq(&["upgrade_status"]);
    assert_eq!(json(&o)["state"], "UPGRADE_IDLE", "{}", stderr(&o));
}

/// `--dry-run` after one upgrade (rolled back): the times measured on it. The coordinator's
/// node (node 1 reboots last and hands over; whoever holds it now) is last.
fn preview_from_the_history(qq: &dyn Fn(&[&str]) -> std::process::Output) {
    let o = qq(&[
        "upgrade_cluster",
        "--rolling",
        "--path",
        "/next.qimg",
        "--dry-run",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: qapi::history::Preview = serde_json::from_slice(&o.stdout).unwrap();
    // Rolled back: the cluster runs 7.0.0 again; the upgrade it rolled back
    // had committed, and its times count.
    assert_eq!(p.from_version.as_deref(), Some("7.0.0"));
    assert!(
        p.phases[0]
            .basis
            .contains("measured over the last 1 prepare"),
        "{p:?}"
    );
    assert!(
        p.phases[1].basis.contains("3 batches; ")
            && p.phases[1]
                .basis
                .contains("per batch, measured over the last 1 platform commit"),
        "{p:?}"
    );
    assert!(p.phases.iter().all(|ph| ph.expected_ms > 0), "{p:?}");
}

/// The record of the rolling upgrade above, read back through `qq`, and its
/// events in the journal.
fn history_of_the_rolling_upgrade(qq: &dyn Fn(&[&str]) -> std::process::Output, journal: &Journal) {
    use qapi::history::{HISTORY_SCHEMA, UpgradeHistory, UpgradeResult};
    // The record ends once the coordinator saw the end: at most a poll after
    // `qq` did.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let h = loop {
        let o = qq(&["upgrade_history", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let h: UpgradeHistory = serde_json::from_slice(&o.stdout).unwrap();
        if h.upgrades.first().is_some_and(|r| r.result.is_some()) {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record did not end within 10 s: {h:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(h.schema, HISTORY_SCHEMA);
    assert_eq!(h.upgrades.len(), 1, "{h:?}");
    let r = &h.upgrades[0];
    assert_eq!(r.result, Some(UpgradeResult::Upgraded));
    assert_eq!(r.generation, 1);
    assert_eq!(
        (r.from_version.as_deref(), r.to_version.as_str()),
        (Some("7.0.0"), "7.1.0")
    );
    assert!(r.rolling);
    let started = r.started.as_ref().expect("who started it");
    assert_eq!(started.by, format!("user {AGENT_USER:?}"));
    assert!(started.from.starts_with("127.0.0."), "{started:?}");
    assert_eq!(r.batches.concat().len(), 3, "{r:?}");
    assert_eq!(r.nodes.len(), 3, "{r:?}");
    for n in &r.nodes {
        assert_eq!(n.outcome(), Some(qapi::types::NodeStep::Committed), "{n:?}");
        // Steps in the order the node reached them, by its own clock.
        assert!(
            n.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
            "{n:?}"
        );
    }
    let phases: Vec<_> = r.phases.iter().map(|p| p.phase).collect();
    use qapi::types::PlanPhase::*;
    assert_eq!(phases.first(), Some(&Preparing));
    assert!(phases.contains(&Committing), "{phases:?}");
    assert_eq!(phases.last(), Some(&Committed));
    assert!(r.ended_ms.unwrap() >= r.started_ms());
    // For people: one line per upgrade, one per node.
    let o = qq(&["upgrade_history"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("upgrade 1: 7.0.0 -> 7.1.0 (platform, rolling reboots): upgraded"),
        "{text}"
    );
    assert!(text.contains("node 3: "), "{text}");
    assert!(
        text.contains(&format!("by user {AGENT_USER:?} from 127.0.0.")),
        "{text}"
    );
    // Each transition told once, by whichever node coordinated then.
    let started = journal.events("started");
    assert_eq!(started.len(), 1, "{:?}", journal.all());
    assert_eq!(
        started[0]["MESSAGE_ID"],
        qapi::history::EventKind::Started.message_id()
    );
    assert_eq!(started[0]["QIMG_GENERATION"], "1");
    let finished = journal.wait_events("finished", 1, std::time::Duration::from_secs(10));
    assert_eq!(finished.len(), 1, "{:?}", journal.all());
    assert_eq!(finished[0]["QIMG_RESULT"], "upgraded");
    assert_eq!(finished[0]["PRIORITY"], "6");
    let committed: Vec<_> = journal
        .events("node_step")
        .into_iter()
        .filter(|e| e["QIMG_STEP"] == "committed")
        .map(|e| e["QIMG_NODE"].clone())
        .collect();
    let mut sorted = committed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["1", "2", "3"],
        "each node's commit once: {committed:?}"
    );
}
