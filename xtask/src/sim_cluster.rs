//! A cluster of simulated nodes on this machine, as the demo and the cluster bench
//! run it: release `qimg`/`qq`/`qimgd` binaries, a cluster made by `qimgd cluster
//! create` on free 127.0.0.1 ports, etcd members on the first 3 (5 from 8 nodes)
//! through `qimgd cluster member` (mutual TLS), one `qimgd serve` per node, a
//! user `bench` of the cluster (in etcd, added once by `qimgd user add` on node 1),
//! one upgrade directory every node sees or one per node. Dropped, it stops the
//! agents, the etcd members and the nodes' containers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_upgrade::Lab;
use crate::harness::release_build;
use crate::target_dir;

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io)
}

/// Child processes killed when dropped.
pub(crate) struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `ok`, at most `limit`, naming `what` when it gives up.
pub(crate) fn wait(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("waited {limit:?} for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `--nodes N` and `--dir DIR` of a command on a simulated cluster (`cmd` names
/// it in errors), with defaults.
pub(crate) fn nodes_and_dir(
    args: &[String],
    cmd: &str,
    mut nodes: u32,
    mut dir: PathBuf,
) -> Result<(u32, PathBuf), String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{cmd}: {a} needs a value"))?;
        match a.as_str() {
            "--nodes" => nodes = v.parse().map_err(|_| format!("{cmd}: --nodes: a number"))?,
            "--dir" => dir = PathBuf::from(v),
            other => return Err(format!("{cmd}: unknown argument {other}")),
        }
    }
    Ok((nodes, dir))
}

/// POSTs `body` (or nothing) to `path`.
pub(crate) fn post(
    c: &mut qapi::Client,
    path: &str,
    body: Option<&qapi::types::PrepareRequest>,
) -> Result<(), String> {
    match body {
        Some(b) => c.post(path, b),
        None => c.post_empty(path),
    }
    .map(|_| ())
    .map_err(|e| format!("POST {path}: {e}"))
}

/// Whether the node `c` asks is in state `want` (`false` while it does not
/// answer); an upgrade that failed is an error.
pub(crate) fn state_is(
    c: &mut qapi::Client,
    want: qapi::types::UpgradeState,
) -> Result<bool, String> {
    match c.get::<qapi::types::UpgradeStatus>("/v3/upgrade/status") {
        Ok(s) if s.error_info.is_some() => Err(format!("the upgrade failed: {:?}", s.error_info)),
        Ok(s) => Ok(s.state == want),
        Err(_) => Ok(false), // the node asked is rebooting: ask again
    }
}

/// Waits for the node `c` asks to be in state `want`, at most `limit`.
pub(crate) fn until(
    c: &mut qapi::Client,
    what: &str,
    want: qapi::types::UpgradeState,
    limit: Duration,
) -> Result<(), String> {
    poll(what, limit, || state_is(c, want))
}

/// Asks `ok` every 20 ms until it says yes or fails, at most `limit`.
fn poll(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if ok()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("waited {limit:?} for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cluster's shape: its nodes, how many may be down at once, the platform
/// tree of the releases its lab builds (MiB; the slots fit it), and whether
/// every node has an upgrade directory of its own (machines that share no file
/// system) or all see one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub nodes: u32,
    pub max_node_failures: u32,
    pub tree_mib: u64,
    pub apart: bool,
}

/// The running cluster.
pub(crate) struct SimCluster {
    /// Its name in etcd (`/qimg/<name>/…`).
    pub name: String,
    /// Nodes.
    pub nodes: u32,
    /// Voting etcd members.
    pub voters: u32,
    /// The agents' HTTPS ports, node 1 first.
    pub ports: Vec<u16>,
    /// The shared upgrade directory (with [`Layout::apart`], node 1's).
    pub upgrade: PathBuf,
    apart: bool,
    /// The `qimgd` binary.
    pub qimgd: PathBuf,
    /// Agents, node 1 first (the fields drop in order: agents before etcd).
    pub agents: Procs,
    /// etcd members.
    pub etcd: Procs,
    endpoints: String,
    /// The releases and the factory disk (dropped last).
    pub lab: Lab,
}

impl SimCluster {
    /// Builds the binaries (`release` or debug) and a factory release in `dir`
    /// (wiped), and starts the nodes of `layout`; `extra` is added to every
    /// agent's `qimgd.toml`.
    pub(crate) fn start(
        dir: &Path,
        name: &str,
        layout: Layout,
        extra: &str,
        release: bool,
    ) -> Result<SimCluster, String> {
        let Layout {
            nodes,
            max_node_failures,
            tree_mib,
            apart,
        } = layout;
        let bins = if release {
            release_build(&["imagebuild", "qq", "qimgd"])?;
            target_dir().join("release")
        } else {
            eprintln!("xtask: building imagebuild, qbootctl, qq, qimgd (first run: a few minutes)");
            crate::build_bins("build")?;
            target_dir().join("debug")
        };
        let qimgd = bins.join("qimgd");
        let lab = Lab::with_bins(dir, tree_mib, &bins)?;
        let w = lab.w.clone();
        let upgrade = if apart {
            w.join("n1/upgrade")
        } else {
            w.join("upgrade")
        };
        let voters = match nodes {
            0..=2 => nodes,
            3..=7 => 3,
            _ => 5,
        };
        let mut spec = format!("name = \"{name}\"\nmax_node_failures = {max_node_failures}\n");
        let mut ports = vec![];
        for i in 1..=nodes {
            let agent = free_port()?;
            spec.push_str(&format!(
                "[[node]]\nid = {i}\nname = \"node{i}\"\nagent = \"127.0.0.1:{agent}\"\n"
            ));
            if i <= voters {
                spec.push_str(&format!(
                    "etcd_client = \"127.0.0.1:{}\"\netcd_peer = \"127.0.0.1:{}\"\n",
                    free_port()?,
                    free_port()?
                ));
            }
            ports.push(agent);
        }
        std::fs::write(w.join("cluster.toml"), &spec).map_err(io)?;
        let ok = Command::new(&qimgd)
            .args(["cluster", "create", "--spec"])
            .arg(w.join("cluster.toml"))
            .arg("--out")
            .arg(w.join("c"))
            .stdout(Stdio::null())
            .status()
            .map_err(io)?;
        if !ok.success() {
            return Err("qimgd cluster create failed".into());
        }
        let endpoints: String = {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(w.join("c/node1/cluster.json")).map_err(io)?)
                    .map_err(|e| e.to_string())?;
            m["spec"]["node"]
                .as_array()
                .ok_or("no nodes")?
                .iter()
                .filter_map(|n| n["etcd_client"].as_str().map(|a| format!("https://{a}")))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Nodes from the lab's factory disk image, configs, users, etcd members.
        lab.fresh_node()?;
        let mut c = SimCluster {
            name: name.into(),
            nodes,
            voters,
            ports,
            upgrade,
            apart,
            qimgd,
            agents: Procs(vec![]),
            etcd: Procs(vec![]),
            endpoints,
            lab,
        };
        for i in 1..=nodes {
            let nd = c.node_dir(i);
            std::fs::create_dir_all(c.upgrade_dir(i)).map_err(io)?;
            Command::new(&c.lab.qq)
                .args(["sim_create", "--model", "bench", "--dir"])
                .arg(nd.join("node"))
                .arg("--disk")
                .arg(w.join("disk.img"))
                .arg("--bundle")
                .arg(&c.lab.factory)
                .arg("--key")
                .arg(w.join("k.pub"))
                .stdout(Stdio::null())
                .status()
                .map_err(io)?;
            let config = nd.join("qimgd.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = [\"127.0.0.1:{}\"]\nnode = \"node\"\nstate = \"state\"\nusers = \"users.json\"\nupgrade_dir = \"{}\"\ncluster = \"{}\"\n{extra}",
                    c.ports[i as usize - 1],
                    c.upgrade_dir(i).display(),
                    w.join(format!("c/node{i}")).display()
                ),
            )
            .map_err(io)?;
            if i <= voters {
                c.etcd.0.push(
                    Command::new(&c.qimgd)
                        .arg("--config")
                        .arg(&config)
                        .args(["cluster", "member", "--data-dir"])
                        .arg(nd.join("etcd"))
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(nd.join("etcd.log")).map_err(io)?)
                        .spawn()
                        .map_err(io)?,
                );
            }
        }
        for i in 1..=nodes {
            let nd = c.node_dir(i);
            c.agents.0.push(
                Command::new(&c.qimgd)
                    .arg("--config")
                    .arg(nd.join("qimgd.toml"))
                    .arg("serve")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(nd.join("qimgd.log")).map_err(io)?)
                    .spawn()
                    .map_err(io)?,
            );
        }
        let prefix = format!("/qimg/{name}/nodes/");
        wait("every node registered", Duration::from_secs(120), || {
            c.etcdctl(&["get", &prefix, "--prefix", "--keys-only"])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
                == nodes as usize
        })?;
        wait("a coordinator", Duration::from_secs(60), || {
            c.coordinator().is_some()
        })?;
        // etcd's access control on, as an operator does once the members run:
        // a role per node.
        let o = Command::new(&c.qimgd)
            .args(["cluster", "secure-etcd", "--out"])
            .arg(w.join("c"))
            .output()
            .map_err(io)?;
        if !o.status.success() {
            return Err(format!(
                "qimgd cluster secure-etcd: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        // The cluster's users are in etcd: the user is added once, on node 1.
        crate::harness::add_bench_user(&c.qimgd, &c.node_dir(1).join("qimgd.toml"))?;
        Ok(c)
    }

    /// Node `i`'s directory (1-based).
    pub(crate) fn node_dir(&self, i: u32) -> PathBuf {
        self.lab.w.join(format!("n{i}"))
    }

    /// Node `i`'s upgrade directory (1-based).
    pub(crate) fn upgrade_dir(&self, i: u32) -> PathBuf {
        if self.apart {
            self.node_dir(i).join("upgrade")
        } else {
            self.upgrade.clone()
        }
    }

    /// Waits for any node that answers to be in state `want`, at most `limit`
    /// (nodes reboot during a commit).
    pub(crate) fn until_any(
        &self,
        what: &str,
        want: qapi::types::UpgradeState,
        limit: Duration,
    ) -> Result<(), String> {
        poll(what, limit, || {
            for i in 1..=self.nodes {
                if let Ok(mut x) = self.client(i)
                    && state_is(&mut x, want)?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// etcdctl against the cluster with node 1's certificate; its stdout.
    pub(crate) fn etcdctl(&self, args: &[&str]) -> String {
        let d = self.lab.w.join("c/node1");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg(format!("--cacert={}", d.join("ca.crt").display()))
            .arg(format!("--cert={}", d.join("node.crt").display()))
            .arg(format!("--key={}", d.join("node.key").display()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// The plan as etcd holds it.
    pub(crate) fn plan(&self) -> Result<serde_json::Value, String> {
        let key = format!("/qimg/{}/plan", self.name);
        serde_json::from_str(&self.etcdctl(&["get", &key, "--print-value-only"]))
            .map_err(|e| format!("reading the plan: {e}"))
    }

    /// The coordinator's node id.
    pub(crate) fn coordinator(&self) -> Option<u32> {
        let key = format!("/qimg/{}/coordinator", self.name);
        self.etcdctl(&["get", &key, "--print-value-only"])
            .parse()
            .ok()
    }

    /// A client of node `i`'s agent (1-based), logged in as `bench`.
    pub(crate) fn client(&self, i: u32) -> Result<qapi::Client, String> {
        let mut c = qapi::Client::new(
            qapi::Target::Tcp {
                host: "127.0.0.1".into(),
                port: self.ports[i as usize - 1],
            },
            qapi::Options {
                root_port: false,
                ..qapi::Options::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let token = crate::harness::bench_login(&mut c)?;
        c.set_token(Some(token));
        Ok(c)
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        // Agents first (no reboot is played after this), then the containers.
        self.agents.0.iter_mut().for_each(|c| {
            let _ = c.kill();
            let _ = c.wait();
        });
        for i in 1..=self.nodes {
            let _ = Command::new(&self.lab.qq)
                .arg("--node")
                .arg(self.node_dir(i).join("node"))
                .arg("sim_poweroff")
                .stderr(Stdio::null())
                .status();
        }
    }
}
