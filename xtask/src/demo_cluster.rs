//! `cargo xtask demo [--nodes N] [--dir DIR]`: the whole story on a built-in
//! example, with the shipped tools:
//!
//! 1. a signing key and releases built with `imagebuild bundle` from generated
//!    content: 1.0.0 (platform 1.0, the factory release) and 2.0.0 (platform 2.0);
//! 2. a cluster of `N` (4) simulated nodes made with `qimgd cluster create`
//!    (cluster CA, mutual TLS), etcd members on the first 3 (`qimgd cluster
//!    member`), one `qimgd serve` per node (`crate::sim_cluster`);
//! 3. our `qq` against node 1: `login`, `nodes_list`, then `upgrade_cluster --path
//!    /release-2.0.0.qimg --rolling`: every node prepares, then the nodes reboot
//!    one at a time into their new slot, each batch gated on the simulated
//!    restriper, one progress line per node; then `nodes_list`, `upgrade_status`,
//!    `reboot_status` and `upgrade_cluster finalize`.
//!
//! Before it builds, `main.rs` ensures the build and demo groups of the one list
//! (`protoc` and its include files, etcd, systemd's EFI stub), saying what it installs.

use std::process::Command;

use crate::sim_cluster::{Layout, SimCluster, nodes_and_dir};
use crate::target_dir;

pub fn main(args: &[String]) -> Result<(), String> {
    let (nodes, dir) = nodes_and_dir(args, "demo", 4, target_dir().join("demo"))?;
    if nodes < 2 {
        return Err("demo: --nodes must be at least 2".into());
    }
    eprintln!(
        "xtask demo: a cluster of {nodes} simulated nodes in {}",
        dir.display()
    );
    let c = SimCluster::start(
        &dir,
        "demo",
        Layout {
            nodes,
            max_node_failures: 1,
            tree_mib: 4,
            apart: false,
        },
        "[sim]\nrestripe_ms = 1500\n",
        false,
    )?;
    let bundle = c.lab.build("release-2.0.0", "2.0.0", "2.0", 4)?;
    std::fs::copy(&bundle, c.upgrade.join("release-2.0.0.qimg"))
        .map_err(|e| format!("{}: {e}", bundle.display()))?;
    let creds = c.lab.w.join("credentials");
    let qq = |title: &str, args: &[&str]| -> Result<(), String> {
        eprintln!("\nxtask demo: $ qq {}", args.join(" "));
        eprintln!("xtask demo: ({title})");
        let st = Command::new(&c.lab.qq)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(c.ports[0].to_string())
            .arg("--credentials-store")
            .arg(&creds)
            .args(args)
            .status()
            .map_err(|e| format!("qq: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("qq {} failed ({st})", args.join(" ")))
        }
    };
    qq(
        "log in to node 1",
        &["login", "-u", "bench", "-p", "bench-password"],
    )?;
    qq("every node, on 1.0.0", &["nodes_list"])?;
    qq(
        "prepare on every node, then reboot them one at a time, each batch gated on the restriper",
        &[
            "upgrade_cluster",
            "--path",
            "/release-2.0.0.qimg",
            "--rolling",
        ],
    )?;
    qq("every node, on 2.0.0", &["nodes_list"])?;
    qq("the cluster's upgrade", &["upgrade_status"])?;
    qq("the reboot manager", &["reboot_status"])?;
    qq(
        "keep 2.0.0: finalize it (until then `qq upgrade_cluster rollback` returns every node to 1.0.0)",
        &["upgrade_cluster", "finalize"],
    )?;
    let plan = c.plan()?;
    println!(
        "\nxtask demo: the cluster upgraded from 1.0.0 to 2.0.0 with rolling reboots in {} batches {}",
        plan["batches"].as_array().map_or(0, Vec::len),
        plan["batches"]
    );
    Ok(())
}
