//! `cargo xtask bench cluster [--nodes N]`: a cluster of `N` simulated nodes on
//! this machine (release `qimgd` per node, etcd members on the first 3 or 5 via
//! `qimgd cluster member`, mutual TLS), measuring:
//!
//! 1. an instant upgrade of every node through one request: wall time from the
//!    POST to `COMMITTED` and the cluster's downtime (the longest node's swap);
//! 2. coordinator failover: SIGKILL of the coordinator's agent until another node
//!    holds the coordinator key (bounded by the lease TTL plus one poll);
//! 3. memory: each agent's and each etcd member's RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_upgrade::Lab;
use crate::harness::{median, release_build};
use crate::{deps, target_dir};

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io)
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

fn etcdctl(node_dir: &Path, endpoints: &str, args: &[&str]) -> String {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", node_dir.join("ca.crt").display()))
        .arg(format!("--cert={}", node_dir.join("node.crt").display()))
        .arg(format!("--key={}", node_dir.join("node.key").display()))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Waits for `ok`, at most `limit`, naming `what` when it gives up.
fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("waited {limit:?} for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn cluster(args: &[String]) -> Result<(), String> {
    let mut nodes = 16u32;
    let mut dir = target_dir().join("bench");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--nodes" => nodes = v.parse().map_err(|_| "--nodes: a number")?,
            "--dir" => dir = PathBuf::from(v),
            other => return Err(format!("bench cluster: unknown argument {other}")),
        }
    }
    deps::ensure(&[("etcd-server", "etcd"), ("etcd-client", "etcdctl")])?;
    deps::ensure_files(deps::TEST_FILES)?;
    release_build(&["imagebuild", "qq", "qimgd"])?;
    let qimgd = target_dir().join("release/qimgd");
    let lab = Lab::new(&dir.join("cluster"), 4)?;
    let instant = lab.build("instant", "1.0.1", "1.0", 4)?;
    let w = lab.w.clone();
    let upgrade = w.join("upgrade");
    std::fs::create_dir_all(&upgrade).map_err(io)?;
    std::fs::copy(&instant, upgrade.join("instant.qimg")).map_err(io)?;

    // The spec, on free ports.
    let voters = match nodes {
        0..=2 => nodes,
        3..=7 => 3,
        _ => 5,
    };
    let mut spec = "name = \"bench\"\nmax_node_failures = 2\n".to_string();
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

    // Nodes (from the lab's factory disk image), configs, users, etcd members, agents.
    lab.fresh_node()?;
    eprintln!("xtask: {nodes} simulated nodes");
    let mut etcd = Procs(vec![]);
    let mut agents = Procs(vec![]);
    for i in 1..=nodes {
        let nd = w.join(format!("n{i}"));
        Command::new(&lab.qq)
            .args(["sim_create", "--model", "bench", "--dir"])
            .arg(nd.join("node"))
            .arg("--disk")
            .arg(w.join("disk.img"))
            .arg("--bundle")
            .arg(&lab.factory)
            .arg("--key")
            .arg(w.join("k.pub"))
            .stdout(Stdio::null())
            .status()
            .map_err(io)?;
        let config = nd.join("qimgd.toml");
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.1:{}\"]\nnode = \"node\"\nstate = \"state\"\nusers = \"users.json\"\nupgrade_dir = \"{}\"\ncluster = \"{}\"\n",
                ports[i as usize - 1],
                upgrade.display(),
                w.join(format!("c/node{i}")).display()
            ),
        )
        .map_err(io)?;
        crate::harness::add_bench_user(&qimgd, &config)?;
        if i <= voters {
            etcd.0.push(
                Command::new(&qimgd)
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
        let nd = w.join(format!("n{i}"));
        agents.0.push(
            Command::new(&qimgd)
                .arg("--config")
                .arg(nd.join("qimgd.toml"))
                .arg("serve")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(nd.join("qimgd.log")).map_err(io)?)
                .spawn()
                .map_err(io)?,
        );
    }
    let n1 = w.join("c/node1");
    wait("every node registered", Duration::from_secs(120), || {
        etcdctl(
            &n1,
            &endpoints,
            &["get", "/qimg/bench/nodes/", "--prefix", "--keys-only"],
        )
        .lines()
        .filter(|l| !l.is_empty())
        .count()
            == nodes as usize
    })?;

    // 1. Instant upgrade of every node through node 1.
    let mut c = qapi::Client::new(
        qapi::Target::Tcp {
            host: "127.0.0.1".into(),
            port: ports[0],
        },
        qapi::Options {
            root_port: false,
            ..qapi::Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let login: qapi::types::LoginResponse = c
        .post_json(
            "/v1/session/login",
            &qapi::types::LoginRequest {
                username: "bench".into(),
                password: "bench-password".into(),
            },
        )
        .map_err(|e| e.to_string())?;
    c.set_token(Some(login.bearer_token));
    let t0 = Instant::now();
    c.post(
        "/v2/upgrade/prepare",
        &qapi::types::PrepareRequest {
            image_path: "/instant.qimg".into(),
            auto_commit: true,
            do_rolling_reboot: false,
            num_nodes_to_reboot: None,
            on_failure: None,
        },
    )
    .map_err(|e| e.to_string())?;
    wait("the instant upgrade", Duration::from_secs(600), || {
        c.get::<qapi::types::UpgradeStatus>("/v3/upgrade/status")
            .is_ok_and(|s| s.state == qapi::types::UpgradeState::Committed)
    })?;
    let upgrade_s = t0.elapsed().as_secs_f64();
    let plan: serde_json::Value = serde_json::from_str(&etcdctl(
        &n1,
        &endpoints,
        &["get", "/qimg/bench/plan", "--print-value-only"],
    ))
    .map_err(|e| e.to_string())?;
    let downtime = plan["downtime_ms"].as_u64().unwrap_or(0);

    // 3. Memory, after the upgrade.
    let agent_rss: Vec<f64> = agents.0.iter().map(|c| rss_mib(c.id())).collect();
    let etcd_rss: Vec<f64> = etcd.0.iter().map(|c| rss_mib(c.id())).collect();

    // 2. Failover: SIGKILL the coordinator's agent.
    let coordinator = || -> Option<u32> {
        etcdctl(
            &n1,
            &endpoints,
            &["get", "/qimg/bench/coordinator", "--print-value-only"],
        )
        .parse()
        .ok()
    };
    let first = coordinator().ok_or("no coordinator")?;
    let t1 = Instant::now();
    let victim = &mut agents.0[first as usize - 1];
    let _ = victim.kill();
    let _ = victim.wait();
    wait("another coordinator", Duration::from_secs(60), || {
        coordinator().is_some_and(|c| c != first)
    })?;
    let failover = t1.elapsed().as_secs_f64();

    println!(
        "cluster of {nodes} simulated nodes ({voters} etcd members, mutual TLS), release builds:\n  instant upgrade of every node, one request (POST prepare with auto_commit to COMMITTED): {upgrade_s:.2} s\n  cluster downtime (the longest node's container swap): {downtime} ms\n  coordinator failover after SIGKILL (lease TTL 4 s + 200 ms poll bound it): {failover:.2} s\n  agent RSS: median {:.1} MiB, max {:.1} MiB; etcd member RSS: median {:.1} MiB, max {:.1} MiB",
        median(agent_rss.clone()),
        agent_rss.iter().copied().fold(0.0, f64::max),
        median(etcd_rss.clone()),
        etcd_rss.iter().copied().fold(0.0, f64::max),
    );
    // Stop the nodes' containers (the process runtime's children).
    for i in 1..=nodes {
        let _ = Command::new(&lab.qq)
            .arg("--node")
            .arg(w.join(format!("n{i}/node")))
            .arg("sim_poweroff")
            .status();
    }
    Ok(())
}
