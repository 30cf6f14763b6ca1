//! The agent under test: a `qimgd` process serving a simulated node (the upgrade
//! engine's fixtures: real bundles, disk images by `imagebuild disk`), Qumulo's
//! own `qq` client from the pinned pip venv, and a raw HTTPS client (ureq) for
//! requests no polite client sends.
#![allow(dead_code)]

pub mod browser;
#[path = "../../../qq/tests/common/mod.rs"]
pub mod fixtures;
pub mod sim_cluster;

use std::collections::HashMap;
use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use fixtures::*;

/// The test user and password.
pub const USER: &str = AGENT_USER;
pub const PASSWORD: &str = AGENT_PASSWORD;

/// How long the agent may take to start listening.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// Qumulo's `qq` (qumulo-api 7.10.2.1): `QIMG_QUMULO_QQ`, or the venv `cargo xtask
/// ci` installs. `None` (test skipped) only with QIMG_SKIP_QUMULO_CLIENT=1;
/// otherwise a missing client fails the test.
pub fn qumulo_qq() -> Option<PathBuf> {
    let p = std::env::var_os("QIMG_QUMULO_QQ")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/qimg/qumulo-api-7.10.2.1/bin/qq")
        });
    qutil::require::require(
        p.is_file(),
        "Qumulo's qq client (qumulo-api==7.10.2.1)",
        "`cargo xtask ci` installs it with pip into ~/.cache/qimg/qumulo-api-7.10.2.1",
        "QIMG_SKIP_QUMULO_CLIENT",
    )
    .then_some(p)
}

/// Whether a `/v3/upgrade/status` body says an upgrade finished committed:
/// Qumulo's lifecycle, `IDLE` again with the upgrade's settings and no error.
pub fn finished(s: &serde_json::Value) -> bool {
    s["state"] == "UPGRADE_STATE_IDLE" && s["settings"].is_object() && s["error_info"].is_null()
}

/// Qumulo's `qq upgrade_status` (human) once an upgrade ended: what its monitor
/// prints for `IDLE`.
pub const NO_UPGRADE: &str = "No upgrade currently in progress";

/// A running `qimgd` and its simulated node.
pub struct Agentd {
    child: Child,
    /// The node it serves.
    pub node: SimNode,
    /// Config, state, users, upgrade directory.
    pub dir: tempfile::TempDir,
    /// Ports by listen address.
    pub ports: HashMap<IpAddr, u16>,
    /// Where operators put upgrade files.
    pub upgrade_dir: PathBuf,
    /// The agent's stderr.
    pub log: PathBuf,
    /// The Unix socket.
    pub socket: PathBuf,
    /// Its qimgd.toml.
    pub config: PathBuf,
    env: Vec<(String, String)>,
}

/// Starts `qimgd serve` with `config`, stderr appended to `log`, and waits for its
/// two HTTPS listening lines (at most [`START_LIMIT`]).
/// The agent the tests run: `QIMG_AGENT_BIN` (`cargo xtask abuse` runs the
/// security suite against a release build so), else this build's `qimgd`.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("QIMG_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_qimgd")))
}

fn launch(config: &Path, env: &[(String, String)], log: &Path) -> (Child, HashMap<IpAddr, u16>) {
    let mut cmd = Command::new(agent_bin());
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .env_remove("QIMG_PAUSE_AT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ports = HashMap::new();
    let deadline = Instant::now() + START_LIMIT;
    while ports.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "qimgd did not listen within {START_LIMIT:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        if let Some(url) = line.strip_prefix("listening https://") {
            let addr: std::net::SocketAddr = url.parse().unwrap();
            ports.insert(addr.ip(), addr.port());
        }
    }
    (child, ports)
}

/// A change to a node before its agent starts.
pub type NodeEdit = Box<dyn Fn(&SimNode)>;

/// Settings a test changes.
#[derive(Default)]
pub struct Options {
    /// Extra lines for qimgd.toml.
    pub extra: String,
    /// Environment for the agent (crash points).
    pub env: Vec<(String, String)>,
    /// Listen addresses instead of 127.0.0.1:0 and 127.0.0.2:0 (keep one on
    /// 127.0.0.2: the raw client and Qumulo's client use it).
    pub listen: Option<Vec<String>>,
    /// A shared upgrade directory instead of the agent's own.
    pub upgrade_dir: Option<PathBuf>,
    /// Changes the node before its agent starts.
    pub node_edit: Option<NodeEdit>,
}

impl Agentd {
    /// A node made from the 7.0.0 factory bundle, served by a fresh agent with the
    /// test user, listening on 127.0.0.1 and 127.0.0.2 (ports chosen by the
    /// kernel) and a Unix socket. `None` when the fixtures' tools are missing and
    /// QIMG_SKIP_TOOL_TESTS=1.
    pub fn start() -> Option<Agentd> {
        Self::start_with(Options::default())
    }

    /// [`Agentd::start`] with options.
    pub fn start_with(o: Options) -> Option<Agentd> {
        let node = factory_node()?;
        let dir = tempfile::tempdir().unwrap();
        let listen: Vec<&str> = match &o.listen {
            Some(l) => l.iter().map(String::as_str).collect(),
            None => AGENT_LISTEN.to_vec(),
        };
        if let Some(edit) = &o.node_edit {
            edit(&node);
        }
        let config = agent_config(
            &node,
            dir.path(),
            &listen,
            o.upgrade_dir.as_deref(),
            &o.extra,
        );
        let upgrade_dir = o
            .upgrade_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("upgrade"));
        let socket = dir.path().join("run/rest.sock");
        let log = dir.path().join("qimgd.log");
        let (child, ports) = launch(&config, &o.env, &log);
        Some(Agentd {
            child,
            node,
            dir,
            ports,
            upgrade_dir,
            log,
            socket,
            config,
            env: o.env,
        })
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True once the agent's process ended (a simulated node powered off).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Starts the agent again with the same configuration (its start boots a
    /// simulated node that was powered off for a reboot).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, ports) = launch(&self.config, &self.env, &self.log);
        self.child = child;
        self.ports = ports;
    }

    /// The port on `ip` (127.0.0.1 or 127.0.0.2).
    pub fn port(&self, ip: &str) -> u16 {
        self.ports[&ip.parse::<IpAddr>().unwrap()]
    }

    /// Copies `bundle` into the upgrade directory as an operator would; returns
    /// the cluster path (`/name`).
    pub fn place(&self, bundle: &Path) -> String {
        let name = bundle.file_name().unwrap().to_str().unwrap();
        std::fs::copy(bundle, self.upgrade_dir.join(name)).unwrap();
        format!("/{name}")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Qumulo's `qq --host 127.0.0.2 --port P ARGS` (a token connection, since
    /// 127.0.0.2 is not among the client's local hosts), with its credentials in
    /// this agent's directory.
    pub fn qumulo(&self, qq: &Path, args: &[&str]) -> Output {
        self.qumulo_at(qq, "127.0.0.2", args)
    }

    /// Qumulo's `qq` against `host`.
    pub fn qumulo_at(&self, qq: &Path, host: &str, args: &[&str]) -> Output {
        let port = self.port(if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        });
        Command::new(qq)
            .args(["--host", host, "--port", &port.to_string()])
            .arg("--credentials-store")
            .arg(self.dir.path().join("qq-credentials"))
            .args(["--timeout", "30"])
            .args(args)
            .env("HOME", self.dir.path())
            .env("PYTHONWARNINGS", "ignore")
            .output()
            .unwrap()
    }

    /// A raw HTTPS client for 127.0.0.2 (certificate not verified: self-signed).
    pub fn client(&self) -> Client {
        Client::https(format!("https://127.0.0.2:{}", self.port("127.0.0.2")))
    }

    /// The agent's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// A client logged in as the test user.
    pub fn logged_in(&self) -> Client {
        self.client().login()
    }

    /// Polls `/v3/upgrade/status` until `done` says so, at most `limit`.
    pub fn wait_status(
        &self,
        c: &Client,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        c.wait_for("/v3/upgrade/status", what, limit, done, || {
            format!("agent log:\n{}", self.log())
        })
    }

    /// The node's disk and state record: what a refused request must not change.
    pub fn node_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let rec = self.node.node.store().unwrap().path();
        (self.node.disk(), std::fs::read(rec).unwrap_or_default())
    }

    /// Stops the agent (SIGTERM) and waits for it, at most `limit`.
    pub fn stop(&mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "qimgd did not stop within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agentd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTPS client.
pub struct Client {
    pub base: String,
    pub agent: ureq::Agent,
    pub token: Option<String>,
}

fn parse(body: String) -> serde_json::Value {
    if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))
    }
}

impl Client {
    /// A client of `base` (certificates not verified: self-signed).
    pub fn https(base: String) -> Client {
        Client {
            base,
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .tls_config(
                        ureq::tls::TlsConfig::builder()
                            .disable_verification(true)
                            .build(),
                    )
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build(),
            ),
            token: None,
        }
    }

    /// Logged in as the test user.
    pub fn login(mut self) -> Client {
        let (s, b) = self.post(
            "/v1/session/login",
            &serde_json::json!({"username": USER, "password": PASSWORD}).to_string(),
        );
        assert_eq!(s, 200, "{b}");
        self.token = Some(b["bearer_token"].as_str().unwrap().to_string());
        self
    }

    /// Polls GET `path` until `done` says so, at most `limit` (a node
    /// rebooting drops connections: tried again); a failure names `what`, the
    /// last answer and `context()`.
    pub fn wait_for(
        &self,
        path: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
        context: impl Fn() -> String,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            if let Ok((200, v)) = self.try_get(path) {
                if done(&v) {
                    return v;
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "waited {limit:?} for {what}; last {path}: {last}\n{}",
            context()
        );
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => r.header("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// GET: status and JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.try_get(path).unwrap()
    }

    /// GET, with connection errors returned.
    pub fn try_get(&self, path: &str) -> Result<(u16, serde_json::Value), ureq::Error> {
        let mut r = self
            .auth(self.agent.get(&format!("{}{path}", self.base)))
            .call()?;
        let s = r.status().as_u16();
        Ok((s, parse(r.body_mut().read_to_string().unwrap_or_default())))
    }

    /// PUT raw bytes: status and JSON answer.
    pub fn put(&self, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let mut r = self
            .auth(self.agent.put(&format!("{}{path}", self.base)))
            .send(body)
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        let s = r.status().as_u16();
        (s, parse(r.body_mut().read_to_string().unwrap_or_default()))
    }

    /// POST a raw body.
    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let mut r = self
            .auth(self.agent.post(&format!("{}{path}", self.base)))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        let s = r.status().as_u16();
        (s, parse(r.body_mut().read_to_string().unwrap_or_default()))
    }
}

/// Stdout of an output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A webhook of the test's own on 127.0.0.1: HTTPS with a self-signed
/// certificate (`ca`), answering 500 to the first `fail_first` posts and 200
/// to the rest, keeping each post's answer and JSON body.
pub struct WebhookReceiver {
    pub url: String,
    pub ca: PathBuf,
    posts: std::sync::Arc<std::sync::Mutex<Vec<(u16, serde_json::Value)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl WebhookReceiver {
    pub fn start(fail_first: usize) -> WebhookReceiver {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let files = qimgd::tls::TlsFiles {
            cert: dir.path().join("hook.crt"),
            key: dir.path().join("hook.key"),
        };
        qimgd::tls::ensure_self_signed(&files, &["127.0.0.1".into()]).unwrap();
        let cfg = qimgd::tls::server_config(&files, None).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!(
            "https://127.0.0.1:{}/hooks/qimg",
            l.local_addr().unwrap().port()
        );
        let posts = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, st) = (posts.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((sock, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                // The head, then the body its Content-Length says.
                let mut got = vec![];
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                    match tls.read(&mut buf) {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break None,
                    }
                };
                let Some(head_end) = head_end else { continue };
                // What is wrong with a post is kept (answer 0), not asserted
                // here: a panic would only stop the receiver.
                let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                let len: Option<usize> = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok());
                while got.len() < head_end + len.unwrap_or(0) {
                    match tls.read(&mut buf) {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let body = serde_json::from_slice::<serde_json::Value>(&got[head_end..]);
                let mut posts = p.lock().unwrap();
                let (Some(_), Ok(body), true) = (len, body, head.starts_with("post /hooks/qimg "))
                else {
                    posts.push((0, serde_json::Value::String(head)));
                    continue;
                };
                let status = if posts.len() < fail_first { 500 } else { 200 };
                posts.push((status, body));
                drop(posts);
                let _ = write!(
                    tls,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        WebhookReceiver {
            url,
            ca: files.cert,
            posts,
            stop,
            _dir: dir,
        }
    }

    /// The config lines that post an agent's events here.
    pub fn config(&self) -> String {
        format!(
            "event_webhook = \"{}\"\nevent_webhook_ca = \"{}\"\n",
            self.url,
            self.ca.display()
        )
    }

    /// Every post so far: the answer given and the body; a post that was not
    /// a JSON POST to the hook's path fails the test.
    pub fn posts(&self) -> Vec<(u16, serde_json::Value)> {
        let posts = self.posts.lock().unwrap().clone();
        if let Some((_, head)) = posts.iter().find(|(s, _)| *s == 0) {
            panic!("not a JSON POST to /hooks/qimg: {head}");
        }
        posts
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
