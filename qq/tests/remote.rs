//! Our `qq` as a client of a real agent (`qimgd`, in-process on its own runtime)
//! serving a simulated node: login, the upgrades through the REST API (through
//! the simulated reboot), refusals and their exit codes, local root.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use bootctl::layout::Slot;
use common::*;

struct Served {
    node: SimNode,
    dir: tempfile::TempDir,
    agent: qimgd::daemon::Background,
}

fn serve(extra: &str) -> Option<Served> {
    let node = factory_node()?;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&node, dir.path(), AGENT_LISTEN, None, extra);
    let agent = qimgd::daemon::spawn(qimgd::config::Config::load(&config).unwrap()).unwrap();
    Some(Served { node, dir, agent })
}

impl Served {
    /// `qq --host HOST --port P ARGS` with this agent's credentials file.
    fn qq_at(&self, host: &str, args: &[&str]) -> Output {
        let port = self.agent.port(host).unwrap().to_string();
        Command::new(env!("CARGO_BIN_EXE_qq"))
            .args(["--host", host, "--port", &port, "--quiet"])
            .arg("--credentials-store")
            .arg(self.dir.path().join("credentials"))
            .args(args)
            .env_remove("QQ_NODE")
            .env_remove("QQ_HOST")
            .output()
            .unwrap()
    }

    /// As a user who logged in (127.0.0.2: never trusted as local root).
    fn qq(&self, args: &[&str]) -> Output {
        self.qq_at("127.0.0.2", args)
    }

    fn place(&self, bundle: &Path) -> String {
        let name = bundle.file_name().unwrap().to_str().unwrap();
        std::fs::copy(bundle, self.dir.path().join("upgrade").join(name)).unwrap();
        format!("/{name}")
    }

    fn login(&self) {
        let o = self.qq(&["login", "-u", AGENT_USER, "-p", AGENT_PASSWORD]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[test]
fn login_version_and_refusals_with_exit_codes() {
    let Some(s) = serve("") else { return };
    let o = s.qq(&["version"]);
    assert_eq!(o.status.code(), Some(2), "no token: {}", stderr(&o));
    assert!(stderr(&o).contains("qq login"), "{}", stderr(&o));
    let o = s.qq(&["login", "-u", AGENT_USER, "-p", "wrong"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    s.login();
    let mode = std::fs::metadata(s.dir.path().join("credentials"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let o = s.qq(&["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        json(&o)["revision_id"]
            .as_str()
            .unwrap()
            .ends_with(" 7.0.0")
    );

    let b = bundles();
    let before = s.node.disk();
    let p = s.place(&b.factory);
    let o = s.qq(&["upgrade_verify_image", "--path", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("already installed"), "{}", stderr(&o));
    let o = s.qq(&["upgrade_cluster", "--path", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("upgrade_image_refused_error"),
        "{}",
        stderr(&o)
    );
    let o = s.qq(&["upgrade_cluster", "commit"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("upgrade_wrong_state_error"),
        "{}",
        stderr(&o)
    );
    let o = s.qq(&["upgrade_cluster", "--path", "/missing.qimg"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(s.node.disk(), before);
    let o = s.qq(&["upgrade_blocked"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["is_blocked"], false);

    let o = s.qq(&["logout"]);
    assert!(o.status.success());
    assert_eq!(s.qq(&["version"]).status.code(), Some(2));
}

#[test]
fn instant_then_platform_upgrade_through_the_agent() {
    let Some(s) = serve("") else { return };
    s.login();
    let b = bundles();

    let p = s.place(&b.instant);
    let o = s.qq(&["upgrade_verify_image", "--path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["upgrade_type"], "SOFTWARE_ONLY");
    let o = s.qq(&["upgrade_cluster", "--path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = json(&o);
    assert_eq!(st["state"], "UPGRADE_COMMITTED", "{st}");
    assert_eq!(st["schema"], "qq.upgrade_status/1");
    assert_eq!(st["mode"], "instant");
    assert!(st["downtime_ms"].as_u64().unwrap() < 30_000);
    assert_eq!(s.node.container().as_deref(), Some("7.0.1"));
    // Kept: finalized (a node alone is a cluster of one).
    let o = s.qq(&["upgrade_cluster", "finalize"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f: qapi::rollback::Finality = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!f.finalizable && f.finalized.is_some(), "{f:?}");

    // Two phases, the commit through the reboot: the client waits for the node
    // to come back and reports the boot's outcome.
    let p = s.place(&b.platform);
    let o = s.qq(&["upgrade_cluster", "prepare", "--path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_PREPARED");
    assert_eq!(s.node.running().slot, Slot::A);
    let o = s.qq(&["upgrade_status", "--json"]);
    assert_eq!(json(&o)["state"], "UPGRADE_PREPARED");
    let o = s.qq(&["upgrade_cluster", "commit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = json(&o);
    assert_eq!(st["state"], "UPGRADE_COMMITTED", "{st}");
    assert_eq!(st["to_version"], "7.1.0");
    assert_eq!(s.node.running().slot, Slot::B);
    assert_eq!(s.node.version().as_deref(), Some("7.1.0"));
    // Not finalized: rolled back on request, through the node's reboot into
    // slot A; the node's engine records why.
    let o = s.qq(&["upgrade_cluster", "rollback", "--all-at-once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.node.running().slot, Slot::A);
    assert_eq!(
        s.node.version().as_deref(),
        Some("7.0.1"),
        "the release it ran"
    );
    assert_eq!(s.node.container().as_deref(), Some("7.0.1"));
    let st = s.node.agent().state().unwrap();
    let why = st.failure.expect("the rollback recorded").message;
    assert!(why.contains("rolled back on request by user"), "{why}");
}

#[test]
fn no_monitor_returns_at_once_and_a_rollback_exits_1() {
    let Some(s) = serve("") else { return };
    s.login();
    let b = bundles();
    let p = s.place(&b.panic);
    let o = s.qq(&["upgrade_cluster", "--no-monitor", "--path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = json(&o);
    assert!(
        [
            "UPGRADE_PREPARING",
            "UPGRADE_PREPARED",
            "UPGRADE_COMMITTING"
        ]
        .contains(&st["state"].as_str().unwrap()),
        "returned at once: {st}"
    );
    // The agent goes on alone (auto-commit): the new platform panics three times
    // and the node falls back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let st = loop {
        let o = s.qq(&["upgrade_status"]);
        if o.status.success() {
            let st = json(&o);
            if st["error_state"] != "UPGRADE_ERROR_NO_ERROR" {
                break st;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rollback within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(st["error_state"], "UPGRADE_ERROR_ROLLED_BACK", "{st}");
    assert_eq!(s.node.running().slot, Slot::A);
    assert_eq!(s.node.version().as_deref(), Some("7.0.0"));

    // The monitored form says so with exit 1.
    let p = s.place(&b.unhealthy_platform);
    let o = s.qq(&["upgrade_cluster", "--path", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("health"), "{}", stderr(&o));
    assert_eq!(json(&o)["error_state"], "UPGRADE_ERROR_ROLLED_BACK");
}

#[test]
fn local_root_needs_no_login() {
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
    let Some(s) = serve("") else { return };
    let o = s.qq_at("127.0.0.1", &["upgrade_status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_IDLE");
    let o = Command::new(env!("CARGO_BIN_EXE_qq"))
        .arg("--socket-path")
        .arg(s.dir.path().join("run/rest.sock"))
        .arg("--credentials-store")
        .arg(s.dir.path().join("none"))
        .arg("upgrade_blocked")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["is_blocked"], false);
}

#[test]
fn reboot_manager_and_nodes_on_a_node_of_one() {
    let Some(s) = serve("") else { return };
    s.login();
    let o = s.qq(&["reboot_status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "REBOOT_IDLE");
    assert_eq!(json(&o)["total_node_count"], 1);
    let o = s.qq(&["reboot_pause"]);
    assert_eq!(o.status.code(), Some(1), "nothing to pause: {}", stderr(&o));
    assert!(
        stderr(&o).contains("reboot_not_in_progress_error"),
        "{}",
        stderr(&o)
    );
    let o = s.qq(&["nodes_list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let n = json(&o);
    assert_eq!(n.as_array().unwrap().len(), 1);
    assert_eq!(n[0]["node_status"], "online");
}

#[test]
fn a_bundle_uploaded_with_qq_is_the_one_upgraded_to() {
    let Some(s) = serve("") else { return };
    s.login();
    let b = bundles();
    let f = b.instant.to_string_lossy().into_owned();
    let o = s.qq(&["upgrade_upload", "--file", &f, "--name", "up.qimg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = json(&o);
    assert_eq!(info["image_path"], "/up.qimg", "{info}");
    assert_eq!(info["version"], "7.0.1", "{info}");
    assert_eq!(
        info["size"],
        std::fs::metadata(&b.instant).unwrap().len(),
        "{info}"
    );
    let on_node = s.dir.path().join("upgrade/up.qimg");
    assert_eq!(
        std::fs::read(&on_node).unwrap(),
        std::fs::read(&b.instant).unwrap()
    );
    // Again under the same name: the agent says no before the bytes go (exit 1).
    let o = s.qq(&["upgrade_upload", "--file", &f, "--name", "up.qimg"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fs_entry_exists_error"),
        "{}",
        stderr(&o)
    );
    // Not logged in: the agent refuses before the bytes go (exit 2, the hint).
    let o = s.qq(&["logout"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.qq(&["upgrade_upload", "--file", &f, "--name", "other.qimg"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("qq login"), "{}", stderr(&o));
    assert!(!s.dir.path().join("upgrade/other.qimg").exists());
    s.login();
    // The uploaded path is what the upgrade installs.
    let o = s.qq(&["upgrade_cluster", "--path", "/up.qimg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.node.container().as_deref(), Some("7.0.1"));
}
