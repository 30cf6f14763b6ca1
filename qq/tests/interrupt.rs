//! Interruptions: Ctrl-C during a monitored prepare, kill -9 at every state
//! transition then a restart, a second prepare while one runs, settle periods, and
//! `--no-monitor`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bootctl::layout::Slot;
use common::*;

/// Starts `qq args` paused at crash point `point` and returns once it got there.
fn start_paused(n: &SimNode, args: &[&str], point: &str, secs: Option<&str>) -> Child {
    let mut c = n.qq_cmd(args);
    c.env("QIMG_PAUSE_AT", point)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    if let Some(s) = secs {
        c.env("QIMG_PAUSE_SECS", s);
    }
    let mut child = c.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("qq ended before {point}: {seen}");
        }
        seen.push_str(&line);
        if line.contains(&format!("paused at {point}")) {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn assert_upgraded(n: &SimNode) {
    let s = n.status();
    assert_eq!(s["state"], "UPGRADE_COMMITTED", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_NO_ERROR", "{s}");
    let r = n.running();
    assert_eq!(
        (
            r.slot,
            r.version.as_ref().map(ToString::to_string).as_deref()
        ),
        (Slot::B, Some("7.1.0"))
    );
    assert_eq!(n.container().as_deref(), Some("7.1.0"));
    assert_eq!(
        n.entries(),
        vec![
            "qimg-demo-a-7.0.efi".to_string(),
            "qimg-demo-b-7.1.efi".to_string()
        ]
    );
}

#[test]
fn ctrl_c_during_the_slot_write_puts_the_node_back() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let slot_a = n.slot_bytes(Slot::A);
    let path = b.platform.to_str().unwrap();
    let child = start_paused(
        &n,
        &["upgrade_cluster", "prepare", "--path", path],
        "slot-write",
        Some("1"),
    );
    signal(&child, "-INT");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let s = n.status();
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_NO_ERROR", "{s}");
    assert_eq!(
        s["details"], "prepare cancelled; slot b reset to _empty",
        "{s}"
    );
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
    assert_eq!(n.slot_label(Slot::B), "_empty");
    assert_eq!(n.entries(), vec!["qimg-demo-a-7.0.efi".to_string()]);
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert!(!n.node.config.state.join("containers/7.1.0").exists());
    assert!(
        !n.node
            .config
            .state
            .join("containers/.partial-7.1.0")
            .exists()
    );
}

#[test]
fn kill_at_every_transition_of_a_platform_upgrade_then_finish_it() {
    if !have_boot_files() {
        return;
    }
    let b = bundles();
    let path = b.platform.to_str().unwrap();
    // (crash point, the state it leaves, the command that finishes the upgrade)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "state:UPGRADE_PREPARING",
            "UPGRADE_PREPARING",
            &["upgrade_cluster", "--path", path],
        ),
        (
            "step:write",
            "UPGRADE_PREPARING",
            &["upgrade_cluster", "--path", path],
        ),
        (
            "slot-write",
            "UPGRADE_PREPARING",
            &["upgrade_cluster", "--path", path],
        ),
        (
            "step:stage-entry",
            "UPGRADE_PREPARING",
            &["upgrade_cluster", "--path", path],
        ),
        (
            "state:UPGRADE_PREPARED",
            "UPGRADE_PREPARED",
            &["upgrade_cluster", "commit"],
        ),
        (
            "step:set-next",
            "UPGRADE_COMMITTING",
            &["upgrade_cluster", "commit"],
        ),
        (
            "step:reboot",
            "UPGRADE_COMMITTING",
            &["upgrade_cluster", "commit"],
        ),
        (
            "state:UPGRADE_COMMITTED",
            "UPGRADE_COMMITTED",
            &["boot_check"],
        ),
    ];
    for (point, left, next) in cases {
        let n = sim_node(&b.factory);
        let slot_a = n.slot_bytes(Slot::A);
        let mut child = start_paused(&n, &["upgrade_cluster", "--path", path], point, None);
        child.kill().unwrap();
        child.wait().unwrap();
        let s = n.status();
        assert_eq!(s["state"], *left, "{point}: {s}");
        if *left == "UPGRADE_PREPARING" || point.ends_with("set-next") {
            assert!(
                s["details"].as_str().unwrap().contains("interrupted"),
                "{point}: {s}"
            );
        }
        if point.ends_with("reboot") {
            assert!(
                s["details"]
                    .as_str()
                    .unwrap()
                    .contains("waiting for the reboot"),
                "{s}"
            );
        }
        assert_eq!(
            n.slot_bytes(Slot::A),
            slot_a,
            "{point}: the running slot changed"
        );
        let o = n.qq(next);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert_upgraded(&n);
        assert_eq!(n.slot_bytes(Slot::A), slot_a, "{point}");
    }
}

#[test]
fn power_lost_during_set_next_the_node_serves_and_commit_finishes() {
    if !have_boot_files() {
        return;
    }
    let b = bundles();
    let n = sim_node(&b.factory);
    let slot_a = n.slot_bytes(Slot::A);
    let path = b.platform.to_str().unwrap();
    let mut child = start_paused(
        &n,
        &["upgrade_cluster", "--path", path],
        "step:set-next",
        None,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The power goes: the container stops, the firmware boots whatever it picks, and
    // the boot path runs. No reboot was asked for, so nothing is decided: the node
    // serves and the commit waits for the operator.
    n.agent().runtime().stop().unwrap();
    upgrade::sim::boot_firmware(&n.node).unwrap();
    let o = n.qq(&["boot_check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_COMMITTING", "{s}");
    assert_eq!(s["step"], "set-next", "{s}");
    assert!(n.container().is_some(), "the node serves after the boot");
    let o = n.qq(&["upgrade_cluster", "commit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_upgraded(&n);
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
}

#[test]
fn kill_during_an_instant_swap_then_finish_it() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let path = b.instant.to_str().unwrap();
    let mut child = start_paused(&n, &["upgrade_cluster", "--path", path], "step:swap", None);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(n.status()["state"], "UPGRADE_COMMITTING");
    let o = n.qq(&["upgrade_cluster", "commit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
    assert_eq!(n.container().as_deref(), Some("7.0.1"));
}

#[test]
fn a_second_prepare_is_refused_while_one_runs() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let path = b.platform.to_str().unwrap();
    let mut first = start_paused(
        &n,
        &["upgrade_cluster", "prepare", "--path", path],
        "step:write",
        None,
    );
    let o = n.qq(&["upgrade_cluster", "prepare", "--path", path]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "upgrade blocked: another upgrade operation is running (pid {})",
            first.id()
        )),
        "{}",
        stderr(&o)
    );
    let s = n.status();
    assert_eq!(s["state"], "UPGRADE_PREPARING", "{s}");
    first.kill().unwrap();
    first.wait().unwrap();
    let o = n.qq(&["upgrade_cluster", "prepare", "--path", path]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_PREPARED");
}

#[test]
fn a_settle_period_blocks_until_it_passed() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let d = tempfile::tempdir().unwrap();
    let k = key(1);
    let long = build_bundle(
        d.path(),
        "long",
        &Rel {
            settle: Some((3600, "background restripe")),
            ..Rel::new("7.0.2", "7.0")
        },
        &k,
    );
    let short = build_bundle(
        d.path(),
        "short",
        &Rel {
            settle: Some((1, "index rebuild")),
            ..Rel::new("7.0.3", "7.0")
        },
        &k,
    );
    let o = n.upgrade(&b.instant);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        long.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = n.status();
    assert_eq!(s["is_blocked"], true, "{s}");
    let why = s["blocked_reason"].as_str().unwrap();
    assert!(
        why.contains("7.0.2 may be prepared 3600 s after the upgrade to 7.0.1")
            && why.contains("background restripe"),
        "{why}"
    );
    assert_eq!(s["error_state"], "UPGRADE_ERROR_NO_ERROR");
    std::thread::sleep(Duration::from_millis(1100));
    let o = n.upgrade(&short);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(
        (s["state"].as_str(), s["is_blocked"].as_bool()),
        (Some("UPGRADE_COMMITTED"), Some(false))
    );
}

fn wait_for(n: &SimNode, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = n.status();
        if s["state"] == state {
            return s;
        }
        assert!(Instant::now() < deadline, "never reached {state}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_monitor_returns_at_once_and_the_upgrade_goes_on() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let path = b.platform.to_str().unwrap();
    let o = n.qq(&["upgrade_cluster", "prepare", "--path", path, "--no-monitor"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be cancelled"), "{}", stderr(&o));
    let s = json(&o);
    assert!(
        ["UPGRADE_PREPARING", "UPGRADE_PREPARED"].contains(&s["state"].as_str().unwrap()),
        "{s}"
    );
    wait_for(&n, "UPGRADE_PREPARED");
    let o = n.qq(&["upgrade_cluster", "commit", "--no-monitor"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(&n, "UPGRADE_COMMITTED");
    // The background process has released the lock once the state says committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.node.store().unwrap().lock_holder().is_some() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_upgraded(&n);
}
