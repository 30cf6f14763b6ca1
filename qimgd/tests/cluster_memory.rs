//! A cluster whose agents run in this process over one in-memory store
//! (`qcluster::Local`, etcd's data model): the same agents, member and
//! coordinator as a cluster on etcd (`tests/cluster`, the real-etcd tier), with
//! no etcd and no processes to start, so a whole upgrade takes seconds.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bootctl::layout::Slot;
use common::sim_cluster::patient;
use common::*;
use qcluster::{ClusterSpec, Local, Membership, NodeSpec, Store};
use qimgd::daemon::{Background, InProcess};
use serde_json::json;

/// How long an upgrade of the cluster may take.
const UPGRADE_LIMIT: Duration = Duration::from_secs(120);

struct MemCluster {
    nodes: Vec<SimNode>,
    /// Dropped before the nodes (fields drop in order): the agents stop first.
    agents: Vec<Background>,
    /// Every upgrade directory: the shared one first, then the nodes' own.
    upgrade: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

/// `n` simulated nodes, `max_node_failures` as given, their agents in this
/// process over one `Local`; `sim` is each node's `[sim]` table.
fn mem_cluster(n: u32, max_node_failures: u32, sim: &str) -> Option<MemCluster> {
    mem_cluster_with(n, max_node_failures, sim, &[])
}

/// [`mem_cluster`] where the nodes `own` have an upgrade directory of their own
/// (the others share one), as machines that share no file system.
fn mem_cluster_with(n: u32, max_node_failures: u32, sim: &str, own: &[u32]) -> Option<MemCluster> {
    let d = tempfile::tempdir().unwrap();
    let shared = d.path().join("upgrade");
    let mut upgrade = vec![shared.clone()];
    let spec = ClusterSpec {
        name: "mem".into(),
        max_node_failures,
        nodes: (1..=n)
            .map(|id| NodeSpec {
                id,
                name: format!("node{id}"),
                agent: format!("127.0.0.1:{}", tests::etcd::free_port())
                    .parse()
                    .unwrap(),
                etcd_client: None,
                etcd_peer: None,
            })
            .collect(),
    };
    let local = Local::memory();
    // The cluster's users are in its store: the test user, added once.
    let users = Store::local(local.clone(), &spec.prefix());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(qimgd::accounts::edit_cluster_users(&users, |u| {
            u.add(USER, PASSWORD)
        }))
        .unwrap();
    let (mut nodes, mut agents) = (vec![], vec![]);
    for s in &spec.nodes {
        let node = factory_node()?;
        patient(&node);
        let dir = d.path().join(&s.name);
        let up = if own.contains(&s.id) {
            let up = d.path().join(format!("upgrade-{}", s.id));
            std::fs::create_dir_all(&up).unwrap();
            upgrade.push(up.clone());
            up
        } else {
            shared.clone()
        };
        let config = agent_config(
            &node,
            &dir,
            &[&s.agent.to_string()],
            Some(&up),
            &format!("node_id = {}\ncluster_lease_secs = 2\n[sim]\n{sim}", s.id),
        );
        let config = qimgd::config::Config::load(&config).unwrap();
        let member = InProcess {
            membership: Membership {
                schema: qcluster::create::SCHEMA.into(),
                node_id: s.id,
                spec: spec.clone(),
            },
            local: local.clone(),
        };
        agents.push(qimgd::daemon::spawn_in(config, Some(member)).unwrap());
        nodes.push(node);
    }
    Some(MemCluster {
        nodes,
        agents,
        upgrade,
        _dir: d,
    })
}

impl MemCluster {
    /// A client of node `i` (0-based), logged in as the test user.
    fn client(&self, i: usize) -> Client {
        let port = self.agents[i].port("127.0.0.1").unwrap();
        Client::https(format!("https://127.0.0.1:{port}")).login()
    }

    /// Copies `bundle` into every upgrade directory; its cluster path.
    fn place(&self, bundle: &std::path::Path) -> String {
        let name = bundle.file_name().unwrap().to_str().unwrap();
        for dir in &self.upgrade {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(bundle, dir.join(name)).unwrap();
        }
        format!("/{name}")
    }

    /// Polls the plan node by node through `c` until `done`, at most
    /// [`UPGRADE_LIMIT`]; names `what` if it never comes.
    fn wait_plan(
        &self,
        c: &Client,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        c.wait_for(
            "/v1/qimg/cluster/upgrade",
            what,
            UPGRADE_LIMIT,
            done,
            String::new,
        )
    }
}

#[test]
fn an_instant_upgrade_of_three_nodes_through_one() {
    let t = Instant::now();
    let Some(c) = mem_cluster(3, 1, "") else {
        return;
    };
    let via = c.client(1);
    let p = c.place(&bundles().instant);
    let (s, r) = via.post(
        "/v2/upgrade/prepare",
        &json!({"image_path": p, "auto_commit": true}).to_string(),
    );
    assert_eq!(s, 202, "{r}");
    let plan = c.wait_plan(&via, "the plan committed", |p| p["phase"] == "committed");
    assert_eq!(plan["nodes"].as_array().unwrap().len(), 3, "{plan}");
    for n in plan["nodes"].as_array().unwrap() {
        assert_eq!(n["step"], "committed", "{plan}");
    }
    for node in &c.nodes {
        assert_eq!(node.container().as_deref(), Some("7.0.1"));
    }
    // Any node answers for the cluster: finished, IDLE at 100.
    let (_, st) = c.client(2).get("/v3/upgrade/status");
    assert!(finished(&st), "{st}");
    assert_eq!(st["progress"], 100, "{st}");
    eprintln!(
        "an instant upgrade of 3 in-process nodes: {:?}",
        t.elapsed()
    );
}

#[test]
fn a_rolling_platform_upgrade_one_node_at_a_time_coordinator_last() {
    let t = Instant::now();
    let Some(c) = mem_cluster(
        3,
        1,
        "shutdown_ms = 100\nboot_ms = 100\nrestripe_ms = 200\n",
    ) else {
        return;
    };
    let via = c.client(0);
    let p = c.place(&bundles().platform);
    let (s, r) = via.post(
        "/v2/upgrade/prepare",
        &json!({"image_path": p, "auto_commit": true, "do_rolling_reboot": true}).to_string(),
    );
    assert_eq!(s, 202, "{r}");
    let plan = c.wait_plan(&via, "the rolling upgrade committed", |p| {
        p["phase"] == "committed"
    });
    // One node per batch (max_node_failures 1), the coordinator's last.
    let batches: Vec<Vec<u64>> = serde_json::from_value(plan["batches"].clone()).unwrap();
    assert_eq!(batches.len(), 3, "{plan}");
    assert!(batches.iter().all(|b| b.len() == 1), "{plan}");
    for node in &c.nodes {
        assert_eq!(node.running().slot, Slot::B);
        assert_eq!(node.version().as_deref(), Some("7.1.0"));
    }
    let (_, st) = via.get("/v3/upgrade/status");
    assert!(finished(&st), "{st}");
    eprintln!("a rolling upgrade of 3 in-process nodes: {:?}", t.elapsed());
}

#[test]
fn a_commit_failing_on_one_node_rolls_every_node_back() {
    let t = Instant::now();
    let Some(c) = mem_cluster(3, 1, "") else {
        return;
    };
    let via = c.client(0);
    let p = c.place(&bundles().instant);
    let (s, r) = via.post("/v2/upgrade/prepare", &json!({"image_path": p}).to_string());
    assert_eq!(s, 202, "{r}");
    c.wait_plan(&via, "the plan prepared", |p| p["phase"] == "prepared");
    // Node 3's staged container is broken after its prepare: its program exits
    // before it is healthy, so node 3's commit fails while the others succeed.
    let entry = c.nodes[2]
        .node
        .config
        .state
        .join("containers/7.0.1/rootfs/entry");
    std::fs::write(&entry, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    let (s, r) = c.client(1).post("/v2/upgrade/commit", "");
    assert_eq!(s, 202, "{r}");
    let plan = c.wait_plan(&via, "the plan failed, every node back", |p| {
        p["phase"] == "failed"
    });
    let (_, st) = via.get("/v3/upgrade/status");
    let why = st["error_info"].as_str().unwrap_or_default();
    assert!(why.contains("node node3"), "{st}");
    assert!(why.contains("every node goes back"), "{st}");
    for (i, node) in c.nodes.iter().enumerate() {
        assert_eq!(node.container().as_deref(), Some("7.0.0"), "node {}", i + 1);
    }
    for n in plan["nodes"].as_array().unwrap() {
        assert!(
            ["rolled_back", "failed", "discarded"].contains(&n["step"].as_str().unwrap()),
            "{plan}"
        );
    }
    eprintln!("a rollback of 3 in-process nodes: {:?}", t.elapsed());
}

#[test]
fn a_node_whose_file_is_another_bundle_refuses_naming_both() {
    // Node 3 has its own upgrade directory; under the name the plan gives it
    // holds another bundle (the platform release), as a copy replaced on one
    // machine mid-rollout would be.
    let Some(c) = mem_cluster_with(3, 1, "", &[3]) else {
        return;
    };
    let p = c.place(&bundles().instant);
    std::fs::copy(&bundles().platform, c.upgrade[1].join(&p[1..])).unwrap();
    let pin = |b: &std::path::Path| {
        let f = std::fs::File::open(b).unwrap();
        let size = f.metadata().unwrap().len();
        let r = qimg::BundleReader::open(std::io::BufReader::new(f)).unwrap();
        qimg::BundlePin::of(r.manifest_bytes(), size)
    };
    let (want, other) = (pin(&bundles().instant), pin(&bundles().platform));
    let via = c.client(0);
    let (s, r) = via.post("/v2/upgrade/prepare", &json!({"image_path": p}).to_string());
    assert_eq!(s, 202, "{r}");
    let plan = c.wait_plan(&via, "the plan failed on node 3", |p| {
        p["phase"] == "failed"
    });
    let node3 = &plan["nodes"][2];
    assert_eq!(node3["step"], "failed", "{plan}");
    let why = node3["error"].as_str().unwrap_or_default();
    assert!(why.contains("not the bundle the upgrade pinned"), "{why}");
    assert!(why.contains(&want.manifest_sha256.to_string()), "{why}");
    assert!(why.contains(&other.manifest_sha256.to_string()), "{why}");
    // Nothing of the other release was installed anywhere.
    for node in &c.nodes {
        assert_eq!(node.container().as_deref(), Some("7.0.0"));
        assert_eq!(node.running().slot, Slot::A);
    }
}
