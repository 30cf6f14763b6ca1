//! `cargo xtask bench agent`: the node agent (`qimgd`, release build, its own
//! process) against `qq` in local mode on the same node and bundle:
//!
//! 1. the platform prepare of the `--size` MiB-tree release through the REST API
//!    (HTTPS, token; POST to `PREPARED`, polled every 10 ms) vs
//!    `qq --node N upgrade_cluster prepare` (process start to exit), alternating;
//! 2. the same REST prepare while 64 clients (each its own kept HTTPS connection)
//!    poll `/v3/upgrade/status` as fast as they can: requests/s, p50/p99 latency;
//! 3. the agent's RSS idle (after start, a login and a status) and its peak
//!    (VmHWM) over a prepare;
//! 4. a login flood (issue 28): 8 token holders read `/v3/upgrade/status` for
//!    [`FLOOD_WINDOW`] alone, then as long again while 32 clients send wrong
//!    passwords as fast as the agent answers: the readers' p50/p99 both times,
//!    how the flood was answered (401, 429, 503), the agent's peak RSS.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench_upgrade::Lab;
use crate::harness::{Opts, measure, median, release_build, settle};
use crate::target_dir;

/// Pollers of the load run.
const POLLERS: usize = 64;
/// How often the bench's own client polls for `PREPARED`: often enough to time
/// the prepare to 1 %, seldom enough not to slow it.
const POLL: Duration = Duration::from_millis(10);
/// The longest a prepare may take in the bench.
const PREPARE_LIMIT: Duration = Duration::from_secs(600);
/// Readers and flooders of the flood run, and how long each half lasts.
const READERS: usize = 8;
const FLOODERS: usize = 32;
const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// At most this many requests per client in a window (bounded in count too).
const FLOOD_MAX: u64 = 200_000;

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// A running agent process serving the lab's node.
struct Agentd {
    child: Child,
    port: u16,
}

impl Drop for Agentd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agentd {
    fn start(lab: &Lab, bundle: &Path) -> Result<Agentd, String> {
        let d = lab.w.join("agentd");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("upgrade")).map_err(io)?;
        std::fs::hard_link(bundle, d.join("upgrade/platform.qimg")).map_err(io)?;
        let config = d.join("qimgd.toml");
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.2:0\"]\nnode = \"{}\"\nstate = \"state\"\nusers = \"users.json\"\nupgrade_dir = \"upgrade\"\n",
                lab.node.display()
            ),
        )
        .map_err(io)?;
        let qimgd = target_dir().join("release/qimgd");
        crate::harness::add_bench_user(&qimgd, &config)?;
        let mut child = Command::new(&qimgd)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.join("qimgd.log")).map_err(io)?)
            .spawn()
            .map_err(io)?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut a = Agentd { child, port: 0 };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "qimgd did not listen within 30 s".to_string())?;
        a.port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("qimgd said {line:?}"))?;
        Ok(a)
    }

    fn client(&self, token: Option<&str>) -> Result<qapi::Client, String> {
        let mut c = qapi::Client::new(
            qapi::Target::Tcp {
                host: "127.0.0.2".into(),
                port: self.port,
            },
            qapi::Options::default(),
        )
        .map_err(|e| e.to_string())?;
        c.set_token(token.map(str::to_owned));
        Ok(c)
    }

    fn login(&self) -> Result<String, String> {
        crate::harness::bench_login(&mut self.client(None)?)
    }

    /// `VmRSS` or `VmHWM` in MiB.
    fn mem(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// POST prepare, then poll until PREPARED: the seconds it took.
    fn prepare(&self, token: &str) -> Result<f64, String> {
        let mut c = self.client(Some(token))?;
        let t0 = Instant::now();
        c.post(
            "/v2/upgrade/prepare",
            &qapi::types::PrepareRequest {
                image_path: "/platform.qimg".into(),
                auto_commit: false,
                do_rolling_reboot: false,
                num_nodes_to_reboot: None,
                on_failure: None,
                overrides: vec![],
                canary: None,
                soak_secs: None,
                // Upgrade after upgrade: each finalized as it commits.
                auto_finalize_after_secs: Some(0),
            },
        )
        .map_err(|e| e.to_string())?;
        loop {
            let s: qapi::types::UpgradeStatus =
                c.get("/v3/upgrade/status").map_err(|e| e.to_string())?;
            if let Some(e) = s.error_info {
                return Err(format!("the prepare failed: {e}"));
            }
            if s.state == qapi::types::UpgradeState::Prepared {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > PREPARE_LIMIT {
                return Err(format!("not prepared within {PREPARE_LIMIT:?}"));
            }
            std::thread::sleep(POLL);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn agent(o: &Opts) -> Result<(), String> {
    release_build(&["imagebuild", "qq", "qimgd"])?;
    let lab = Lab::new(&o.dir.join("agent"), o.size_mib)?;
    let big = lab.build("platform", "2.0.0", "2.0", o.size_mib)?;
    let (mut local, mut rest, mut idle, mut peak) = (vec![], vec![], vec![], vec![]);
    for run in 1..=o.runs {
        eprintln!("xtask: run {run}/{}", o.runs);
        lab.fresh_node()?;
        let u = measure(
            Command::new(&lab.qq)
                .arg("--node")
                .arg(&lab.node)
                .args(["--quiet", "upgrade_cluster", "prepare", "--path"])
                .arg(&big)
                .stdout(Stdio::null()),
        )?;
        local.push(u.wall);

        lab.fresh_node()?;
        let a = Agentd::start(&lab, &big)?;
        let token = a.login()?;
        let _: qapi::types::UpgradeStatus = a
            .client(Some(&token))?
            .get("/v3/upgrade/status")
            .map_err(|e| e.to_string())?;
        settle();
        idle.push(a.mem("VmRSS:"));
        rest.push(a.prepare(&token)?);
        peak.push(a.mem("VmHWM:"));
    }

    // Under load: 64 pollers while the prepare runs.
    lab.fresh_node()?;
    let a = Agentd::start(&lab, &big)?;
    let token = a.login()?;
    settle();
    let stop = Arc::new(AtomicBool::new(false));
    let mut pollers = vec![];
    for _ in 0..POLLERS {
        let mut c = a.client(Some(&token))?;
        let stop = stop.clone();
        pollers.push(std::thread::spawn(move || {
            let mut lat = vec![];
            let mut errors = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match c.get::<qapi::types::UpgradeStatus>("/v3/upgrade/status") {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let t0 = Instant::now();
    let loaded = a.prepare(&token);
    let window = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (mut lat, mut errors) = (vec![], 0);
    for p in pollers {
        let (l, e) = p.join().map_err(|_| "a poller panicked")?;
        lat.extend(l);
        errors += e;
    }
    let loaded = loaded?;
    lat.sort_by(f64::total_cmp);
    let loaded_peak = a.mem("VmHWM:");
    drop(a);

    let flood = login_flood(&lab, &big)?;

    let (l, r) = (median(local), median(rest));
    println!(
        "agent, platform prepare of a {} MiB-tree release, median of {} runs:\n  qq --node (local mode, process start to exit): {l:.3} s\n  qimgd REST (HTTPS POST to PREPARED, polled every 10 ms): {r:.3} s\n  overhead: {:+.1} %\n  with {POLLERS} clients polling /v3/upgrade/status meanwhile: prepare {loaded:.3} s; {} requests in {window:.2} s = {:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {errors} errors\n  agent RSS: idle {:.1} MiB, peak over a prepare {:.1} MiB (under load {loaded_peak:.1} MiB)",
        o.size_mib,
        o.runs,
        (r / l - 1.0) * 100.0,
        lat.len(),
        lat.len() as f64 / window,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        median(idle),
        median(peak),
    );
    println!("{flood}");
    Ok(())
}

/// Step 4: the readers' latency without, then with, a login flood; in words.
fn login_flood(lab: &Lab, big: &Path) -> Result<String, String> {
    lab.fresh_node()?;
    let a = Agentd::start(lab, big)?;
    let token = a.login()?;
    settle();
    let quiet = read_for(&a, &token, FLOOD_WINDOW)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = vec![];
    for _ in 0..FLOODERS {
        let mut c = a.client(None)?;
        let stop = stop.clone();
        flooders.push(std::thread::spawn(move || {
            let wrong = qapi::types::LoginRequest {
                username: "admin".into(),
                password: "not-the-password".into(),
            };
            let mut answers = std::collections::BTreeMap::<String, u64>::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < FLOOD_MAX {
                n += 1;
                let what = match c.post("/v1/session/login", &wrong) {
                    Ok(_) => "200".to_owned(),
                    Err(e) => e
                        .status()
                        .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                };
                *answers.entry(what).or_default() += 1;
            }
            answers
        }));
    }
    let loaded = read_for(&a, &token, FLOOD_WINDOW);
    stop.store(true, Ordering::SeqCst);
    let mut answers = std::collections::BTreeMap::<String, u64>::new();
    for f in flooders {
        for (k, v) in f.join().map_err(|_| "a flooder panicked")? {
            *answers.entry(k).or_default() += v;
        }
    }
    let loaded = loaded?;
    let peak = a.mem("VmHWM:");
    drop(a);
    let answered: Vec<String> = answers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    Ok(format!(
        "  a login flood, {FLOODERS} clients sending wrong passwords for {:.0} s: answered {}
  {READERS} token holders reading /v3/upgrade/status: alone {}; during the flood {}
  agent RSS peak (VmHWM) after the flood: {peak:.1} MiB",
        FLOOD_WINDOW.as_secs_f64(),
        answered.join(", "),
        quiet,
        loaded,
    ))
}

/// [`READERS`] token holders read the status for `window`: their latency in words.
fn read_for(a: &Agentd, token: &str, window: Duration) -> Result<String, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = vec![];
    for _ in 0..READERS {
        let mut c = a.client(Some(token))?;
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let (mut lat, mut errors, mut n) = (vec![], 0u64, 0u64);
            while !stop.load(Ordering::SeqCst) && n < FLOOD_MAX {
                n += 1;
                let t = Instant::now();
                match c.get::<qapi::types::UpgradeStatus>("/v3/upgrade/status") {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    std::thread::sleep(window);
    stop.store(true, Ordering::SeqCst);
    let (mut lat, mut errors) = (vec![], 0);
    for r in readers {
        let (l, e) = r.join().map_err(|_| "a reader panicked")?;
        lat.extend(l);
        errors += e;
    }
    lat.sort_by(f64::total_cmp);
    Ok(format!(
        "{} reads, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {errors} errors",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
    ))
}
