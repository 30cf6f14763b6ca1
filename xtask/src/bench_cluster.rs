//! `cargo xtask bench cluster [--nodes N]`: a cluster of `N` simulated nodes on
//! this machine (`crate::sim_cluster`: release `qimgd` per node, etcd members on
//! the first 3 or 5, mutual TLS), measuring:
//!
//! 1. an instant upgrade of every node through one request: wall time from the
//!    POST to the upgrade finished (`IDLE` again) and the cluster's downtime (the longest node's swap);
//! 2. rolling platform commits by 1, 2 and 4 nodes: wall time from the commit's
//!    POST to the upgrade finished (`IDLE` again) against the ideal `ceil(N/k) × one batch's cycle`, the
//!    cycle being what a batch needs with no orchestration at all: the simulated
//!    shutdown and boot, the engine work of the batch's `k` reboots (set-next,
//!    firmware boot, boot check, health gate, bless; measured on `k` nodes of
//!    their own with `qq --node … commit` at once, as the batch's nodes share this
//!    machine), and the simulated restriper's time for `k` nodes; the overhead
//!    against one node's engine cycle per batch is printed too;
//! 3. coordinator failover: SIGKILL of the coordinator's agent until another node
//!    holds the coordinator key (bounded by the lease TTL: the others campaign when
//!    etcd's watch says the key went);
//! 4. memory: each agent's and each etcd member's RSS;
//! 5. the idle cluster's CPU: the agents' and etcd members' CPU time over
//!    [`IDLE_SAMPLE`] once the upgrades are over, in cores.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::median;
use crate::sim_cluster::{Layout, SimCluster, nodes_and_dir, post, until, wait};
use crate::target_dir;

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |k| k / 1024.0)
}

/// A process's CPU time so far (user + system), in seconds.
fn cpu_s(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command (which may hold spaces): state is
            // field 3, utime 14, stime 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(0.0, |ticks| ticks / hz)
}

/// How long the idle cluster's CPU is sampled.
const IDLE_SAMPLE: Duration = Duration::from_secs(10);

/// The cores each group of processes used over one [`IDLE_SAMPLE`].
fn idle_cores(groups: &[&[u32]]) -> Vec<f64> {
    let total = |g: &[u32]| g.iter().map(|p| cpu_s(*p)).sum::<f64>();
    let before: Vec<f64> = groups.iter().map(|g| total(g)).collect();
    let t = Instant::now();
    std::thread::sleep(IDLE_SAMPLE);
    let secs = t.elapsed().as_secs_f64();
    groups
        .iter()
        .zip(before)
        .map(|(g, b)| (total(g) - b) / secs)
        .collect()
}

/// The simulated hardware's and restriper's times (ms) the bench configures.
const SHUTDOWN_MS: u64 = 1000;
const BOOT_MS: u64 = 500;
const RESTRIPE_MS: u64 = 1000;

/// The engine's work for a batch of `k` platform reboots, as this machine does it
/// with no orchestration: `k` simulated nodes of their own (no agent) run `qq
/// --node … commit` of a prepared platform upgrade at once, each playing its
/// reboot in-process (set-next, firmware boot, boot check, health gate, bless),
/// and the batch's part is the slowest. The `k` nodes of a batch share this
/// machine's two cores and one disk (their fsyncs queue on the same journal),
/// which `k` real nodes would not. The median of three (one sample moves the
/// ideal by a percent point).
fn engine_cycle(c: &SimCluster, bundle: &std::path::Path, k: u32) -> Result<f64, String> {
    let mut runs = vec![];
    for _ in 0..3 {
        runs.push(engine_cycle_once(c, bundle, k)?);
    }
    Ok(median(runs))
}

fn engine_cycle_once(c: &SimCluster, bundle: &std::path::Path, k: u32) -> Result<f64, String> {
    let qq = |node: &std::path::Path, args: &[&str]| {
        let mut cmd = Command::new(&c.lab.qq);
        cmd.arg("--node")
            .arg(node)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let done = |what: &str, s: std::io::Result<std::process::ExitStatus>| {
        s.map_err(io).and_then(|s| {
            s.success()
                .then_some(())
                .ok_or(format!("qq {what} failed: {s}"))
        })
    };
    c.lab.fresh_node()?;
    let nodes: Vec<_> = (1..=k)
        .map(|j| c.lab.w.join(format!("engine-{j}")))
        .collect();
    for n in &nodes {
        c.lab.poweroff_node(n);
        let _ = std::fs::remove_dir_all(n);
        c.lab.sim_node(n)?;
        let path = bundle.to_string_lossy();
        let prepare = ["upgrade_cluster", "prepare", "--path", &path];
        done("prepare", qq(n, &prepare).status())?;
    }
    let t = Instant::now();
    let running: Vec<_> = nodes
        .iter()
        .map(|n| qq(n, &["upgrade_cluster", "commit"]).spawn())
        .collect();
    let mut result = Ok(());
    for r in running {
        let status = r.and_then(|mut child| child.wait());
        result = result.and(done("commit", status));
    }
    let wall = t.elapsed().as_secs_f64();
    for n in &nodes {
        c.lab.poweroff_node(n);
        let _ = std::fs::remove_dir_all(n);
    }
    result.map(|()| wall)
}

pub fn cluster(args: &[String]) -> Result<(), String> {
    let (nodes, dir) = nodes_and_dir(args, "bench cluster", 16, target_dir().join("bench"))?;
    let extra = format!(
        "[sim]\nshutdown_ms = {SHUTDOWN_MS}\nboot_ms = {BOOT_MS}\nrestripe_ms = {RESTRIPE_MS}\n"
    );
    // Four node failures permitted: batches of up to 4.
    let c = SimCluster::start(
        &dir.join("cluster"),
        "bench",
        Layout {
            nodes,
            max_node_failures: 4,
            tree_mib: 4,
            apart: false,
        },
        &extra,
        true,
    )?;
    eprintln!("xtask: {nodes} simulated nodes");
    let instant = c.lab.build("instant", "1.0.1", "1.0", 4)?;
    std::fs::copy(&instant, c.upgrade.join("instant.qimg")).map_err(io)?;
    let request = |path: &str, auto_commit: bool, k: Option<u32>| qapi::types::PrepareRequest {
        image_path: path.into(),
        auto_commit,
        do_rolling_reboot: k.is_some(),
        num_nodes_to_reboot: k,
        on_failure: None,
        overrides: vec![],
        canary: None,
        soak_secs: None,
        // Upgrade after upgrade: each finalized as it commits.
        auto_finalize_after_secs: Some(0),
    };

    // 1. Instant upgrade of every node through node 1.
    let mut c1 = c.client(1)?;
    let t0 = Instant::now();
    post(
        &mut c1,
        "/v2/upgrade/prepare",
        Some(&request("/instant.qimg", true, None)),
    )?;
    until(
        &mut c1,
        "the instant upgrade",
        qapi::types::UpgradeState::Idle,
        Duration::from_secs(600),
    )?;
    let upgrade_s = t0.elapsed().as_secs_f64();
    let downtime = c.plan()?["downtime_ms"].as_u64().unwrap_or(0);

    // 2. Rolling platform commits by 1, 2 and 4.
    let mut rolling = vec![];
    let mut one_engine: Option<f64> = None;
    for (n, k) in [(2u32, 1u32), (3, 2), (4, 4)] {
        let b = c
            .lab
            .build(&format!("p{n}"), &format!("{n}.0.0"), &format!("{n}.0"), 4)?;
        let name = format!("/p{n}.qimg");
        std::fs::copy(&b, c.upgrade.join(&name[1..])).map_err(io)?;
        let cycle_engine = engine_cycle(&c, &b, k)?;
        // The first batch size is 1: its engine cycle is one node's.
        let one = *one_engine.get_or_insert(cycle_engine);
        let mut cl = c.client(1)?;
        post(
            &mut cl,
            "/v2/upgrade/prepare",
            Some(&request(&name, false, Some(k))),
        )?;
        until(
            &mut cl,
            "every node prepared",
            qapi::types::UpgradeState::Prepared,
            Duration::from_secs(600),
        )?;
        let t = Instant::now();
        post(&mut cl, "/v2/upgrade/commit", None)?;
        c.until_any(
            &format!("rolling by {k} committed"),
            qapi::types::UpgradeState::Idle,
            Duration::from_secs(1800),
        )?;
        let wall = t.elapsed().as_secs_f64();
        let batches = c.plan()?["batches"].as_array().map_or(0, Vec::len);
        let hardware = (SHUTDOWN_MS + BOOT_MS + RESTRIPE_MS * u64::from(k)) as f64 / 1000.0;
        let cycle = hardware + cycle_engine;
        let ideal = batches as f64 * cycle;
        let ideal_one = batches as f64 * (hardware + one);
        rolling.push((k, batches, wall, cycle, ideal, cycle_engine, ideal_one));
        eprintln!("xtask: rolling by {k}: {wall:.2} s ({batches} batches, ideal {ideal:.2} s)");
    }

    // 4. Memory, after the upgrades.
    let agent_rss: Vec<f64> = c.agents.0.iter().map(|p| rss_mib(p.id())).collect();
    let etcd_rss: Vec<f64> = c.etcd.0.iter().map(|p| rss_mib(p.id())).collect();

    // 5. The idle cluster's CPU.
    let agent_pids: Vec<u32> = c.agents.0.iter().map(|p| p.id()).collect();
    let etcd_pids: Vec<u32> = c.etcd.0.iter().map(|p| p.id()).collect();
    let idle = idle_cores(&[&agent_pids, &etcd_pids]);

    // 3. Failover: SIGKILL the coordinator's agent.
    let mut c = c;
    let first = c.coordinator().ok_or("no coordinator")?;
    let t1 = Instant::now();
    let victim = &mut c.agents.0[first as usize - 1];
    let _ = victim.kill();
    let _ = victim.wait();
    wait("another coordinator", Duration::from_secs(60), || {
        c.coordinator().is_some_and(|x| x != first)
    })?;
    let failover = t1.elapsed().as_secs_f64();

    println!(
        "cluster of {nodes} simulated nodes ({} etcd members, mutual TLS), release builds:",
        c.voters
    );
    println!(
        "  instant upgrade of every node, one request (POST prepare with auto_commit to IDLE again): {upgrade_s:.2} s"
    );
    println!("  cluster downtime (the longest node's container swap): {downtime} ms");
    for (k, batches, wall, cycle, ideal, engine, ideal_one) in &rolling {
        println!(
            "  rolling platform commit by {k}: {wall:.2} s for {batches} batches; ideal {batches} x {cycle:.2} s = {ideal:.2} s (the engine's part: {k} node(s) at once {engine:.3} s, one node {:.3} s); orchestration overhead {:.1} % (against one node's engine cycle per batch: {:.1} %)",
            one_engine.unwrap_or_default(),
            (wall / ideal - 1.0) * 100.0,
            (wall / ideal_one - 1.0) * 100.0
        );
    }
    println!(
        "  coordinator failover after SIGKILL (the lease TTL, 4 s, bounds it; the others campaign when the key goes): {failover:.2} s"
    );
    println!(
        "  the idle cluster's CPU ({} s sampled): {:.2} core (agents {:.2}, {} etcd members {:.2})",
        IDLE_SAMPLE.as_secs(),
        idle[0] + idle[1],
        idle[0],
        etcd_pids.len(),
        idle[1]
    );
    println!(
        "  agent RSS: median {:.1} MiB, max {:.1} MiB; etcd member RSS: median {:.1} MiB, max {:.1} MiB",
        median(agent_rss.clone()),
        agent_rss.iter().copied().fold(0.0, f64::max),
        median(etcd_rss.clone()),
        etcd_rss.iter().copied().fold(0.0, f64::max),
    );
    Ok(())
}
