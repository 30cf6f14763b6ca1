//! The upgrade's events posted to a webhook (HTTPS, verified against its CA):
//! each event once, in order, the first tried again after a 500.

use super::*;

#[test]
fn the_events_reach_the_webhook_and_a_refused_post_is_tried_again() {
    let hook = WebhookReceiver::start(1);
    let Some(c) = cluster_with("ev1", 3, 1, &hook.config(), &[], |_, _| {}) else {
        return;
    };
    let clients = logged_in_everywhere(&c);
    std::fs::copy(&bundles().instant, c.upgrade.join("instant.qimg")).unwrap();
    let (st, r) = clients[0].post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/instant.qimg", "auto_commit": true}).to_string(),
    );
    assert_eq!(st, 202, "{r}");
    // The end reaches the webhook within a few seconds of the upgrade's end.
    let deadline = Instant::now() + Duration::from_secs(120);
    let posts = loop {
        let posts = hook.posts();
        if posts.iter().any(|(_, e)| e["kind"] == "finished") {
            break posts;
        }
        assert!(
            Instant::now() < deadline,
            "no finished event posted within 120 s: {posts:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The first post was refused (500) and tried again: the same event twice.
    assert_eq!(posts[0].0, 500);
    assert_eq!(posts[0].1, posts[1].1, "the refused event again");
    let accepted: Vec<&serde_json::Value> = posts
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, e)| e)
        .collect();
    for e in &accepted {
        assert_eq!(e["schema"], "qimg.upgrade_event/1", "{e}");
        assert_eq!(e["generation"], 1, "{e}");
        assert_eq!(e["to_version"], "7.0.1", "{e}");
    }
    let kinds: Vec<&str> = accepted
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"finished"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "started").count(),
        1,
        "{kinds:?}"
    );
    let committed = accepted
        .iter()
        .filter(|e| e["kind"] == "node_step" && e["step"] == "committed")
        .count();
    assert_eq!(committed, 3, "{kinds:?}");
    assert_eq!(accepted.last().unwrap()["result"], "upgraded");
}
