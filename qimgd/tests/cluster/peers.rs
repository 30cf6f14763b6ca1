//! What a node serves to the cluster's other nodes: a bundle of its upgrade
//! directory over mutual TLS with the cluster's node certificates, resumable
//! with a range; nothing for a client without a node certificate. And the API
//! port's certificate is the node's, issued by the cluster's CA.

use super::*;

/// A client of agent `i` of `c` (0-based) on its cluster address, verifying the
/// agent against the cluster's CA, presenting node `as_node`'s certificate
/// (`None`: none, as an operator's client).
fn peer_client(c: &Cluster, i: usize, as_node: Option<usize>) -> qapi::Client {
    let addr = c.etcd.nodes[i].load().unwrap().spec.nodes[i].agent;
    let identity = as_node.map(|n| qapi::client::Identity {
        cert: c.etcd.nodes[n].cert(),
        key: c.etcd.nodes[n].key(),
    });
    qapi::Client::new(
        qapi::Target::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        qapi::Options {
            ca: Some(c.etcd.nodes[i].ca()),
            root_port: false,
            identity,
            ..qapi::Options::default()
        },
    )
    .unwrap()
}

fn fetch(client: &mut qapi::Client, path: &str, from: u64) -> Result<(u16, Vec<u8>), qapi::Error> {
    let mut got = Vec::new();
    let (status, len) = client.get_stream(path, from, &mut |b| {
        got.extend_from_slice(b);
        Ok(())
    })?;
    assert_eq!(len, got.len() as u64);
    Ok((status, got))
}

#[test]
fn a_node_serves_its_bundles_to_the_other_nodes_only() {
    let Some(c) = cluster("peers", 2, |_, _| {}) else {
        return;
    };
    let b = &bundles().instant;
    let bytes = std::fs::read(b).unwrap();
    std::fs::copy(b, c.upgrade.join("p.qimg")).unwrap();
    let path = "/v1/qimg/peer/images/p.qimg";

    // Node 2 fetches from node 1, the agent verified by the cluster's CA.
    let mut n2 = peer_client(&c, 0, Some(1));
    let (s, got) = fetch(&mut n2, path, 0).unwrap();
    assert_eq!(s, 200);
    assert_eq!(got, bytes);
    // A broken fetch resumes where it stopped.
    let (s, tail) = fetch(&mut n2, path, 1000).unwrap();
    assert_eq!(s, 206);
    assert_eq!(tail, &bytes[1000..]);
    let e = fetch(&mut n2, path, bytes.len() as u64).unwrap_err();
    assert_eq!(e.status(), Some(416), "{e}");
    let e = fetch(&mut n2, "/v1/qimg/peer/images/none.qimg", 0).unwrap_err();
    assert_eq!(
        (e.status(), e.class()),
        (Some(404), Some("fs_no_such_entry_error"))
    );
    let e = fetch(&mut n2, "/v1/qimg/peer/images/.upload-x", 0).unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");

    // Without a node certificate, a logged-in operator included: refused.
    let mut op = peer_client(&c, 0, None);
    let e = fetch(&mut op, path, 0).unwrap_err();
    assert_eq!(
        (e.status(), e.class()),
        (Some(403), Some("http_forbidden_error")),
        "{e}"
    );
    let token = c.agents[0].logged_in().token.unwrap();
    op.set_token(Some(token));
    let e = fetch(&mut op, path, 0).unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // ... while the operator's API works on the same port, the certificate
    // verified by the cluster's CA.
    let v: serde_json::Value = op.get("/v1/version").unwrap();
    assert!(v["revision_id"].is_string(), "{v}");

    // A certificate from another CA does not get through the handshake.
    let d = tempfile::tempdir().unwrap();
    let other = qcluster::pki::Ca::new("other").unwrap();
    let issued = other.issue("intruder", &["127.0.0.1".into()]).unwrap();
    let (cert, key) = (d.path().join("c.pem"), d.path().join("k.pem"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let addr = c.etcd.nodes[0].load().unwrap().spec.nodes[0].agent;
    let mut intruder = qapi::Client::new(
        qapi::Target::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        qapi::Options {
            root_port: false,
            identity: Some(qapi::client::Identity { cert, key }),
            ..qapi::Options::default()
        },
    )
    .unwrap();
    let e = fetch(&mut intruder, path, 0).unwrap_err();
    assert_eq!(e.status(), None, "refused by the handshake: {e}");
}

/// A fetch by node 2, called directly, of node 1's copy of a bundle (as
/// `big.qimg`).
struct Direct {
    bytes: Vec<u8>,
    pin: qimg::BundlePin,
    keys: qimg::TrustedKeys,
    nodes: Vec<qcluster::NodeSpec>,
    to: std::path::PathBuf,
    node2: qcluster::create::NodeDir,
}

impl Direct {
    /// Puts `b` in node 1's upgrade directory.
    fn new(c: &Cluster, b: &std::path::Path) -> Direct {
        let bytes = std::fs::read(b).unwrap();
        std::fs::copy(b, c.agents[0].upgrade_dir.join("big.qimg")).unwrap();
        let reader = qimg::BundleReader::open(std::fs::File::open(b).unwrap()).unwrap();
        let pin = qimg::BundlePin::of(reader.manifest_bytes(), bytes.len() as u64);
        Direct {
            bytes,
            pin,
            keys: qimg::TrustedKeys::new([key(1).public()]),
            nodes: c.etcd.nodes[1].load().unwrap().spec.nodes,
            to: c.agents[1].upgrade_dir.clone(),
            node2: c.etcd.nodes[1].clone(),
        }
    }

    fn fetch(&self) -> Result<qimgd::fetch::Fetched, qimgd::fetch::FetchProblem> {
        let peers = qimgd::fetch::peers(&self.nodes, 2);
        let (pin, keys) = (&self.pin, &self.keys);
        qimgd::fetch::fetch("big.qimg", &self.to, pin, keys, &self.node2, &peers, None)
    }
}

#[test]
fn a_fetch_waits_for_the_serving_agent_to_come_back() {
    // Node 1 has the bundle; its agent is down when node 2 starts fetching
    // (restarting, as after an upgrade of the agent) and back 3 s later. The
    // fetch keeps asking (pauses doubling, up to 30 s without a byte) and ends
    // with the bundle. It gave up after four tries 0.5 s apart, so a restart of
    // the serving agent failed every member's prepare.
    let Some(mut c) = cluster_apart("restart", 2) else {
        return;
    };
    let b = &bundles().platform;
    let d = Direct::new(&c, b);
    c.agents[0].kill();
    let fetched = std::thread::scope(|s| {
        let fetching = s.spawn(|| d.fetch());
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !fetching.is_finished(),
            "the fetch gave up while node 1 was down"
        );
        c.agents[0].restart();
        fetching.join().unwrap()
    });
    assert!(fetched.as_ref().is_ok_and(|f| f.new), "{fetched:?}");
    assert_eq!(std::fs::read(d.to.join("big.qimg")).unwrap(), d.bytes);
}

#[test]
fn a_fetch_cut_halfway_resumes_where_it_broke_off() {
    // Node 1 serves at 1 MiB/s; once node 2 has part of the bundle, node 1's
    // agent is killed (the stream breaks) and started again. The fetch takes
    // it up with a range from the byte it had, not from the start, and ends
    // with the bundle.
    let Some(mut c) = cluster_apart_with("resume", 2, "peer_serve_mib_per_s = 1\n") else {
        return;
    };
    // Bigger than the receiver's 1 MiB write buffer, so that a part of it
    // shows in the partial file.
    let made = tempfile::tempdir().unwrap();
    let b = &build_bundle_sized(
        made.path(),
        "big",
        &Rel::new("7.1.0", "7.1"),
        &key(1),
        6 << 20,
    );
    let d = Direct::new(&c, b);
    let partial = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let fetched = std::thread::scope(|s| {
        let fetching = s.spawn(|| d.fetch());
        let deadline = Instant::now() + Duration::from_secs(30);
        while partial(&d.to) < 1 << 20 {
            assert!(
                Instant::now() < deadline && !fetching.is_finished(),
                "node 2 held no 1 MiB of the bundle within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        c.agents[0].kill();
        std::thread::sleep(Duration::from_millis(500));
        c.agents[0].restart();
        fetching.join().unwrap()
    });
    let f = fetched.unwrap();
    assert!(f.new);
    assert!(!f.resumed_at.is_empty(), "the stream was never cut: {f:?}");
    for at in &f.resumed_at {
        assert!(
            *at >= 1 << 20 && *at < d.bytes.len() as u64,
            "taken up at byte {at} of {}, not where it broke off",
            d.bytes.len()
        );
    }
    assert_eq!(std::fs::read(d.to.join("big.qimg")).unwrap(), d.bytes);
}

#[test]
fn a_member_prepares_from_the_bundle_while_it_arrives() {
    // Node 1 serves a 6 MiB platform bundle at 1 MiB/s. Node 2's prepare reads
    // the bytes as its fetch receives them: its progress moves while the file
    // is not yet in its upgrade directory (it is named once verified), and it
    // ends prepared with the file. It fetched the whole bundle, then prepared.
    let Some(c) = cluster_apart_with("stream", 2, "peer_serve_mib_per_s = 1\n") else {
        return;
    };
    let made = tempfile::tempdir().unwrap();
    let b = build_bundle_sized(
        made.path(),
        "big",
        &Rel::new("7.1.0", "7.1"),
        &key(1),
        6 << 20,
    );
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(c.agents[0].upgrade_dir.join("big.qimg"), &bytes).unwrap();
    let file2 = c.agents[1].upgrade_dir.join("big.qimg");
    let via = c.agents[0].logged_in();
    let (s, r) = via.post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/big.qimg"}).to_string(),
    );
    assert_eq!(s, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    loop {
        let (_, plan) = via.get("/v1/qimg/cluster/upgrade");
        let progress = plan["nodes"][1]["progress"].as_u64().unwrap_or(0);
        if seen.is_none() && progress >= 10 && !file2.exists() {
            seen = Some(progress);
        }
        if plan["phase"] == "prepared" || plan["phase"] == "failed" {
            assert_eq!(plan["phase"], "prepared", "{plan}\n{}", c.agents[1].log());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not prepared within 60 s: {plan}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen.is_some(),
        "node 2's prepare did not move before its fetch ended\n{}",
        c.agents[1].log()
    );
    assert_eq!(std::fs::read(&file2).unwrap(), bytes);
}

/// Waits for the plan seen through `via` to reach `phase`, at most a minute.
fn wait_phase(a: &Agentd, via: &Client, phase: &str) -> serde_json::Value {
    via.wait_for(
        "/v1/qimg/cluster/upgrade",
        &format!("the plan {phase}"),
        Duration::from_secs(60),
        |p| p["phase"] == phase || (phase != "failed" && p["phase"] == "failed"),
        || a.log(),
    )
}

/// An instant upgrade to `/up.qimg` through node `via` (0-based), committed
/// at once: every node ends on 7.0.1.
fn instant_upgrade_through(c: &Cluster, via: usize) {
    let client = c.agents[via].logged_in();
    let (s, r) = client.post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/up.qimg", "auto_commit": true}).to_string(),
    );
    assert_eq!(s, 202, "{r}");
    let plan = wait_phase(&c.agents[via], &client, "committed");
    assert_eq!(plan["phase"], "committed", "{plan}");
    for (i, a) in c.agents.iter().enumerate() {
        let v = a.node.container();
        assert_eq!(v.as_deref(), Some("7.0.1"), "node {}", i + 1);
    }
}

#[test]
fn nodes_without_the_bundle_fetch_it_from_one_that_has_it() {
    // Three machines that share no file system; the bundle is on node 1 only.
    let Some(c) = cluster_apart("fetch", 3) else {
        return;
    };
    let b = &bundles().instant;
    let bytes = std::fs::read(b).unwrap();
    std::fs::write(c.agents[0].upgrade_dir.join("up.qimg"), &bytes).unwrap();
    for a in &c.agents[1..] {
        assert!(!a.upgrade_dir.join("up.qimg").exists());
    }
    instant_upgrade_through(&c, 0);
    for (i, a) in c.agents.iter().enumerate() {
        assert_eq!(std::fs::read(a.upgrade_dir.join("up.qimg")).unwrap(), bytes);
        let leftovers: Vec<_> = std::fs::read_dir(&a.upgrade_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .collect();
        assert!(leftovers.is_empty(), "node {}: {leftovers:?}", i + 1);
    }
    for a in &c.agents[1..] {
        assert!(a.log().contains("from another node in"), "{}", a.log());
    }
}

#[test]
fn a_peer_serving_altered_bytes_is_refused_naming_the_component() {
    // Node 2 takes the request with the good bundle; node 1, the first node
    // node 3 asks, holds a copy with one byte of a payload changed; node 3 has
    // none.
    let Some(c) = cluster_apart("altered", 3) else {
        return;
    };
    let b = &bundles().instant;
    let bytes = std::fs::read(b).unwrap();
    std::fs::write(c.agents[1].upgrade_dir.join("up.qimg"), &bytes).unwrap();
    let mut altered = bytes.clone();
    let at = altered.len() - 8192;
    altered[at] ^= 0x01;
    std::fs::write(c.agents[0].upgrade_dir.join("up.qimg"), &altered).unwrap();
    let via = c.agents[1].logged_in();
    let (s, r) = via.post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/up.qimg"}).to_string(),
    );
    assert_eq!(s, 202, "{r}");
    let plan = wait_phase(&c.agents[1], &via, "failed");
    assert_eq!(plan["phase"], "failed", "{plan}");
    let node3 = &plan["nodes"][2];
    let why = node3["error"].as_str().unwrap_or_default();
    assert!(why.contains("what a peer sent was refused"), "{plan}");
    assert!(
        why.contains("container") || why.contains("rootfs") || why.contains("uki"),
        "{why}"
    );
    assert!(!c.agents[2].upgrade_dir.join("up.qimg").exists());
    for a in &c.agents {
        assert_eq!(a.node.container().as_deref(), Some("7.0.0"));
    }
}

#[test]
fn a_prepare_through_a_node_without_the_file_goes_to_one_with_it() {
    // The bundle was uploaded to node 1 only; the operator asks node 2.
    let Some(c) = cluster_apart("relay", 3) else {
        return;
    };
    let b = &bundles().instant;
    std::fs::copy(b, c.agents[0].upgrade_dir.join("up.qimg")).unwrap();
    let via = c.agents[1].logged_in();
    // A file no node has: 404, the others' answers named.
    let (s, r) = via.post(
        "/v2/upgrade/prepare",
        &json!({"image_path": "/none.qimg"}).to_string(),
    );
    assert_eq!(
        (s, r["error_class"].as_str()),
        (404, Some("fs_no_such_entry_error")),
        "{r}"
    );
    assert!(
        r["description"]
            .as_str()
            .unwrap()
            .contains("nor on the others"),
        "{r}"
    );
    instant_upgrade_through(&c, 1);
    assert!(
        c.agents[1].log().contains("is on node 1, not here"),
        "{}",
        c.agents[1].log()
    );
    // The record names the operator who asked node 2, not node 2.
    let (st, h) = via.get("/v1/qimg/upgrade/history");
    assert_eq!(st, 200, "{h}");
    let started = &h["upgrades"][0]["started"];
    assert_eq!(started["by"], format!("user {USER:?}"), "{h}");
    assert!(started["from"].as_str().unwrap().starts_with("127."), "{h}");
    // Without a node certificate, the hand-over endpoint refuses.
    let mut op = peer_client(&c, 0, None);
    let e = op
        .post(
            "/v1/qimg/peer/upgrade/prepare",
            &json!({"image_path": "/up.qimg"}),
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
}
