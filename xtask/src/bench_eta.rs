//! `cargo xtask bench eta [--nodes N]`: how good the preview's expected time is.
//! A cluster of `N` simulated nodes (`crate::sim_cluster`, release agents, etcd)
//! upgrades rolling, one node at a time, through three platform releases; before
//! each, `POST /v1/qimg/upgrade/preview` says how long it will take (the first
//! from the stated defaults, the next from the cluster's own history); the
//! upgrade's record (`/v1/qimg/upgrade/history`) says how long it took. Prints
//! both per upgrade and the error.

use std::time::Duration;

use qapi::history::{Preview, UpgradeHistory};

use crate::sim_cluster::{Layout, SimCluster, nodes_and_dir, post, until};
use crate::target_dir;

/// The simulated hardware's and restriper's times (ms).
const SIM: &str = "[sim]\nshutdown_ms = 1000\nboot_ms = 500\nrestripe_ms = 1000\n";

pub fn eta(args: &[String]) -> Result<(), String> {
    let (nodes, dir) = nodes_and_dir(args, "bench eta", 4, target_dir().join("bench"))?;
    let c = SimCluster::start(
        &dir.join("eta"),
        "eta",
        Layout {
            nodes,
            max_node_failures: 2,
            tree_mib: 32,
            apart: false,
        },
        SIM,
        true,
    )?;
    eprintln!("xtask: {nodes} simulated nodes");
    let mut c1 = c.client(1)?;
    let mut rows = vec![];
    for n in 2..=4u32 {
        let b = c.lab.build(
            &format!("eta{n}"),
            &format!("{n}.0.0"),
            &format!("{n}.0"),
            32,
        )?;
        let name = format!("eta{n}.qimg");
        std::fs::copy(&b, c.upgrade.join(&name)).map_err(|e| e.to_string())?;
        let req = qapi::types::PrepareRequest {
            image_path: format!("/{name}"),
            auto_commit: true,
            do_rolling_reboot: true,
            num_nodes_to_reboot: Some(1),
            on_failure: None,
            overrides: vec![],
            canary: None,
            soak_secs: None,
            // Upgrade after upgrade: each finalized as it commits.
            auto_finalize_after_secs: Some(0),
        };
        let p: Preview = c1
            .post_json("/v1/qimg/upgrade/preview", &req)
            .map_err(|e| format!("the preview of {name}: {e}"))?;
        post(&mut c1, "/v2/upgrade/prepare", Some(&req))?;
        until(
            &mut c1,
            &format!("the upgrade to {n}.0.0"),
            qapi::types::UpgradeState::Idle,
            Duration::from_secs(900),
        )?;
        // The record ends a reconciliation after the status does.
        let mut took = None;
        for _ in 0..50 {
            let h: UpgradeHistory = c1
                .get("/v1/qimg/upgrade/history?limit=1")
                .map_err(|e| format!("the history: {e}"))?;
            if let Some(r) = h.upgrades.first().filter(|r| r.ended_ms.is_some()) {
                took = Some(r.elapsed_ms(0));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = took.ok_or("the upgrade's record did not end within 5 s")?;
        let basis = p
            .phases
            .iter()
            .map(|ph| ph.basis.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!(
            "xtask: {name}: predicted {} ms, took {took} ms ({basis})",
            p.total_ms
        );
        rows.push((
            name,
            p.total_ms,
            took,
            p.phases
                .first()
                .is_some_and(|ph| ph.basis.contains("a default")),
        ));
    }
    println!("| upgrade | predicted, s | took, s | error | predicted from |");
    println!("|---|---:|---:|---:|---|");
    for (name, predicted, took, default) in rows {
        let err = (predicted as f64 - took as f64) / took as f64 * 100.0;
        println!(
            "| {name} | {:.1} | {:.1} | {err:+.1} % | {} |",
            predicted as f64 / 1000.0,
            took as f64 / 1000.0,
            if default {
                "the defaults (no history)"
            } else {
                "this cluster's history"
            }
        );
    }
    Ok(())
}
