//! The cluster's users: managed on any node, the same on every node.

use super::*;

/// `qimgd --config <node's config> user ARGS`, the password (if any) on stdin.
fn user_cli(a: &Agentd, args: &[&str], password: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(agent_bin())
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

/// `qimgd --config <node's config> cluster rotate-token-key ARGS`.
fn rotate_cli(a: &Agentd, args: &[&str]) -> std::process::Output {
    std::process::Command::new(agent_bin())
        .arg("--config")
        .arg(&a.config)
        .args(["cluster", "rotate-token-key", "--grace-secs", "1"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_token_key_rolls_on_every_node_and_a_leaked_one_dies() {
    let Some(c) = cluster("tk", 3, |_, _| {}) else {
        return;
    };
    let (a1, a2, a3) = (&c.agents[0], &c.agents[1], &c.agents[2]);
    let with = |a: &Agentd, t: &str| Client {
        token: Some(t.to_owned()),
        ..a.client()
    };
    let status = |a: &Agentd, t: &str| with(a, t).get("/v1/version").0;
    // What a thief of the cluster's token.key mints: a token within policy.
    let file_key = std::fs::read(c.etcd.nodes[0].dir.join("token.key")).unwrap();
    let stolen = qimgd::token::TokenKey::from_bytes(&file_key);
    // Issued a little ahead (within the clocks' skew): the test user was just
    // added, and a token older than its password is void.
    let minted = || stolen.issue(USER, upgrade::now() + 5, 60);
    let before = login_until(a1, USER, PASSWORD, 200).unwrap();
    assert_eq!(status(a3, &minted()), 200, "before any rotation");

    // A rotation: nobody is logged out, the new key's tokens work everywhere.
    let o = rotate_cli(a2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("token key 1 signs new logins"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("token key 0 is refused from"),
        "{}",
        stdout(&o)
    );
    let after = login_until(a3, USER, PASSWORD, 200).unwrap();
    assert!(
        stolen.check(&after, upgrade::now(), 3600).is_err(),
        "signed with the new key"
    );
    for a in [a1, a2, a3] {
        assert_eq!(
            status(a, &before),
            200,
            "a token of the old key, during its last day"
        );
        assert_eq!(status(a, &after), 200, "a token of the new key");
    }

    // The old key leaked: retired at once. Its tokens and the thief's die on
    // every node; logins and the tokens of the newest key work.
    let o = rotate_cli(a1, &["--retire-now"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("token key 2 signs new logins"),
        "{}",
        stdout(&o)
    );
    let fresh = login_until(a2, USER, PASSWORD, 200).unwrap();
    for a in [a1, a2, a3] {
        let (st, b) = with(a, &minted()).get("/v1/version");
        assert_eq!(st, 401, "{b}");
        assert!(b.to_string().contains("retired key"), "{b}");
        assert_eq!(status(a, &before), 401);
        assert_eq!(status(a, &after), 401);
        assert_eq!(status(a, &fresh), 200);
    }
}
