//! The Web UI's Software Upgrade page in a real browser (headless Chromium over
//! WebDriver) against a cluster of simulated nodes: real etcd members, one
//! `qimgd` per node. The tests assert what the page shows (texts, dialogs,
//! enabled buttons) and then what the nodes run, and save a screenshot of every
//! state they reach (`$CARGO_TARGET_TMPDIR/webui/<test>/`).

mod common;

use std::time::{Duration, Instant};

use common::browser::{Browser, STEP_LIMIT};
use common::sim_cluster::*;
use common::*;

fn url(a: &Agentd) -> String {
    format!("https://127.0.0.1:{}/", a.port("127.0.0.1"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The version every node's API reports, once all agree (bounded).
fn versions(c: &Cluster) -> Vec<String> {
    let clients = logged_in_everywhere(c);
    clients
        .iter()
        .map(|cl| {
            cl.get("/v1/version").1["build_id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn log_in_refused_bundle_instant_upgrade_then_a_blocked_one() {
    // The browser first: skipped (opted out), nothing else runs.
    let rt = rt();
    let Some(mut b) = rt.block_on(Browser::start("instant", 1280, 800)) else {
        return;
    };
    let Some(c) = cluster("w1", 3, |_, _| {}) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let foreign = foreign_bundle(dir.path());
    std::fs::copy(&foreign, c.upgrade.join("foreign.qimg")).unwrap();
    std::fs::copy(&bundles().instant, c.upgrade.join("instant.qimg")).unwrap();
    let settled = build_bundle(
        dir.path(),
        "settle-7.0.2",
        &Rel {
            settle: Some((3600, "let 7.0.1 run a day first")),
            ..Rel::new("7.0.2", "7.0")
        },
        &key(1),
    );
    std::fs::copy(&settled, c.upgrade.join("settle.qimg")).unwrap();
    rt.block_on(async {
        b.c.goto(&url(&c.agents[0])).await.unwrap();
        assert_eq!(b.c.title().await.unwrap(), "Software Upgrade · qimg");
        b.shot("login").await;

        // A wrong password is refused, in words; the page stays on the login.
        b.log_in(USER, "not-the-password").await;
        b.wait_text("#login-error", "Wrong user name or password.", STEP_LIMIT)
            .await;
        assert!(!b.shown("#upgrade").await);
        b.shot("login-refused").await;
        b.log_in(USER, PASSWORD).await;
        b.wait_text("#current-version", "7.0.0", STEP_LIMIT).await;
        b.wait_for("three nodes listed", STEP_LIMIT, "#nodes tbody", |t| {
            t.matches("online").count() == 3
        })
        .await;
        assert!(b.enabled("#upgrade-button").await);
        b.shot("idle").await;

        // A bundle signed by another key: refused before any dialog, and why.
        b.fill("#path", "foreign.qimg").await;
        b.click("#upgrade-button").await;
        let t = b
            .wait_text(
                "#start-error",
                "The upgrade file /foreign.qimg was refused",
                STEP_LIMIT,
            )
            .await;
        assert!(t.contains("failed verification"), "{t}");
        assert!(!b.shown("#confirm").await, "no dialog for a refused bundle");
        b.shot("refused").await;

        // The instant upgrade, by keyboard alone: Enter in the path field, then
        // Enter on the dialog's focused Start Upgrade. The dialog shows both
        // versions and no reboot choice.
        b.fill("#path", "instant.qimg\u{E007}").await;
        b.wait_text("#confirm-title", "Ready to upgrade?", STEP_LIMIT)
            .await;
        assert_eq!(b.text("#dlg-current").await.as_deref(), Some("7.0.0"));
        assert_eq!(b.text("#dlg-new").await.as_deref(), Some("7.0.1"));
        assert!(
            b.text("#dlg-type")
                .await
                .unwrap()
                .contains("instant upgrade")
        );
        assert!(
            !b.shown("#rolling-option").await,
            "no rolling choice for an instant upgrade"
        );
        assert!(!b.shown("#complete-option").await);
        // Every node's checks and the cluster's, before it starts.
        b.wait_for("the assessment", STEP_LIMIT, "#dlg-assess-summary", |t| {
            t.ends_with("checks pass on every node and the cluster.")
        })
        .await;
        assert!(!b.shown("#dlg-override-row").await, "nothing to override");
        assert!(b.enabled("#start").await);
        b.shot("confirm-instant").await;
        let focused = b.c.active_element().await.unwrap();
        assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("start"));
        focused.send_keys("\u{E007}").await.unwrap();
        let t = b
            .wait_text(
                "#success",
                "You have successfully upgraded from 7.0.0 to 7.0.1.",
                Duration::from_secs(120),
            )
            .await;
        assert!(t.contains("Cluster downtime:"), "{t}");
        b.wait_text("#current-version", "7.0.1", STEP_LIMIT).await;
        b.wait_for("every node on 7.0.1", STEP_LIMIT, "#nodes tbody", |t| {
            t.lines().filter(|l| l.contains(" online 7.0.1 A ")).count() == 3
        })
        .await;
        // The history lists it: who, the versions, the result.
        let h = b
            .wait_for(
                "the upgrade in the history",
                STEP_LIMIT,
                "#history tbody",
                |t| t.contains("7.0.0 → 7.0.1") && t.contains("upgraded"),
            )
            .await;
        assert!(h.contains(&format!("user {USER:?} from 127.0.0.1")), "{h}");
        assert!(h.contains("#1") && h.contains("instant"), "{h}");
        assert!(!b.shown("#history-empty").await);
        b.shot("instant-done").await;

        // Until it is finalized, the upgrade may be rolled back and no other
        // starts: the page offers both, and Finalize ends that.
        let t = b
            .wait_text(
                "#finality-text",
                "Until you finalize it, the cluster can be rolled back to 7.0.0",
                STEP_LIMIT,
            )
            .await;
        assert!(t.contains("once it is finalized"), "{t}");
        assert!(b.shown("#rollback").await && b.shown("#finalize").await);
        assert!(
            !b.enabled("#upgrade-button").await,
            "the next upgrade waits"
        );
        assert!(!b.shown("#blocked").await, "the box says why, not a banner");
        b.shot("finalizable").await;
        b.click("#finalize").await;
        b.wait_text(
            "#success",
            &format!("Finalized by user {USER:?}."),
            STEP_LIMIT,
        )
        .await;
        assert!(!b.shown("#finality").await);
        assert!(b.enabled("#upgrade-button").await);

        // A release that asks for a settle period after the last upgrade: blocked,
        // until a time shown in the browser's time zone (not Unix seconds).
        b.fill("#path", "settle.qimg").await;
        b.click("#upgrade-button").await;
        let t = b
            .wait_text("#start-error", "This upgrade is blocked", STEP_LIMIT)
            .await;
        assert!(t.contains("let 7.0.1 run a day first"), "{t}");
        assert!(!t.contains("Unix time"), "{t}");
        assert!(!b.shown("#confirm").await);
        // It stays while the page refreshes the state.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            b.text("#start-error")
                .await
                .is_some_and(|t| t.contains("blocked"))
        );
        b.shot("blocked").await;

        // A reload shows the same truth, from the API alone.
        b.c.refresh().await.unwrap();
        b.wait_text("#current-version", "7.0.1", STEP_LIMIT).await;
        assert!(b.shown("#start-form").await);

        // At phone width nothing spills sideways but the node table's own scroller.
        b.c.set_window_size(390, 844).await.unwrap();
        b.c.refresh().await.unwrap();
        b.wait_text("#current-version", "7.0.1", STEP_LIMIT).await;
        let fits =
            b.c.execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            fits,
            serde_json::Value::Bool(true),
            "the page is wider than the phone"
        );
        b.shot("phone").await;
    });
    assert_eq!(versions(&c), ["7.0.1", "7.0.1", "7.0.1"], "{}", c.logs());
}

#[test]
fn rolling_reboot_goes_on_from_another_node_when_the_page_s_node_reboots() {
    let rt = rt();
    let Some(mut b) = rt.block_on(Browser::start("rolling", 1280, 800)) else {
        return;
    };
    let Some(c) = cluster_with(
        "w2",
        3,
        1,
        // Down long enough (4 s) for the page to notice, as a real reboot is.
        "[sim]\nrestripe_ms = 1500\nboot_ms = 4000\n",
        &[],
        |_, _| {},
    ) else {
        return;
    };
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    let first = url(&c.agents[0]);
    let first_port = c.agents[0].port("127.0.0.1");
    rt.block_on(async {
        b.c.goto(&first).await.unwrap();
        b.log_in(USER, PASSWORD).await;
        b.wait_text("#current-version", "7.0.0", STEP_LIMIT).await;
        b.fill("#path", "platform.qimg").await;
        b.click("#upgrade-button").await;
        b.wait_text("#confirm-title", "Ready to upgrade?", STEP_LIMIT)
            .await;
        assert_eq!(b.text("#dlg-new").await.as_deref(), Some("7.1.0"));
        // A platform upgrade offers both reboots; the batch size only for rolling,
        // within what the protection level allows (1 node failure: 1).
        assert!(b.shown("#complete-option").await && b.shown("#rolling-option").await);
        assert!(
            b.text("#reboot-choice")
                .await
                .unwrap()
                .contains("Complete reboot (with SMB and NFS client interruption)")
        );
        assert!(!b.shown("#per-batch").await);
        b.click("#rolling-option").await;
        assert!(b.shown("#per-batch").await);
        let e =
            b.c.find(fantoccini::Locator::Css("#per-batch"))
                .await
                .unwrap();
        assert_eq!(e.attr("max").await.unwrap().as_deref(), Some("1"));
        // The preview of the choice: the order of the reboots and the time
        // expected (no upgrade recorded yet: the defaults, said to be).
        let eta = b
            .wait_for("the rolling preview", STEP_LIMIT, "#dlg-eta", |t| {
                t.contains("Reboot order:")
            })
            .await;
        assert!(eta.starts_with("Expected time: about "), "{eta}");
        assert!(eta.contains("a default"), "{eta}");
        // One canary: the first node reboots alone, then the rollout waits.
        assert!(b.shown("#canary-option").await);
        b.click("#canary-option").await;
        b.shot("confirm-rolling").await;
        b.click("#start").await;

        // Preparing, then the rolling reboot with the reboot manager's numbers.
        b.wait_text("#phase-title", "Rolling reboot", Duration::from_secs(120))
            .await;
        b.wait_for("the rolling progress", STEP_LIMIT, "#phase-text", |t| {
            t.contains("Rebooted") && t.contains("of 3 nodes") && t.contains("batch")
        })
        .await;
        b.wait_for("the time left", STEP_LIMIT, "#phase-eta", |t| {
            t.starts_with("About ") && t.ends_with(" left.")
        })
        .await;
        assert!(
            b.shown("#pause").await,
            "pause is offered during a rolling reboot"
        );
        b.shot("rolling").await;

        // Pause: the reboot manager holds the next batch; Resume lets it go. (If
        // the page's own node is rebooting just then, the click is refused in
        // words and the operator clicks again from the node the page moved to.)
        // The canary's batch may be back first: then its wait is the pause.
        let canaries = |t: &str| t.starts_with("The canaries (");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut soaked_first = false;
        loop {
            if b.text("#phase-text").await.is_some_and(|t| canaries(&t)) {
                soaked_first = true;
                break;
            }
            if b.shown("#pause").await {
                b.click("#pause").await;
            }
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until
                && !b
                    .text("#phase-text")
                    .await
                    .is_some_and(|t| t.contains("(paused)"))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if b.text("#phase-text")
                .await
                .is_some_and(|t| t.contains("(paused)"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the reboots never paused");
        }
        if !soaked_first {
            b.wait_for("the resume button", STEP_LIMIT, "#resume", |_| true)
                .await;
            assert!(!b.shown("#pause").await);
            b.shot("paused").await;
            b.click("#resume").await;
            b.wait_for("the reboots going on", STEP_LIMIT, "#phase-text", |t| {
                !t.contains("(paused)")
            })
            .await;
        }
        // The canary back on 7.1.0: the rollout waits until resumed.
        let t = b
            .wait_for("the canary's wait", STEP_LIMIT, "#phase-text", canaries)
            .await;
        assert!(
            t.ends_with("run 7.1.0; the rollout goes on when you resume it."),
            "{t}"
        );
        assert!(b.shown("#resume").await && !b.shown("#pause").await);
        b.shot("canary").await;
        b.click("#resume").await;
        b.wait_for("the rollout going on", STEP_LIMIT, "#phase-text", |t| {
            !canaries(t)
        })
        .await;

        // Every node reboots, the page's own too: it carries on from another one.
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut moved_to = None;
        let mut restriping = None;
        loop {
            if let Some(t) = b.text("#success").await
                && t.contains("You have successfully upgraded from 7.0.0 to 7.1.0.")
            {
                break;
            }
            let now = b.c.current_url().await.unwrap();
            if moved_to.is_none() && now.port() != Some(first_port) {
                // The new node's page takes the token out of the address bar
                // when its document has loaded; the URL can be read before
                // that (CI did, under load), so wait for it, bounded.
                let cleared = Instant::now() + Duration::from_secs(15);
                let mut shown = now.to_string();
                while shown.contains("token=") && Instant::now() < cleared {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    shown = b.c.current_url().await.unwrap().to_string();
                }
                moved_to = Some(shown);
                b.shot("moved-to-another-node").await;
            }
            if restriping.is_none()
                && let Some(t) = b.text("#restriper").await
                && t.contains("Waiting for the data to be safe")
            {
                restriping = Some(t);
                b.shot("restriping").await;
            }
            assert!(
                Instant::now() < deadline,
                "no success within 240 s; the page shows {:?}\n{}",
                b.text("main").await,
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        b.shot("rolling-done").await;
        let moved_to = moved_to.expect("the page moved to another node while its own rebooted");
        let restriping = restriping.expect("the restriper's progress shown between batches");
        assert!(restriping.contains("% done"), "{restriping}");
        assert!(
            !moved_to.contains("token="),
            "the token stayed in the address bar 15 s after the move: {moved_to}"
        );
        b.wait_for(
            "every node on 7.1.0 from slot B",
            STEP_LIMIT,
            "#nodes tbody",
            |t| t.lines().filter(|l| l.contains(" online 7.1.0 B ")).count() == 3,
        )
        .await;

        // Not finalized: rolled back from the page, a node at a time, under
        // the same gate; the page follows it to the end on whichever node.
        b.wait_text("#finality-text", "can be rolled back to 7.0.0", STEP_LIMIT)
            .await;
        b.click("#rollback").await;
        b.wait_text("#rb-title", "Roll back to 7.0.0?", STEP_LIMIT)
            .await;
        assert!(
            b.shown("#rb-choice").await,
            "a platform upgrade: how they reboot"
        );
        assert_eq!(
            b.c.execute(
                "return document.getElementById('rb-rolling').checked",
                vec![]
            )
            .await
            .unwrap(),
            serde_json::Value::Bool(true),
            "a few at a time unless chosen otherwise"
        );
        b.shot("rollback-dialog").await;
        b.click("#rb-start").await;
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut saw_rolling_back = false;
        loop {
            if let Some(t) = b.text("#success").await
                && t.contains("The cluster was rolled back to 7.0.0")
            {
                assert!(t.contains(&format!("asked by user {USER:?}")), "{t}");
                break;
            }
            saw_rolling_back |= b
                .text("#phase-title")
                .await
                .is_some_and(|t| t == "Rolling back");
            assert!(
                Instant::now() < deadline,
                "not rolled back within 240 s; the page shows {:?}\n{}",
                b.text("main").await,
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(saw_rolling_back, "the page showed the rollback under way");
        assert!(!b.shown("#problem").await, "asked for: not a problem");
        b.wait_for(
            "every node on 7.0.0 from slot A",
            STEP_LIMIT,
            "#nodes tbody",
            |t| t.lines().filter(|l| l.contains(" online 7.0.0 A ")).count() == 3,
        )
        .await;
        b.shot("rolled-back-on-request").await;
    });
    assert_eq!(versions(&c), ["7.0.0", "7.0.0", "7.0.0"], "{}", c.logs());
    for a in &c.agents {
        assert_eq!(a.node.running().slot, bootctl::layout::Slot::A);
    }
}

#[test]
fn a_node_failing_its_new_release_rolls_the_cluster_back_and_the_page_says_why() {
    let rt = rt();
    let Some(mut b) = rt.block_on(Browser::start("rollback", 1280, 800)) else {
        return;
    };
    let Some(c) = cluster_with(
        "w3",
        3,
        1,
        // A rollback reboot long enough (2.3 s) to be seen at the page's 1 s pace.
        "[sim]\nrestripe_ms = 300\nshutdown_ms = 2000\n",
        &[],
        |_, _| {},
    ) else {
        return;
    };
    // Node 3's new slot panics at boot; the others boot the same bundle fine.
    let bad = &c.agents[2].node.node;
    std::fs::create_dir_all(bad.config.state.join("sim")).unwrap();
    std::fs::write(bad.config.state.join(upgrade::sim::FAULTS), "7.1 panic\n").unwrap();
    std::fs::copy(&bundles().platform, c.upgrade.join("platform.qimg")).unwrap();
    rt.block_on(async {
        b.c.goto(&url(&c.agents[0])).await.unwrap();
        b.log_in(USER, PASSWORD).await;
        b.wait_text("#current-version", "7.0.0", STEP_LIMIT).await;
        b.fill("#path", "platform.qimg").await;
        b.click("#upgrade-button").await;
        b.wait_text("#confirm-title", "Ready to upgrade?", STEP_LIMIT)
            .await;
        b.click("#rolling-option").await;
        b.click("#start").await;
        // While the committed nodes go back, the page says so and why.
        // The reason (naming the node) can follow the state by one poll.
        b.wait_for(
            "#problem to say the cluster rolls back because of node3",
            Duration::from_secs(240),
            "#problem",
            |t| {
                t.contains(
                    "The upgrade failed and the cluster is rolling back to the previous release",
                ) && t.contains("node3")
            },
        )
        .await;
        b.shot("rolling-back").await;
        let t = b
            .wait_text(
                "#problem",
                "The upgrade failed; every node is back on the release it ran before",
                Duration::from_secs(240),
            )
            .await;
        assert!(t.contains("node3"), "the failed node is named: {t}");
        b.wait_for(
            "every node on 7.0.0 from slot A",
            STEP_LIMIT,
            "#nodes tbody",
            |t| t.lines().filter(|l| l.contains(" online 7.0.0 A ")).count() == 3,
        )
        .await;
        // Nothing runs: a new upgrade can be started.
        assert!(b.shown("#start-form").await && b.enabled("#upgrade-button").await);
        assert!(!b.shown("#success").await);
        b.wait_for(
            "the rollback in the history",
            STEP_LIMIT,
            "#history tbody",
            |t| t.contains("rolled back: ") && t.contains("7.0.0 → 7.1.0"),
        )
        .await;
        b.shot("rolled-back").await;
    });
    assert_eq!(versions(&c), ["7.0.0", "7.0.0", "7.0.0"], "{}", c.logs());
}
