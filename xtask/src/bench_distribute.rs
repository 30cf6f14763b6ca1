//! `cargo xtask bench distribute [--nodes N] [--size MIB] [--runs N] [--serve-mib R]
//! [--dir DIR]`:
//! a platform bundle reaching `N` simulated nodes that share no file system
//! (`crate::sim_cluster` with an upgrade directory per node, release `qimgd`s,
//! etcd, mutual TLS), uploaded to node 1 only, measuring:
//!
//! 1. **distribution**: from the prepare's POST to the last of the other `N - 1`
//!    nodes holding the bundle, verified (a fetched file appears under its name
//!    only once the signed head, every payload and the plan's pin checked out),
//!    against `scp` of the same file to the same `N - 1` upgrade directories
//!    through an sshd of the bench's own on loopback (`crate::sshd`; the fastest
//!    cipher here), all at once and one after another, the faster of the two as
//!    the baseline: the ratio (target ≤ 1.0 at N = 4);
//! 2. **prepare**: the cluster's prepare (every node prepared) when each node
//!    already has the file, against the same prepare when `N - 1` of them fetch
//!    it first: the ratio (target ≤ 1.1).
//!
//! The agents serve at the product's default rate (`peer_serve_mib_per_s`,
//! every stream of a node together), or at `--serve-mib N` (0: no limit). Every run is a new release, committed (a complete reboot of the
//! simulated nodes, untimed) before the next; the files are compared byte for
//! byte with the original. Medians of `--runs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{first_line, host, median, settle};
use crate::sim_cluster::{Layout, SimCluster, post, state_is};
use crate::sshd::{self, Sshd};
use crate::target_dir;
use qapi::types::{PrepareRequest, UpgradeState};

fn io(e: std::io::Error) -> String {
    e.to_string()
}

struct Opts {
    nodes: u32,
    size_mib: u64,
    runs: usize,
    dir: PathBuf,
    /// `peer_serve_mib_per_s` for every agent (`None`: the default).
    serve_mib: Option<u64>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        nodes: 4,
        size_mib: 128,
        runs: 3,
        dir: target_dir().join("bench"),
        serve_mib: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("bench distribute: {a} needs a value"))?;
        let num = |what: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("bench distribute: {what}: a number"))
        };
        match a.as_str() {
            "--nodes" => o.nodes = num("--nodes")? as u32,
            "--size" => o.size_mib = num("--size")?,
            "--runs" => o.runs = num("--runs")? as usize,
            "--dir" => o.dir = PathBuf::from(v),
            "--serve-mib" => o.serve_mib = Some(num("--serve-mib")?),
            other => return Err(format!("bench distribute: unknown argument {other}")),
        }
    }
    if o.nodes < 2 || o.runs == 0 {
        return Err("bench distribute: at least 2 nodes and 1 run".into());
    }
    Ok(o)
}

/// How long one prepare or commit may take.
const STEP_LIMIT: Duration = Duration::from_secs(600);
/// The simulated hardware's times (ms): the commits between runs are untimed.
const SIM: &str = "[sim]\nshutdown_ms = 100\nboot_ms = 100\nrestripe_ms = 100\n";

/// One run's times, in seconds.
struct Run {
    /// The fetched bundle's bytes.
    size: u64,
    local: f64,
    peer: f64,
    fetched: f64,
    scp_parallel: f64,
    scp_serial: f64,
}

/// The prepare of `/name` through node 1; returns when every node is
/// prepared, with the time from the POST, and the time each node's file
/// appeared in its upgrade directory (for nodes that had it: zero).
fn prepare(c: &SimCluster, name: &str) -> Result<(f64, Vec<f64>), String> {
    let mut cl = c.client(1)?;
    let files: Vec<PathBuf> = (1..=c.nodes).map(|i| c.upgrade_dir(i).join(name)).collect();
    let mut seen: Vec<Option<f64>> = files.iter().map(|f| f.exists().then_some(0.0)).collect();
    let body = PrepareRequest {
        image_path: format!("/{name}"),
        auto_commit: false,
        do_rolling_reboot: false,
        num_nodes_to_reboot: None,
        on_failure: None,
        overrides: vec![],
        canary: None,
        soak_secs: None,
        // Upgrade after upgrade: each finalized as it commits.
        auto_finalize_after_secs: Some(0),
    };
    let t = Instant::now();
    post(&mut cl, "/v2/upgrade/prepare", Some(&body))?;
    let mut last_state = Instant::now();
    loop {
        let now = t.elapsed().as_secs_f64();
        for (s, f) in seen.iter_mut().zip(&files) {
            if s.is_none() && f.exists() {
                *s = Some(now);
            }
        }
        // The state is asked every 20 ms, the files every millisecond.
        if last_state.elapsed() >= Duration::from_millis(20) {
            last_state = Instant::now();
            if state_is(&mut cl, UpgradeState::Prepared)? {
                break;
            }
        }
        if t.elapsed() > STEP_LIMIT {
            return Err(format!(
                "waited {STEP_LIMIT:?} for every node to prepare {name}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = t.elapsed().as_secs_f64();
    let seen = seen
        .into_iter()
        .zip(&files)
        .map(|(s, f)| s.ok_or_else(|| format!("{} prepared without the file", f.display())))
        .collect::<Result<_, _>>()?;
    Ok((total, seen))
}

/// Commits the prepared release (all nodes at once) and waits for IDLE.
fn commit(c: &SimCluster) -> Result<(), String> {
    post(&mut c.client(1)?, "/v2/upgrade/commit", None)?;
    c.until_any("the commit", UpgradeState::Idle, STEP_LIMIT)
}

/// Whether every node's copy of `name` is `bundle`'s bytes.
fn same_everywhere(c: &SimCluster, name: &str, bundle: &[u8]) -> Result<(), String> {
    for i in 1..=c.nodes {
        let f = c.upgrade_dir(i).join(name);
        let got = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        if got != bundle {
            return Err(format!("{} differs from the bundle", f.display()));
        }
    }
    Ok(())
}

/// `scp` of `bundle` to nodes 2..=N: all at once, or one after another.
fn scp(c: &SimCluster, s: &Sshd, bundle: &Path, parallel: bool) -> Result<f64, String> {
    let to = |i: u32| c.upgrade_dir(i).join("scp.qimg");
    settle();
    let t = Instant::now();
    let mut children = vec![];
    for i in 2..=c.nodes {
        let child = s
            .scp(bundle, &to(i))
            .spawn()
            .map_err(|e| format!("scp: {e}"))?;
        if parallel {
            children.push(child);
        } else {
            children = vec![child];
            finish(&mut children)?;
        }
    }
    finish(&mut children)?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = std::fs::read(bundle).map_err(io)?;
    for i in 2..=c.nodes {
        if std::fs::read(to(i)).map_err(io)? != bytes {
            return Err(format!("scp to node {i}: the copy differs"));
        }
        std::fs::remove_file(to(i)).map_err(io)?;
    }
    Ok(secs)
}

fn finish(children: &mut Vec<std::process::Child>) -> Result<(), String> {
    for mut ch in children.drain(..) {
        let st = ch.wait().map_err(io)?;
        if !st.success() {
            return Err(format!("scp failed ({st})"));
        }
    }
    Ok(())
}

fn one_run(c: &SimCluster, s: &Sshd, run: usize, mib: u64) -> Result<Run, String> {
    // Two releases per run, each newer than the last.
    let major = 2 + 2 * run;
    let mut bundles = vec![];
    for m in [major, major + 1] {
        let b = c.lab.build(
            &format!("d{m}"),
            &format!("{m}.0.0"),
            &format!("{m}.0"),
            mib,
        )?;
        bundles.push((format!("d{m}.qimg"), b));
    }
    let (local_name, local_b) = &bundles[0];
    for i in 1..=c.nodes {
        std::fs::copy(local_b, c.upgrade_dir(i).join(local_name)).map_err(io)?;
    }
    settle();
    let (local, _) = prepare(c, local_name)?;
    commit(c)?;

    let (peer_name, peer_b) = &bundles[1];
    std::fs::copy(peer_b, c.upgrade_dir(1).join(peer_name)).map_err(io)?;
    settle();
    let (peer, seen) = prepare(c, peer_name)?;
    same_everywhere(c, peer_name, &std::fs::read(peer_b).map_err(io)?)?;
    commit(c)?;
    let fetched = seen[1..].iter().copied().fold(0.0, f64::max);

    let scp_parallel = scp(c, s, peer_b, true)?;
    let scp_serial = scp(c, s, peer_b, false)?;
    for (name, _) in &bundles {
        for i in 1..=c.nodes {
            std::fs::remove_file(c.upgrade_dir(i).join(name)).map_err(io)?;
        }
    }
    let r = Run {
        size: std::fs::metadata(peer_b).map_err(io)?.len(),
        local,
        peer,
        fetched,
        scp_parallel,
        scp_serial,
    };
    eprintln!(
        "xtask: run {}: prepare local {:.2} s, with the fetch {:.2} s (fetched everywhere at {:.2} s); scp at once {:.2} s, one after another {:.2} s",
        run + 1,
        r.local,
        r.peer,
        r.fetched,
        r.scp_parallel,
        r.scp_serial
    );
    Ok(r)
}

pub fn distribute(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let c = SimCluster::start(
        &o.dir.join("distribute"),
        "distribute",
        Layout {
            nodes: o.nodes,
            max_node_failures: 1,
            tree_mib: o.size_mib,
            apart: true,
        },
        &match o.serve_mib {
            Some(r) => format!("peer_serve_mib_per_s = {r}\n{SIM}"),
            None => SIM.to_owned(),
        },
        true,
    )?;
    let s = Sshd::start(&o.dir.join("distribute-sshd"))?;
    let mut runs = vec![];
    for run in 0..o.runs {
        runs.push(one_run(&c, &s, run, o.size_mib)?);
    }
    let size = runs.last().map_or(0, |r| r.size) as f64;
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (local, peer, fetched) = (m(|r| r.local), m(|r| r.peer), m(|r| r.fetched));
    let (par, ser) = (m(|r| r.scp_parallel), m(|r| r.scp_serial));
    let base = par.min(ser);
    let others = f64::from(o.nodes - 1);
    let mbs = |secs: f64| size * others / secs / 1e6;
    println!(
        "bench distribute: {} simulated nodes, a {:.1} MB platform bundle on node 1, each node serving at {}, {} run(s), medians; {}; {}",
        o.nodes,
        size / 1e6,
        match o.serve_mib {
            None => "its default rate".to_owned(),
            Some(0) => "no limit".to_owned(),
            Some(r) => format!("{r} MiB/s"),
        },
        o.runs,
        host(),
        first_line(std::process::Command::new("ssh").arg("-V"))
    );
    println!(
        "  distribution to {} nodes: qimg's fetch {fetched:.2} s ({:.0} MB/s in all), scp ({}) all at once {par:.2} s, one after another {ser:.2} s; ratio {:.2} (target <= 1.0)",
        o.nodes - 1,
        mbs(fetched),
        sshd::CIPHER,
        fetched / base
    );
    println!(
        "  prepare of every node: from local files {local:.2} s, fetching first {peer:.2} s; ratio {:.2} (target <= 1.1)",
        peer / local
    );
    Ok(())
}
