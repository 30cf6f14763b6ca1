//! Agents of a three-node cluster: three real etcd members with mutual TLS from
//! the cluster CA, one `qimgd` process per simulated node. Every node lists every
//! node; a token from one node is accepted by the others; a node whose agent
//! stops is listed offline once its lease expires.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tests::etcd::{EtcdCluster, spec};

fn wait_nodes(a: &Agentd, c: &Client, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok((200, v)) = c.try_get("/v1/cluster/nodes/") {
            if ok(&v) {
                return;
            }
            last = v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("waited {limit:?} for {what}; last {last}\n{}", a.log());
}

#[test]
fn every_node_lists_the_cluster_and_accepts_one_token() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("t2", 3, 1);
    let Some(etcd) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    let mut agents = vec![];
    for (n, dir) in s.nodes.iter().zip(&etcd.nodes) {
        let Some(a) = Agentd::start_with(Options {
            listen: Some(vec![n.agent.to_string(), "127.0.0.2:0".into()]),
            extra: format!(
                "cluster = \"{}\"\ncluster_lease_secs = 2\n",
                dir.dir.display()
            ),
            ..Options::default()
        }) else {
            return;
        };
        agents.push(a);
    }
    let c1 = agents[0].logged_in();
    // One login, every node.
    for (i, a) in agents.iter().enumerate() {
        let c = Client {
            token: c1.token.clone(),
            ..a.client()
        };
        let (st, v) = c.get("/v1/node/state");
        assert_eq!(st, 200, "node {}: {v}", i + 1);
        assert_eq!(v["node_id"], i as u64 + 1, "{v}");
    }
    let c2 = Client {
        token: c1.token.clone(),
        ..agents[1].client()
    };
    wait_nodes(&agents[1], &c2, "three nodes online", |v| {
        v.as_array().is_some_and(|a| {
            a.len() == 3
                && a.iter()
                    .all(|n| n["node_status"] == "online" && n["model_number"] == MODEL)
        })
    });
    let (st, v) = c2.get("/v1/cluster/nodes/3");
    assert_eq!(st, 200);
    assert_eq!(v["node_name"], "node3");
    let (st, _) = c2.get("/v1/cluster/nodes/4");
    assert_eq!(st, 404);

    // Node 3's agent stops: once its lease expires it is listed offline.
    let mut a3 = agents.pop().unwrap();
    a3.stop(Duration::from_secs(60));
    wait_nodes(&agents[0], &c1, "node 3 offline", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["id"] == 3 && n["node_status"] == "offline")
                && a.iter().filter(|n| n["node_status"] == "online").count() == 2
        })
    });
}
