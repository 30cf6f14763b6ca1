//! Agents of a three-node cluster: three real etcd members with mutual TLS from
//! the cluster CA, one `qimgd` process per simulated node. Every node lists every
//! node; a token from one node is accepted by the others; a node whose agent
//! stops is listed offline once its lease expires.

//!
//! Split by concept: `membership` (the node list, one token, instant upgrades,
//! a failed prepare), `peers` (bundles served to the other nodes), `reboots` (complete and rolling reboots, pauses, Qumulo's
//! client), `rollback` (a commit failing on one node), `failover` (coordinators
//! killed or stopped), `safety` (the data-safety gate's source), `users` (the
//! cluster's users), `events` (the upgrade's events posted to a webhook).

#[path = "../common/mod.rs"]
mod common;
mod events;
mod failover;
mod membership;
mod peers;
mod reboots;
mod rollback;
mod safety;
mod users;

use std::time::{Duration, Instant};

use common::sim_cluster::*;
use common::*;
use serde_json::json;

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

impl Cluster {
    /// The coordinator's node id, as etcd says.
    fn coordinator(&self, name: &str) -> Option<u32> {
        let o = self.etcd.etcdctl(
            &self.etcd.nodes[0],
            &[
                "get",
                &format!("/qimg/{name}/coordinator"),
                "--print-value-only",
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    }

    /// Waits (at most `limit`) until etcd names a coordinator `ok` accepts; its id.
    fn wait_coordinator(&self, name: &str, limit: Duration, ok: impl Fn(u32) -> bool) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(id) = self.coordinator(name).filter(|id| ok(*id)) {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for a coordinator of {name}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Cluster {
    /// The plan as etcd holds it.
    fn plan(&self, name: &str) -> serde_json::Value {
        let o = self.etcd.etcdctl(
            &self.etcd.nodes[0],
            &["get", &format!("/qimg/{name}/plan"), "--print-value-only"],
        );
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits (at most 120 s) until the plan satisfies `ok`; returns the coordinator then.
    fn coordinator_when(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = self.plan(name);
            if ok(&p)
                && let Some(id) = self.coordinator(name)
            {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "waited 120 s for {what}; plan {p}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
