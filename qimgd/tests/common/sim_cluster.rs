//! A cluster of simulated nodes for tests: real etcd members, one `qimgd`
//! process per node, one upgrade directory they all see.

use std::time::{Duration, Instant};

use tests::etcd::{EtcdCluster, spec};

use super::*;

/// A cluster of `n` simulated nodes: etcd members, one agent per node, one
/// upgrade directory all of them see. `edit` changes node `i` (0-based) first.
pub struct Cluster {
    pub _dir: tempfile::TempDir,
    /// The etcd members.
    pub etcd: EtcdCluster,
    /// One agent per node, in node order.
    pub agents: Vec<Agentd>,
    /// The upgrade directory every node sees.
    pub upgrade: std::path::PathBuf,
}

pub fn cluster(
    name: &str,
    n: u32,
    edit: impl Fn(usize, &SimNode) + Clone + 'static,
) -> Option<Cluster> {
    cluster_with(name, n, 1, "", &[], edit)
}

pub fn cluster_with(
    name: &str,
    n: u32,
    max_node_failures: u32,
    extra: &str,
    env: &[(&str, &str)],
    edit: impl Fn(usize, &SimNode) + Clone + 'static,
) -> Option<Cluster> {
    start(name, n, max_node_failures, extra, env, true, edit)
}

/// [`cluster`] of machines that share no file system: each agent has its own
/// upgrade directory (`Agentd::upgrade_dir`); `Cluster::upgrade` is node 1's.
pub fn cluster_apart(name: &str, n: u32) -> Option<Cluster> {
    cluster_apart_with(name, n, "")
}

/// [`cluster_apart`] with `extra` in every agent's `qimgd.toml`.
pub fn cluster_apart_with(name: &str, n: u32, extra: &str) -> Option<Cluster> {
    start(name, n, 1, extra, &[], false, |_, _| {})
}

fn start(
    name: &str,
    n: u32,
    max_node_failures: u32,
    extra: &str,
    env: &[(&str, &str)],
    shared: bool,
    edit: impl Fn(usize, &SimNode) + Clone + 'static,
) -> Option<Cluster> {
    let d = tempfile::tempdir().unwrap();
    let s = spec(name, n, max_node_failures);
    let etcd = EtcdCluster::start(d.path(), &s)?;
    let upgrade = d.path().join("shared-upgrade");
    let mut agents = vec![];
    for (i, (node, dir)) in s.nodes.iter().zip(&etcd.nodes).enumerate() {
        let e = edit.clone();
        agents.push(Agentd::start_with(Options {
            // Fixed ports: a restarted agent listens where it did.
            listen: Some(vec![
                node.agent.to_string(),
                format!("127.0.0.2:{}", tests::etcd::free_port()),
            ]),
            // A 2 s lease unless the test sets its own.
            extra: format!(
                "cluster = \"{}\"\n{}{extra}",
                dir.dir.display(),
                if extra.contains("cluster_lease_secs") {
                    ""
                } else {
                    "cluster_lease_secs = 2\n"
                }
            ),
            upgrade_dir: shared.then(|| upgrade.clone()),
            node_edit: Some(Box::new(move |sim| {
                patient(sim);
                e(i, sim)
            })),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })?);
    }
    // A node of a cluster reads the cluster's users, in etcd: the test user,
    // added once.
    fixtures::add_cluster_user(&etcd.nodes[0].dir);
    let upgrade = if shared {
        upgrade
    } else {
        agents[0].upgrade_dir.clone()
    };
    std::fs::create_dir_all(&upgrade).unwrap();
    Some(Cluster {
        _dir: d,
        etcd,
        agents,
        upgrade,
    })
}

/// Gives a node's containers 15 s to become healthy (the fixtures' 2 s is meant
/// for one node; a dozen agents and etcd members share two cores here).
pub fn patient(sim: &SimNode) {
    let p = &sim.node.config_path;
    let t = std::fs::read_to_string(p).unwrap();
    let t: String = t
        .lines()
        .filter(|l| !l.starts_with("health_timeout_secs"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(p, format!("health_timeout_secs = 15\n{t}")).unwrap();
}

impl Cluster {
    /// Every agent's log, for a failure message.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Plays the hardware of nodes whose agent powered off for a reboot: the
    /// node's etcd member goes down with it, then both start again (the agent's
    /// start boots the node). Until `done`, at most `limit`; returns how many
    /// boots it played.
    pub fn play_hardware(&mut self, limit: Duration, done: impl Fn(&Cluster) -> bool) -> usize {
        let deadline = Instant::now() + limit;
        let mut boots = 0;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "waited {limit:?}; logs:\n{}\n{}",
                self.logs(),
                self.etcd.logs()
            );
            for i in 0..self.agents.len() {
                if self.agents[i].exited() {
                    let d = self.etcd.nodes[i].clone();
                    let name = format!("node{}", i + 1);
                    self.etcd.kill_member(&name);
                    self.etcd.start_member(&d);
                    self.agents[i].restart();
                    boots += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        boots
    }
}

/// One login on node 1; a client of every node with its token.
pub fn logged_in_everywhere(c: &Cluster) -> Vec<Client> {
    let token = c.agents[0].logged_in().token;
    c.agents
        .iter()
        .map(|a| Client {
            token: token.clone(),
            ..a.client()
        })
        .collect()
}
