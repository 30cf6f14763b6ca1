//! Our `qq` rolls a platform upgrade over a three-node cluster (real etcd
//! members, three in-process agents): one line per node's step, the batches and
//! the data-safety gate on stderr, the end reported on stdout.

mod common;

use std::process::Command;

use common::*;
use tests::etcd::{EtcdCluster, free_port, spec};

#[test]
fn rolling_upgrade_of_a_cluster_with_a_line_per_node() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("q1", 3, 1);
    let Some(etcd) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    let upgrade = d.path().join("upgrade");
    let mut agents = vec![];
    let mut nodes = vec![];
    let mut port2 = 0;
    for (n, dir) in s.nodes.iter().zip(&etcd.nodes) {
        let Some(node) = factory_node() else { return };
        let adir = d.path().join(&n.name);
        let p = free_port();
        if n.id == 2 {
            port2 = p;
        }
        let listen = [n.agent.to_string(), format!("127.0.0.2:{p}")];
        let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
        let config = agent_config(
            &node,
            &adir,
            &listen,
            Some(&upgrade),
            &format!(
                "cluster = \"{}\"\ncluster_lease_secs = 2\n[sim]\nrestripe_ms = 300\n",
                dir.dir.display()
            ),
        );
        agents.push(qimgd::daemon::spawn(qimgd::config::Config::load(&config).unwrap()).unwrap());
        nodes.push(node);
    }
    add_cluster_user(&etcd.nodes[0].dir);
    std::fs::copy(&bundles().platform, upgrade.join("platform.qimg")).unwrap();
    let qq = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qq"))
            .args(["--host", "127.0.0.2", "--port", &port2.to_string()])
            .arg("--credentials-store")
            .arg(d.path().join("credentials"))
            .args(args)
            .env_remove("QQ_NODE")
            .output()
            .unwrap()
    };
    let o = qq(&["login", "-u", AGENT_USER, "-p", AGENT_PASSWORD]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = qq(&["upgrade_cluster", "--rolling", "--path", "/platform.qimg"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // A line per node and step the monitor saw (a fast node's prepare can end
    // between two polls: its prepare lines are not promised, its commit is).
    assert!(err.contains(": prepar"), "{err}");
    for name in ["node1", "node2", "node3"] {
        assert!(err.contains(&format!("{name}: committed")), "{err}");
    }
    assert!(err.contains("rolling reboot: batch 1/3"), "{err}");
    assert!(err.contains("rolling reboot: batch 3/3"), "{err}");
    assert!(err.contains("waiting for the restriper"), "{err}");
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n.running().slot, bootctl::layout::Slot::B, "node {}", i + 1);
    }
    let o = qq(&["nodes_list"]);
    let list = json(&o);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    drop(agents);
}
