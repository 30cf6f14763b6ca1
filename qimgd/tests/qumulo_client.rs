//! Qumulo's own `qq` (qumulo-api 7.10.2.1, from pip) drives a `qimgd` serving a
//! simulated node: what that client prints and what the node then runs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn login_version_verify_and_an_instant_upgrade() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(a) = Agentd::start() else { return };
    let b = bundles();

    // Without a token (127.0.0.2 is not one of the client's local hosts).
    let o = a.qumulo(&qq, &["version"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Error 401"), "{}", stderr(&o));

    let o = a.qumulo(&qq, &["login", "-u", USER, "-p", "wrong password"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("auth_invalid_credentials_error"),
        "{}",
        stderr(&o)
    );
    let o = a.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = a.qumulo(&qq, &["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["revision_id"].as_str().unwrap().ends_with(" 7.0.0"),
        "{v}"
    );

    let path = a.place(&b.instant);
    let before = a.node_bytes();
    let o = a.qumulo(&qq, &["upgrade_verify_image", "--path", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["target_version"], "7.0.1");
    assert_eq!(v["upgrade_type"], "SOFTWARE_ONLY");
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(a.node_bytes(), before, "verify changes nothing");

    let o = a.qumulo(&qq, &["upgrade_blocked"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["is_blocked"], false, "{v}");

    // The web UI's habit: no leading slash.
    let o = a.qumulo(
        &qq,
        &["upgrade_cluster", "--path", path.trim_start_matches('/')],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}\n{}", stderr(&o), a.log());
    assert!(
        out.contains(
            "Upgrade from version 7.0.0 to 7.0.1 in progress. This will be a SOFTWARE_ONLY upgrade."
        ),
        "{out}"
    );
    assert!(out.contains("Upgrade committed"), "{out}");
    assert!(
        out.contains("Qumulo containers across the cluster will restart shortly"),
        "{out}"
    );
    assert_eq!(a.node.container().as_deref(), Some("7.0.1"));

    let o = a.qumulo(&qq, &["upgrade_status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Qumulo's lifecycle: a finished upgrade is IDLE again, its settings kept.
    assert!(finished(&s), "{s}");
    assert_eq!(s["progress"], 100);
    assert_eq!(s["error_info"], serde_json::Value::Null);
    assert_eq!(s["settings"]["install_path"], path);
    assert_eq!(s["settings"]["target_version"], "7.0.1");
    assert_eq!(s["settings"]["upgrade_type"], "SOFTWARE_ONLY");
    // No-flag upgrade_cluster sends auto_commit = --no-monitor (false): the
    // client committed itself on PREPARED.
    assert_eq!(s["settings"]["auto_commit"], false);
    // So Qumulo's client says no upgrade runs (it said "in progress" forever
    // while the agent answered COMMITTED)...
    let o = a.qumulo(&qq, &["upgrade_status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(NO_UPGRADE), "{}", stdout(&o));
    // ...and the finished upgrade stays visible in the node's record.
    let (_, v1) = a.logged_in().get("/v1/upgrade/status");
    assert_eq!(
        (
            &v1["state"],
            &v1["from_version"],
            &v1["to_version"],
            &v1["mode"]
        ),
        (
            &json!("UPGRADE_COMMITTED"),
            &json!("7.0.0"),
            &json!("7.0.1"),
            &json!("instant")
        ),
        "{v1}"
    );

    let o = a.qumulo(&qq, &["version"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["revision_id"].as_str().unwrap().ends_with(" 7.0.1"),
        "{v}"
    );
}

#[test]
fn two_phase_platform_upgrade_with_the_simulated_reboot() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(a) = Agentd::start() else { return };
    let b = bundles();
    let o = a.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    let path = a.place(&b.platform);

    let o = a.qumulo(&qq, &["upgrade_verify_image", "--path", &path]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["upgrade_type"], "SOFTWARE_AND_PLATFORM", "{v}");

    let o = a.qumulo(&qq, &["upgrade_cluster", "prepare", "--path", &path]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}\n{}", stderr(&o), a.log());
    assert!(
        out.contains("This will be a SOFTWARE_AND_PLATFORM upgrade."),
        "{out}"
    );
    assert!(
        out.contains("Upgrade prepared, commit it to proceed"),
        "{out}"
    );
    assert_eq!(a.node.slot_label(bootctl::layout::Slot::B), "qimg-demo_7.1");
    assert_eq!(a.node.running().slot, bootctl::layout::Slot::A);

    let o = a.qumulo(&qq, &["upgrade_status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["state"], "UPGRADE_STATE_PREPARED", "{s}");

    let c = a.logged_in();
    let o = a.qumulo(&qq, &["upgrade_cluster", "commit"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}\n{}", stderr(&o), a.log());
    // The client's monitor: REBOOTING at its first poll prints only "Cluster is
    // rebooting"; COMMITTING first prints "Upgrade committed" and the rest.
    assert!(
        out.contains("Cluster is rebooting")
            || (out.contains("Upgrade committed") && out.contains("Cluster will reboot shortly")),
        "{out}"
    );

    // The node reboots (the API goes away), boots slot B, passes the health gate
    // and blesses it.
    let s = a.wait_status(
        &c,
        "the upgrade to finish after the reboot",
        Duration::from_secs(60),
        finished,
    );
    assert_eq!(s["error_info"], serde_json::Value::Null, "{s}");
    assert_eq!(a.node.running().slot, bootctl::layout::Slot::B);
    assert_eq!(a.node.version().as_deref(), Some("7.1.0"));
    let o = a.qumulo(&qq, &["version"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["revision_id"].as_str().unwrap().ends_with(" 7.1.0"),
        "{v}"
    );
    // The token survived the reboot: it is signed, not remembered.
    let o = a.qumulo(&qq, &["upgrade_status"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn one_command_platform_upgrade_and_no_monitor() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(a) = Agentd::start() else { return };
    let b = bundles();
    let o = a.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = a.logged_in();

    // --no-monitor: the client sends prepare with auto_commit and returns at once;
    // the agent goes on alone through prepare and commit.
    let path = a.place(&b.instant);
    let o = a.qumulo(&qq, &["upgrade_cluster", "--no-monitor", "--path", &path]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), a.log());
    let s = a.wait_status(&c, "the instant upgrade", Duration::from_secs(60), finished);
    assert_eq!(s["settings"]["auto_commit"], true, "{s}");
    assert_eq!(a.node.container().as_deref(), Some("7.0.1"));
    // The next upgrade waits until this one is finalized: Qumulo's client is
    // told why, and goes on once it is.
    let path = a.place(&b.platform);
    let o = a.qumulo(&qq, &["upgrade_cluster", "--path", &path]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(said.contains("is not finalized"), "{said}");
    let (st, f) = c.post("/v1/qimg/upgrade/finalize", "");
    assert_eq!(
        (st, &f["finalizable"]),
        (200, &serde_json::json!(false)),
        "{f}"
    );

    // One command, prepare then commit, through the reboot: losing the rebooting
    // node is not an error for the client.
    let path = a.place(&b.platform);
    let o = a.qumulo(&qq, &["upgrade_cluster", "--path", &path]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}\n{}", stderr(&o), a.log());
    assert!(out.contains("Upgrade from version 7.0.1 to 7.1.0"), "{out}");
    assert!(out.contains("Upgrade committed"), "{out}");
    a.wait_status(
        &c,
        "the upgrade to 7.1.0 to finish after the reboot",
        Duration::from_secs(60),
        |s| finished(s) && s["settings"]["target_version"] == "7.1.0",
    );
    assert_eq!(a.node.running().slot, bootctl::layout::Slot::B);
    assert_eq!(a.node.version().as_deref(), Some("7.1.0"));
}

#[test]
fn a_rollback_is_reported_as_the_clients_error() {
    let Some(qq) = qumulo_qq() else { return };
    let Some(a) = Agentd::start() else { return };
    let b = bundles();
    let o = a.qumulo(&qq, &["login", "-u", USER, "-p", PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = a.logged_in();
    let path = a.place(&b.unhealthy_platform);
    let o = a.qumulo(&qq, &["upgrade_cluster", "prepare", "--path", &path]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), a.log());
    let o = a.qumulo(&qq, &["upgrade_cluster", "commit"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), a.log());
    let s = a.wait_status(&c, "the rollback", Duration::from_secs(90), |s| {
        s["error_info"].is_string()
    });
    assert_eq!(s["state"], "UPGRADE_STATE_IDLE", "{s}");
    let info = s["error_info"].as_str().unwrap();
    assert!(info.contains("health"), "{info}");
    assert_eq!(a.node.running().slot, bootctl::layout::Slot::A);
    assert_eq!(a.node.version().as_deref(), Some("7.0.0"));
    // Qumulo's monitor prints the settings and the error.
    let o = a.qumulo(&qq, &["upgrade_status"]);
    let out = stdout(&o);
    assert!(
        out.contains("Upgrade from version 7.0.0 to 7.1.0 in progress"),
        "{out}\n{}",
        stderr(&o)
    );
    assert!(
        out.contains(&format!("Upgrade encountered error: {info}")),
        "{out}"
    );
    // Our report (v1) says the same, in the reference's shape.
    let (st, v1) = c.get("/v1/upgrade/status");
    assert_eq!(st, 200);
    assert_eq!(v1["error_state"], "UPGRADE_ERROR_ROLLED_BACK", "{v1}");
    assert_eq!(v1["schema"], "qq.upgrade_status/1");
}

#[test]
fn local_root_is_trusted_over_a_privileged_port_and_the_unix_socket() {
    let Some(qq) = qumulo_qq() else { return };
    // The client binds a privileged source port only when it runs as root.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !qutil::require::require(
        root,
        "root (the test checks the trust of local root)",
        "run the tests as root, as CI does",
        "QIMG_SKIP_ROOT_TESTS",
    ) {
        return;
    }
    let Some(a) = Agentd::start() else { return };
    // No login: as root against localhost, the client connects from a port in
    // 900-1023.
    let o = a.qumulo_at(&qq, "127.0.0.1", &["version"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), a.log());
    let o = a.qumulo_at(&qq, "127.0.0.1", &["upgrade_status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["state"], "UPGRADE_STATE_IDLE");
    // The same over the Unix socket. The CLI takes a socket only on a Qumulo node
    // (where --host may be left out), so the SDK's own connection class is used.
    let python = qq.with_file_name("python3");
    let script = format!(
        "import json, qumulo.lib.request as r, qumulo.rest.node_state as n\n\
         c = r.Connection(None, 8000, None, socket_path={:?})\n\
         print(json.dumps(n.get_node_state(c, None).data))\n",
        a.socket.to_str().unwrap()
    );
    let o = std::process::Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "ACTIVE", "{v}");
    assert_eq!(v["node_id"], 1);
    drop(a);

    // Turned off, the same client needs a token.
    let Some(a) = Agentd::start_with(Options {
        extra: "trust_local_root = false\n".into(),
        ..Options::default()
    }) else {
        return;
    };
    let o = a.qumulo_at(&qq, "127.0.0.1", &["version"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Error 401"), "{}", stderr(&o));
}
