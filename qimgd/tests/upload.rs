//! `PUT /v1/qimg/images/{name}` against a running `qimgd`: a bundle is named in
//! the upgrade directory only once it verified whole, and a refused, broken,
//! stalled or oversized upload leaves the directory as it was.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The settings these tests run the agent with: small limits, to reach them.
const LIMITS: &str = "upload_limit_mib = 4\nupload_idle_secs = 1\n";

fn agent() -> Option<Agentd> {
    Agentd::start_with(Options {
        extra: LIMITS.into(),
        ..Options::default()
    })
}

/// PUT `body` to `path` as Qumulo's and our `qq` would, with `Expect:
/// 100-continue` (`qapi`'s client): status and JSON answer.
fn put(a: &Agentd, token: Option<&str>, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let target = qapi::Target::Tcp {
        host: "127.0.0.2".into(),
        port: a.port("127.0.0.2"),
    };
    let mut c = qapi::Client::new(target, qapi::Options::default()).unwrap();
    c.set_token(token.map(str::to_owned));
    match c.put_stream::<serde_json::Value>(path, &mut &body[..], body.len() as u64, &mut |_| {}) {
        Ok(v) => (200, v),
        Err(e) => match e.status() {
            Some(s) => (
                s,
                json!({"error_class": e.class(), "description": e.to_string()}),
            ),
            None => panic!("PUT {path}: {e}"),
        },
    }
}

/// The names in the upgrade directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pin(bundle: &Path) -> qimg::BundlePin {
    let f = std::fs::File::open(bundle).unwrap();
    let size = f.metadata().unwrap().len();
    let r = qimg::BundleReader::open(std::io::BufReader::new(f)).unwrap();
    qimg::BundlePin::of(r.manifest_bytes(), size)
}

#[test]
fn an_upload_is_verified_whole_then_named() {
    let Some(a) = agent() else { return };
    // A fresh node: nobody has copied anything, there is no upgrade directory
    // yet (this answered 500 before the upload made it).
    std::fs::remove_dir_all(&a.upgrade_dir).unwrap();
    let c = a.logged_in();
    let b = &bundles().instant;
    let bytes = std::fs::read(b).unwrap();
    // The whole body is read before the answer: a plain client does.
    let (s, r) = c.put("/v1/qimg/images/next.qimg", &bytes);
    assert_eq!(s, 201, "{r}");
    let want = pin(b);
    assert_eq!(r["name"], "next.qimg");
    assert_eq!(r["image_path"], "/next.qimg");
    assert_eq!(r["size"], bytes.len() as u64);
    assert_eq!(r["version"], "7.0.1");
    assert_eq!(r["manifest_sha256"], want.manifest_sha256.to_string());
    assert_eq!(r["replaced"], false);
    assert_eq!(
        std::fs::read(a.upgrade_dir.join("next.qimg")).unwrap(),
        bytes
    );
    assert_eq!(names(&a.upgrade_dir), ["next.qimg"]);
    // What a prepare is given.
    let (s, v) = c.post(
        "/v2/upgrade/verify-image",
        &json!({"image_path": "/next.qimg"}).to_string(),
    );
    assert_eq!(
        (s, v["target_version"].as_str()),
        (200, Some("7.0.1")),
        "{v}"
    );
    // The same name again: refused, the file untouched, unless replaced.
    let other = std::fs::read(&bundles().platform).unwrap();
    let (s, r) = put(&a, c.token.as_deref(), "/v1/qimg/images/next.qimg", &other);
    assert_eq!(
        (s, r["error_class"].as_str()),
        (409, Some("fs_entry_exists_error")),
        "{r}"
    );
    assert!(
        r["description"].as_str().unwrap().contains("?replace=true"),
        "{r}"
    );
    assert_eq!(
        std::fs::read(a.upgrade_dir.join("next.qimg")).unwrap(),
        bytes
    );
    let (s, r) = c.put("/v1/qimg/images/next.qimg?replace=true", &other);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["replaced"], true);
    assert_eq!(r["version"], "7.1.0");
    assert_eq!(
        std::fs::read(a.upgrade_dir.join("next.qimg")).unwrap(),
        other
    );
    assert_eq!(names(&a.upgrade_dir), ["next.qimg"]);
}

/// A fresh node has no upgrade directory yet: a prepare naming a file there is
/// told the file is missing (in a cluster, handed to a node that has it); this
/// answered 500 "the upgrade directory cannot be read".
#[test]
fn a_node_without_an_upgrade_directory_lacks_the_file() {
    let Some(a) = agent() else { return };
    std::fs::remove_dir_all(&a.upgrade_dir).unwrap();
    let c = a.logged_in();
    let (s, r) = c.post(
        "/v2/upgrade/prepare",
        &serde_json::json!({"image_path": "/next.qimg"}).to_string(),
    );
    assert_eq!(s, 404, "{r}");
    assert_eq!(r["error_class"], "fs_no_such_entry_error", "{r}");
}

#[test]
fn refused_uploads_leave_nothing() {
    let Some(a) = agent() else { return };
    let c = a.logged_in();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(&bundles().instant).unwrap();
    let foreign = std::fs::read(foreign_bundle(dir.path())).unwrap();
    let mut altered = good.clone();
    let at = altered.len() - 4096;
    altered[at] ^= 0xff;
    let truncated = &good[..good.len() / 2];
    let too_big = vec![0u8; (4 << 20) + 1];
    let cases: Vec<(&str, &[u8], u16, &str, &str)> = vec![
        (
            "/v1/qimg/images/f.qimg",
            &foreign,
            400,
            "upgrade_image_damaged_error",
            "not a bundle this node accepts",
        ),
        (
            "/v1/qimg/images/a.qimg",
            &altered,
            400,
            "upgrade_image_damaged_error",
            "not a bundle this node accepts",
        ),
        (
            "/v1/qimg/images/t.qimg",
            truncated,
            400,
            "upgrade_image_damaged_error",
            "not a bundle this node accepts",
        ),
        (
            "/v1/qimg/images/.hidden",
            &good,
            400,
            "invalid_request_error",
            "is not a bundle name",
        ),
        (
            "/v1/qimg/images/x.qimg?force=1",
            &good,
            400,
            "invalid_request_error",
            "replace=true",
        ),
        (
            "/v1/qimg/images/big.qimg",
            &too_big,
            413,
            "http_payload_too_large_error",
            "upload limit of 4 MiB",
        ),
    ];
    for (path, body, status, class, words) in cases {
        let (s, r) = put(&a, c.token.as_deref(), path, body);
        assert_eq!(
            (s, r["error_class"].as_str()),
            (status, Some(class)),
            "{path}: {r}"
        );
        let d = r["description"].as_str().unwrap();
        assert!(d.contains(words), "{path}: {d}");
        assert_eq!(names(&a.upgrade_dir), Vec::<String>::new(), "{path}");
    }
    // Without a token nothing is read.
    let (s, r) = put(&a, None, "/v1/qimg/images/n.qimg", &good);
    assert_eq!(
        (s, r["error_class"].as_str()),
        (401, Some("http_unauthorized_error"))
    );
    assert_eq!(names(&a.upgrade_dir), Vec::<String>::new());
    // The agent still takes a good one.
    let (s, r) = c.put("/v1/qimg/images/ok.qimg", &good);
    assert_eq!(s, 201, "{r}");
}

/// One raw HTTP exchange on the agent's Unix socket (root is trusted there):
/// `head`, then `body` in `pieces` with `pause` between them; the answer's text.
fn raw(a: &Agentd, head: &str, pieces: &[&[u8]], pause: Duration) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&a.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    for p in pieces {
        // The agent may answer and close before the rest: that is its point.
        if s.write_all(p).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_stalled_upload_is_dropped_and_a_longer_body_refused() {
    let Some(a) = agent() else { return };
    let good = std::fs::read(&bundles().instant).unwrap();
    // Headers promise the whole bundle; a tenth comes, then nothing.
    let head = format!(
        "PUT /v1/qimg/images/stall.qimg HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        good.len()
    );
    let t = std::time::Instant::now();
    let out = raw(
        &a,
        &head,
        &[&good[..good.len() / 10]],
        Duration::from_millis(1500),
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("http_request_timeout_error"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A good bundle with other bytes after its end.
    let mut tail = good.clone();
    tail.extend_from_slice(b"more");
    let head = format!(
        "PUT /v1/qimg/images/tail.qimg HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        tail.len()
    );
    let out = raw(&a, &head, &[&tail], Duration::ZERO);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.contains("trailing data after the end of the bundle"),
        "{out}"
    );
    assert_eq!(names(&a.upgrade_dir), Vec::<String>::new());
}
