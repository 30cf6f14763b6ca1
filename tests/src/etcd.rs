//! A real etcd cluster for tests: `qimgd cluster create`'s files (through the
//! library), one `etcd` process per voting node on 127.0.0.1 ports the kernel had
//! free, mutual TLS from the cluster CA, and etcd's authentication on with a
//! role per node (`qimgd cluster secure-etcd`, through the library), as an
//! operator sets a cluster up: every test of the cluster runs under it.
//! Members stop when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qcluster::{ClusterSpec, NodeDir, NodeSpec};

/// How long the members may take to elect a leader and answer.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// A port that was free a moment ago, on every address. Handed out once per
/// process from below Linux's ephemeral range (32768–60999): a port taken from
/// that range (bind to port 0) can be given to someone else's outgoing connection
/// or to a parallel test before its owner binds it again.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts somewhere else in 20000–31999.
    let base = 20_000 + (std::process::id() * 977) % 10_000;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (base + n % 12_000) as u16;
        let port = if port >= 32_000 { port - 12_000 } else { port };
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000–31999")
}

/// A spec of `n` nodes on 127.0.0.1 with free ports.
pub fn spec(name: &str, n: u32, max_node_failures: u32) -> ClusterSpec {
    let voters = qcluster::spec::voter_count(n as usize) as u32;
    ClusterSpec {
        name: name.into(),
        max_node_failures,
        nodes: (1..=n)
            .map(|i| {
                let addr = |p: u16| format!("127.0.0.1:{p}").parse().expect("an address");
                NodeSpec {
                    id: i,
                    name: format!("node{i}"),
                    agent: addr(free_port()),
                    etcd_client: (i <= voters).then(|| addr(free_port())),
                    etcd_peer: (i <= voters).then(|| addr(free_port())),
                }
            })
            .collect(),
    }
}

/// Running etcd members and the cluster's files.
pub struct EtcdCluster {
    /// Where the files are (`ca/`, one directory per node, `etcd-<name>/` data).
    pub dir: PathBuf,
    /// Each node's cluster directory, in the spec's order.
    pub nodes: Vec<NodeDir>,
    members: Vec<(String, Child)>,
}

impl EtcdCluster {
    /// A connection to the cluster's etcd with node `i`'s certificate (index into
    /// `nodes`), every call limited to 10 s.
    pub async fn store(&self, i: usize) -> qcluster::Store {
        let n = &self.nodes[i];
        qcluster::Store::connect(&n.load().unwrap(), n, Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// Creates the cluster under `dir` and starts its voting members, etcd's
    /// authentication on (a role per node); `None` when etcd is missing and
    /// QIMG_SKIP_TOOL_TESTS=1 (else the test fails).
    pub fn start(dir: &Path, spec: &ClusterSpec) -> Option<EtcdCluster> {
        let c = Self::start_open(dir, spec)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(qcluster::access::secure(
            &dir.join("cluster"),
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|e| panic!("securing etcd: {}\n{}", qutil::chain(&e), c.logs()));
        Some(c)
    }

    /// [`EtcdCluster::start`] without etcd's authentication: for the store's
    /// contract checked from one connection acting as several nodes.
    pub fn start_open(dir: &Path, spec: &ClusterSpec) -> Option<EtcdCluster> {
        if !crate::tool("etcd") {
            return None;
        }
        let nodes = qcluster::create(spec, &dir.join("cluster")).expect("cluster create");
        let mut c = EtcdCluster {
            dir: dir.to_owned(),
            nodes,
            members: vec![],
        };
        for d in c.nodes.clone() {
            c.start_member(&d);
        }
        c.wait_healthy(START_LIMIT);
        Some(c)
    }

    /// Starts the member of node directory `d` (if the node is a voter).
    pub fn start_member(&mut self, d: &NodeDir) {
        let m = d.load().expect("cluster.json");
        let name = m.spec.node(m.node_id).expect("this node").name.clone();
        let data = self.dir.join(format!("etcd-{name}"));
        let Some(args) = qcluster::etcd::member_args(&m, d, &data) else {
            return;
        };
        let log = std::fs::File::create(self.dir.join(format!("etcd-{name}.log"))).expect("log");
        let child = Command::new("etcd")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members.push((name, child));
    }

    /// Kills the member of node `name` (SIGKILL).
    pub fn kill_member(&mut self, name: &str) {
        if let Some(i) = self.members.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.members.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl endpoint health` with node 1's certificate until every member is
    /// healthy, at most `limit`.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let o = self.etcdctl(&self.nodes[0], &["endpoint", "health"]);
            if o.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd members not healthy within {limit:?}: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `etcdctl` against every member with node directory `d`'s certificate.
    pub fn etcdctl(&self, d: &NodeDir, args: &[&str]) -> std::process::Output {
        let m = d.load().expect("cluster.json");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", m.spec.endpoints().join(",")))
            .arg(format!("--cacert={}", d.ca().display()))
            .arg(format!("--cert={}", d.cert().display()))
            .arg(format!("--key={}", d.key().display()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }

    /// The members' logs.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (n, _) in &self.members {
            s.push_str(&format!("--- etcd {n}\n"));
            let log =
                std::fs::read_to_string(self.dir.join(format!("etcd-{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
