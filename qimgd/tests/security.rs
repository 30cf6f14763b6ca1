//! Bad input and attacks against a running `qimgd`, each refused with a clear JSON
//! error and the node's disk and state record byte-identical afterwards.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const AUTHED: &[(&str, &str)] = &[
    ("GET", "/v1/version"),
    ("GET", "/v1/node/state"),
    ("GET", "/v1/cluster/nodes/"),
    ("GET", "/v1/cluster/nodes/1"),
    ("GET", "/v1/shutdown/reboot/status"),
    ("GET", "/v1/upgrade/status"),
    ("GET", "/v2/upgrade/status"),
    ("GET", "/v3/upgrade/status"),
    ("GET", "/v2/upgrade/blocked"),
    ("POST", "/v2/upgrade/verify-image"),
    ("POST", "/v2/upgrade/prepare"),
    ("POST", "/v2/upgrade/commit"),
    ("PUT", "/v1/qimg/images/x.qimg"),
];

fn call(c: &Client, method: &str, path: &str) -> (u16, serde_json::Value) {
    match method {
        "GET" => c.get(path),
        "PUT" => c.put(path, b"not a bundle"),
        _ => c.post(path, r#"{"image_path":"/x.qimg"}"#),
    }
}

#[test]
fn every_endpoint_wants_a_valid_token() {
    let Some(a) = Agentd::start() else { return };
    let before = a.node_bytes();
    let anon = a.client();
    let good = a.logged_in();
    let token = good.token.clone().unwrap();
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let other_key = qimgd::token::TokenKey::from_bytes(&[9; 32]).issue(USER, upgrade::now(), 3600);
    let with = |t: &str| Client {
        token: Some(t.to_string()),
        ..a.client()
    };
    for (m, p) in AUTHED {
        for (who, c) in [
            ("no token", &anon),
            ("forged", &with(&forged)),
            ("another key", &with(&other_key)),
            ("garbage", &with("not-a-token")),
        ] {
            let (s, b) = call(c, m, p);
            assert_eq!(s, 401, "{who} {m} {p}: {b}");
            assert_eq!(b["error_class"], "http_unauthorized_error", "{b}");
        }
    }
    let (s, b) = good.get("/v1/cluster/nodes/");
    assert_eq!(s, 200, "{b}");
    assert_eq!(b[0]["id"], 1);
    assert_eq!(b[0]["model_number"], MODEL);
    let (s, b) = good.get("/v1/cluster/nodes/2");
    assert_eq!(
        (s, b["error_class"].as_str()),
        (404, Some("http_not_found_error"))
    );
    let (s, b) = good.get("/v1/shutdown/reboot/status");
    assert_eq!(s, 200);
    assert_eq!(b["state"], "REBOOT_IDLE");
    let (s, b) = good.get("/v9/nothing");
    assert_eq!(
        (s, b["error_class"].as_str()),
        (404, Some("http_not_found_error"))
    );
    assert_eq!(a.node_bytes(), before);
}

#[test]
fn tokens_minted_with_the_key_cannot_outlive_the_policy() {
    let Some(a) = Agentd::start() else { return };
    // Whoever reads the node's key can sign anything: not a ten-year token,
    // nor one issued in the future.
    let key =
        qimgd::token::TokenKey::load_or_create(&a.dir.path().join("state/token.key")).unwrap();
    let now = upgrade::now();
    let mint = |iat: u64, exp: u64| {
        key.sign(&qimgd::token::Claims {
            user: USER.into(),
            iat,
            exp,
            nonce: String::new(),
        })
    };
    for (what, t) in [
        ("ten years", mint(now, now + 10 * 365 * 86_400)),
        ("from the future", mint(now + 86_400, now + 86_400 + 60)),
    ] {
        let c = Client {
            token: Some(t),
            ..a.client()
        };
        let (s, b) = c.get("/v1/version");
        assert_eq!(s, 401, "{what}: {b}");
    }
    // What the key signs within the policy is accepted (the test is sound; a
    // few seconds ahead: the user was added a moment ago).
    let c = Client {
        token: Some(mint(now + 5, now + 65)),
        ..a.client()
    };
    assert_eq!(c.get("/v1/version").0, 200);
}

#[test]
fn tokens_expire() {
    let Some(a) = Agentd::start_with(Options {
        extra: "token_lifetime_secs = 1\n".into(),
        ..Options::default()
    }) else {
        return;
    };
    let c = a.logged_in();
    assert_eq!(c.get("/v3/upgrade/status").0, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let (s, b) = c.get("/v3/upgrade/status");
    assert_eq!(s, 401, "{b}");
    assert!(
        b["description"].as_str().unwrap().contains("expired"),
        "{b}"
    );
}

#[test]
fn tokens_die_with_their_user() {
    // The default lifetime: a 1-second token would expire while the CLI runs on
    // a loaded machine, and say "expired" instead (CI at 896ec73).
    let Some(a) = Agentd::start() else { return };
    // Users through the CLI: add one, log in, remove it: its token dies.
    let qimgd = |args: &[&str], stdin: &str| {
        let mut child = Command::new(agent_bin())
            .arg("--config")
            .arg(a.dir.path().join("qimgd.toml"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = qimgd(
        &["user", "add", "ops", "--password-stdin"],
        "ops-password-1\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = qimgd(
        &["user", "add", "ops", "--password-stdin"],
        "ops-password-1\n",
    );
    assert_eq!(o.status.code(), Some(2), "adding twice is an error");
    assert!(
        stderr(&o).contains("user ops already exists"),
        "{}",
        stderr(&o)
    );
    let o = qimgd(&["user", "list"], "");
    assert_eq!(stdout(&o), format!("{USER}\nops\n"));
    let mut ops = a.client();
    let (s, b) = ops.post(
        "/v1/session/login",
        &json!({"username": "ops", "password": "ops-password-1"}).to_string(),
    );
    assert_eq!(s, 200, "{b}");
    ops.token = Some(b["bearer_token"].as_str().unwrap().into());
    assert_eq!(ops.get("/v1/node/state").0, 200);
    let o = qimgd(&["user", "remove", "ops"], "");
    assert!(o.status.success(), "{}", stderr(&o));
    let (s, b) = ops.get("/v1/node/state");
    assert_eq!(s, 401, "{b}");
    assert!(
        b["description"].as_str().unwrap().contains("removed"),
        "{b}"
    );
}

#[test]
fn a_login_flood_checks_few_passwords_and_stays_small() {
    let Some(a) = Agentd::start() else { return };
    let before = a.peak_rss_mib();
    // 48 wrong-password logins at once from one address (127.0.0.2).
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..48)
            .map(|_| {
                s.spawn(|| {
                    a.client().post(
                        "/v1/session/login",
                        &json!({"username": USER, "password": "wrong"}).to_string(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let checked = answers.iter().filter(|(s, _)| *s == 401).count();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(
        checked as u32 <= qimgd::throttle::FREE_FAILURES,
        "{checked} passwords checked (peak RSS {:.1} MiB): {statuses:?}",
        a.peak_rss_mib()
    );
    for (s, b) in &answers {
        assert!([401, 429].contains(s), "{s} {b}");
    }
    let peak = a.peak_rss_mib();
    assert!(
        peak < 64.0,
        "peak RSS {peak:.1} MiB (before the flood {before:.1})"
    );
    // Another address logs in meanwhile.
    let other = Client::https(format!("https://127.0.0.1:{}", a.port("127.0.0.1")));
    let (s, b) = other.post(
        "/v1/session/login",
        &json!({"username": USER, "password": PASSWORD}).to_string(),
    );
    assert_eq!(s, 200, "{b}");
}

#[test]
fn held_connections_are_bounded_and_slow_bodies_closed() {
    use std::io::{Read, Write};
    let Some(a) = Agentd::start() else { return };
    // A client that promises a body and sends nothing is answered 408 and
    // closed within the body time limit.
    let mut slow = std::os::unix::net::UnixStream::connect(&a.socket).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"POST /v1/session/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let t = std::time::Instant::now();
    // One address (127.0.0.3) opens many more connections than it may hold,
    // and does nothing with them: what is over its cap is closed at once.
    let port = a.port("127.0.0.2");
    let conns: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            let from: std::net::SocketAddr = "127.0.0.3:0".parse().unwrap();
            s.bind(&from.into()).unwrap();
            let to: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
            s.connect(&to.into()).unwrap();
            s.into()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Held: a read waits (and times out); closed: it ends at once.
    let closed = conns
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut r: &std::net::TcpStream = c;
            match r.read(&mut [0u8; 1]) {
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                Ok(0) => true,
                Ok(_) => false,
            }
        })
        .count();
    let cap = qimgd::admission::PER_ADDRESS as usize;
    assert!(
        closed >= 200 - cap,
        "{closed} of 200 closed; the cap is {cap}"
    );
    // Another address is served meanwhile.
    let other = Client::https(format!("https://127.0.0.1:{}", a.port("127.0.0.1")));
    let (s, b) = other.post(
        "/v1/session/login",
        &json!({"username": USER, "password": PASSWORD}).to_string(),
    );
    assert_eq!(s, 200, "{b}");
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http_request_timeout_error"), "{answer}");
    let waited = t.elapsed();
    assert!(
        waited < qimgd::api::body::BODY_TIME_LIMIT + Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn a_valid_login_between_guesses_does_not_clear_them() {
    let Some(a) = Agentd::start() else { return };
    // The caller's own account, beside the one it guesses at.
    let users_file = a.dir.path().join("users.json");
    let mut users = qimgd::users::Users::load(&users_file).unwrap();
    users.add("mine", "my-own-password").unwrap();
    users.save(&users_file).unwrap();
    let c = a.client();
    let login = |u: &str, p: &str| {
        c.post(
            "/v1/session/login",
            &json!({"username": u, "password": p}).to_string(),
        )
    };
    // Each guess at the other's password follows a success of its own, from
    // the same address: the guesses still add up.
    for i in 0..qimgd::throttle::FREE_FAILURES {
        let (s, b) = login("mine", "my-own-password");
        assert_eq!(s, 200, "its own login {i}: {b}");
        let (s, b) = login(USER, "guess");
        assert_eq!(s, 401, "guess {i}: {b}");
    }
    let (s, b) = login("mine", "my-own-password");
    assert_eq!(s, 200, "{b}");
    let (s, b) = login(USER, "guess");
    assert_eq!(s, 429, "the next guess waits, unchecked: {b}");
    assert!(
        b["description"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("as {USER}")),
        "{b}"
    );
    // From another address of the same /24 too: the name is what is slowed.
    let other = Client::https(format!("https://127.0.0.1:{}", a.port("127.0.0.1")));
    let (s, b) = other.post(
        "/v1/session/login",
        &json!({"username": USER, "password": "guess"}).to_string(),
    );
    assert_eq!(s, 429, "{b}");
}

#[test]
fn failed_logins_are_slowed_down() {
    let Some(a) = Agentd::start() else { return };
    let c = a.client();
    let login = |p: &str| {
        c.post(
            "/v1/session/login",
            &json!({"username": USER, "password": p}).to_string(),
        )
    };
    for _ in 0..qimgd::throttle::FREE_FAILURES {
        let (s, b) = login("wrong");
        assert_eq!(s, 401, "{b}");
        assert_eq!(b["error_class"], "auth_invalid_credentials_error");
    }
    // Even the right password waits now, unchecked.
    let (s, b) = login(PASSWORD);
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error_class"], "auth_login_throttled_error");
    std::thread::sleep(Duration::from_millis(1100));
    let (s, b) = login(PASSWORD);
    assert_eq!(s, 200, "after the wait: {b}");
    // Unknown users fail the same way.
    let (s, b) = c.post(
        "/v1/session/login",
        &json!({"username": "nobody", "password": "x"}).to_string(),
    );
    assert_eq!(
        (s, b["error_class"].as_str()),
        (401, Some("auth_invalid_credentials_error"))
    );
    let log = a.log();
    let line = "audit: a failed login as \"nobody\" from 127.0.0.1: POST /v1/session/login -> 401";
    assert!(log.contains(line), "{line}\n{log}");
}

#[test]
fn malformed_bodies_and_bad_paths_change_nothing() {
    let Some(a) = Agentd::start() else { return };
    let b = bundles();
    let c = a.logged_in();
    let good = a.place(&b.instant);
    std::fs::create_dir_all(a.upgrade_dir.join("dir")).unwrap();
    std::fs::write(a.dir.path().join("outside.qimg"), b"x").unwrap();
    std::os::unix::fs::symlink("../outside.qimg", a.upgrade_dir.join("escape.qimg")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", a.upgrade_dir.join("zero.qimg")).unwrap();
    let before = a.node_bytes();
    let big = format!(r#"{{"image_path":"{}"}}"#, "a".repeat(70_000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not json", "{".into(), 400, "invalid_request_error"),
        ("empty", String::new(), 400, "invalid_request_error"),
        (
            "wrong type",
            json!({"image_path": 5}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "wrong type flag",
            json!({"image_path": good, "auto_commit": "yes"}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "unknown field",
            json!({"image_path": good, "force": true}).to_string(),
            400,
            "invalid_request_error",
        ),
        ("too big", big, 413, "http_payload_too_large_error"),
        (
            "traversal",
            json!({"image_path": "../outside.qimg"}).to_string(),
            400,
            "upgrade_invalid_image_path_error",
        ),
        (
            "symlink out",
            json!({"image_path": "escape.qimg"}).to_string(),
            400,
            "upgrade_invalid_image_path_error",
        ),
        (
            "device",
            json!({"image_path": "/zero.qimg"}).to_string(),
            400,
            "upgrade_invalid_image_path_error",
        ),
        (
            "directory",
            json!({"image_path": "dir"}).to_string(),
            400,
            "upgrade_invalid_image_path_error",
        ),
        (
            "missing",
            json!({"image_path": "/nope.qimg"}).to_string(),
            404,
            "fs_no_such_entry_error",
        ),
        (
            "batch without rolling",
            json!({"image_path": good, "num_nodes_to_reboot": 1}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "batch too big",
            json!({"image_path": good, "do_rolling_reboot": true, "num_nodes_to_reboot": 2})
                .to_string(),
            400,
            "invalid_request_error",
        ),
    ];
    for (what, body, status, class) in &cases {
        for ep in ["/v2/upgrade/prepare", "/v2/upgrade/verify-image"] {
            if ep.ends_with("verify-image") && what.starts_with("batch") {
                continue;
            }
            let (s, r) = c.post(ep, body);
            assert_eq!(
                (s, r["error_class"].as_str()),
                (*status, Some(*class)),
                "{what} {ep}: {r}"
            );
            assert!(!r["description"].as_str().unwrap().is_empty());
            assert_eq!(a.node_bytes(), before, "{what} {ep} changed the node");
        }
    }
    let (s, r) = c.post(
        "/v2/upgrade/prepare?override_compatibility_check=True",
        &json!({"image_path": good}).to_string(),
    );
    assert_eq!(
        (s, r["error_class"].as_str()),
        (400, Some("invalid_request_error")),
        "{r}"
    );
    let (s, r) = c.post("/v2/upgrade/commit", r#"{"now":true}"#);
    assert_eq!(
        (s, r["error_class"].as_str()),
        (400, Some("invalid_request_error")),
        "{r}"
    );
    // Commit with nothing prepared.
    let (s, r) = c.post("/v2/upgrade/commit", "");
    assert_eq!(
        (s, r["error_class"].as_str()),
        (409, Some("upgrade_wrong_state_error")),
        "{r}"
    );
    let (s, _) = c.get("/v2/upgrade/prepare");
    assert_eq!(s, 405);
    assert_eq!(a.node_bytes(), before);
}

#[test]
fn refused_bundles_change_nothing() {
    let Some(a) = Agentd::start() else { return };
    let c = a.logged_in();
    let dir = tempfile::tempdir().unwrap();
    let foreign = foreign_bundle(dir.path());
    let old = build_bundle(
        dir.path(),
        "old-6.9.0",
        &Rel {
            min_installed: "6.0",
            ..Rel::new("6.9.0", "7.0")
        },
        &key(1),
    );
    let before = a.node_bytes();
    for (bundle, class, words) in [
        (
            &foreign,
            "upgrade_image_damaged_error",
            "failed verification",
        ),
        (&old, "upgrade_image_refused_error", "downgrade"),
        (
            &bundles().factory,
            "upgrade_image_refused_error",
            "already installed",
        ),
    ] {
        let p = a.place(bundle);
        for ep in ["/v2/upgrade/verify-image", "/v2/upgrade/prepare"] {
            let (s, r) = c.post(ep, &json!({"image_path": p}).to_string());
            assert_eq!(
                (s, r["error_class"].as_str()),
                (400, Some(class)),
                "{ep} {p}: {r}"
            );
            let d = r["description"].as_str().unwrap();
            assert!(d.contains(words), "{d}");
            assert!(r["code"].is_string(), "{r}");
            // The file as the cluster names it; the node's own directories
            // stay in its journal.
            assert!(d.contains(&format!("bundle {p} ")), "{d}");
            let up = a.upgrade_dir.canonicalize().unwrap();
            assert!(!d.contains(&*up.to_string_lossy()), "{d}");
            assert!(!d.contains(&*a.dir.path().to_string_lossy()), "{d}");
        }
        assert_eq!(a.node_bytes(), before, "{p}");
    }
    assert!(
        a.log()
            .contains("answered 400 upgrade_image_damaged_error: bundle /"),
        "the full text in the journal"
    );
    let (_, s) = c.get("/v3/upgrade/status");
    assert_eq!(s["state"], "UPGRADE_STATE_IDLE", "{s}");
    // Each refused call is in the audit trail: who, from where, what, the answer.
    let log = a.log();
    let line = format!("audit: user {USER:?} from 127.0.0.1: POST /v2/upgrade/prepare -> 400");
    assert!(log.contains(&line), "{line}\n{log}");
}

#[test]
fn a_second_prepare_while_one_runs_is_refused_with_the_reason() {
    let Some(a) = Agentd::start_with(Options {
        env: vec![
            ("QIMG_PAUSE_AT".into(), "step:write".into()),
            ("QIMG_PAUSE_SECS".into(), "3".into()),
        ],
        ..Options::default()
    }) else {
        return;
    };
    let c = a.logged_in();
    let p = a.place(&bundles().platform);
    let body = json!({"image_path": p}).to_string();
    let (s, r) = c.post("/v2/upgrade/prepare", &body);
    assert_eq!(s, 202, "{r}\n{}", a.log());
    let (_, st) = c.get("/v3/upgrade/status");
    assert_eq!(st["state"], "UPGRADE_STATE_PREPARING", "{st}");
    let record = a.node_bytes().1;
    let (s, r) = c.post("/v2/upgrade/prepare", &body);
    assert_eq!(
        (s, r["error_class"].as_str()),
        (409, Some("upgrade_blocked_error")),
        "{r}"
    );
    assert!(
        r["description"]
            .as_str()
            .unwrap()
            .contains("is in progress"),
        "{r}"
    );
    let (s, r) = c.post("/v2/upgrade/commit", "");
    assert_eq!(s, 409, "{r}");
    let (_, bl) = c.get("/v2/upgrade/blocked");
    assert_eq!(bl["is_blocked"], true, "{bl}");
    assert_eq!(
        a.node_bytes().1,
        record,
        "the refused requests wrote nothing"
    );
    let s = a.wait_status(&c, "PREPARED", Duration::from_secs(60), |s| {
        s["state"] == "UPGRADE_STATE_PREPARED"
    });
    assert_eq!(s["progress"], 100);
}

#[test]
fn old_tls_versions_are_refused() {
    let Some(a) = Agentd::start() else { return };
    if !tests::tool("openssl") {
        return;
    }
    let addr = format!("127.0.0.2:{}", a.port("127.0.0.2"));
    let s_client = |args: &[&str]| {
        Command::new("openssl")
            .args(["s_client", "-connect", &addr])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for v in ["-tls1", "-tls1_1"] {
        // SECLEVEL=0 so the client really offers the old version.
        let o = s_client(&[v, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        let text = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!o.status.success(), "{v} accepted: {text}");
        // rustls answers an old ClientHello with a fatal alert (handshake failure).
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{v}: {text}"
        );
        assert!(text.contains("Cipher is (NONE)"), "{v}: {text}");
    }
    for (v, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let o = s_client(&[v]);
        let text = stdout(&o);
        assert!(
            text.contains(&format!("Protocol  : {name}")) || text.contains(&format!("New, {name}")),
            "{v}: {text}"
        );
    }
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let Some(a) = Agentd::start() else { return };
    if !tests::tool("openssl") {
        return;
    }
    let addr = format!("127.0.0.2:{}", a.port("127.0.0.2"));
    // The first certificate the agent presents, whitespace dropped.
    let served = || {
        let o = Command::new("openssl")
            .args(["s_client", "-connect", &addr, "-showcerts"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = stdout(&o);
        let begin = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate");
        let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin;
        text[begin..end].split_whitespace().collect::<String>()
    };
    let squeeze = |pem: &str| {
        let end = pem.find("-----END CERTIFICATE-----").unwrap();
        pem[..end].split_whitespace().collect::<String>()
    };
    let tls = a.dir.path().join("state/tls");
    let (cert, key) = (tls.join("qimgd.crt"), tls.join("qimgd.key"));
    assert_eq!(served(), squeeze(&std::fs::read_to_string(&cert).unwrap()));
    // A renewed pair, written as an operator's copy lands (key, then cert).
    let renewed = rcgen::generate_simple_self_signed(vec!["127.0.0.2".into()]).unwrap();
    qutil::fs::write_secret(&key, renewed.signing_key.serialize_pem().as_bytes()).unwrap();
    qutil::fs::write_atomic(&cert, renewed.cert.pem().as_bytes()).unwrap();
    assert_eq!(served(), squeeze(&renewed.cert.pem()), "served at once");
    // A key that is not the certificate's: the pair in use stays, said once.
    let other = rcgen::KeyPair::generate().unwrap();
    qutil::fs::write_secret(&key, other.serialize_pem().as_bytes()).unwrap();
    assert_eq!(served(), squeeze(&renewed.cert.pem()));
    assert_eq!(served(), squeeze(&renewed.cert.pem()));
    assert_eq!(
        a.log().matches("keeping the certificate in use").count(),
        1,
        "{}",
        a.log()
    );
    assert_eq!(a.logged_in().get("/v1/version").0, 200);
}
