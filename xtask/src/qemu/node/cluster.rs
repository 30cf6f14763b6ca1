//! Three real nodes under QEMU as one cluster (issue 27). Each VM boots the same
//! node image as the node's life (`scenarios.rs`) from its own disk; the host
//! makes the cluster once (`qimgd cluster create`) and gives each node its
//! directory over SSH, as an operator would; every node runs its etcd member
//! (`qimg-etcd.service`) and its agent. The VMs reach each other only over a link
//! private to the test (`hub.rs`); the host reaches each agent only through its
//! loopback port forward. The data-safety gate is the real one: the release's
//! container plays the storage service, whose restriper the agent's
//! `restriper_probe` asks (`release.rs`).
//!
//! Scenarios: the cluster forms (three nodes online through each node, one login
//! for all); a bundle uploaded to node 1 only, then a rolling platform upgrade
//! through node 2 (the others fetch it from node 1), each node really rebooting in
//! turn, each batch held until the restriper finished; an instant upgrade of all
//! three through node 3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootctl::entries::EntryState;

use super::super::expect;
use super::hub::Hub;
use super::release::{self, Release};
use super::scenarios::{Monitor, committed, field, instant_downtime, journal, json};
use super::{Lab, Node, UPGRADE_DIR, vm};
use crate::target_dir;

/// The releases the cluster's scenarios use: the node's first three (1.0.0,
/// 2.0.0, and 2.0.1, the same platform with a new container).
pub fn releases() -> &'static [Release] {
    &super::scenarios::RELEASES[..3]
}

/// An instant upgrade of three nodes, the fetches included.
const INSTANT_LIMIT: Duration = Duration::from_secs(300);

/// The cluster's nodes, as many as the image has link addresses for (all three
/// vote in etcd).
const NODES: u32 = release::LINK_NODES;
/// Each VM: one CPU (three VMs share this machine's two cores) and 768 MiB.
const SHAPE: vm::Shape = vm::Shape {
    memory_mib: 768,
    cpus: 1,
};
/// From the directories handed out to three nodes online and a user added.
const FORM_LIMIT: Duration = Duration::from_secs(240);
/// A rolling platform upgrade of three nodes, fetches and reboots included.
const ROLLING_LIMIT: Duration = Duration::from_secs(900);
/// The stand-in's restripe after every node is back (`release.rs`, RESTRIPE), less
/// its 2 s poll: the least time from a node's boot to the next batch's reboot.
const GATE_LEAST: Duration = Duration::from_secs(8);
/// The agent's journal over every boot: the root is read-only and its machine ID
/// is made anew at each boot, so each boot's journal is under another ID.
const JOURNAL: &str = "journalctl --merge -u qimgd --no-pager";
/// The cluster's name.
const NAME: &str = "qemu";

/// The three nodes, their link and the cluster's directories.
struct Cluster {
    nodes: Vec<Node>,
    hub: Hub,
}

fn spec() -> String {
    let mut s = format!("name = \"{NAME}\"\nmax_node_failures = 1\n");
    for n in 1..=NODES {
        let a = release::link_address(n);
        s.push_str(&format!(
            "[[node]]\nid = {n}\nname = \"node{n}\"\nagent = \"{a}:8000\"\n\
             etcd_client = \"{a}:2379\"\netcd_peer = \"{a}:2380\"\n"
        ));
    }
    s
}

/// Runs `cmd` (`what`), which must succeed; else its stderr is the error.
fn succeeds(what: &str, cmd: &mut Command) -> Result<(), String> {
    let o = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    expect(
        o.status.success(),
        &format!("{what}: {}", String::from_utf8_lossy(&o.stderr)),
    )
}

/// Runs `f` on every node at once; the first error wins.
fn each<F>(nodes: &[Node], f: F) -> Result<(), String>
where
    F: Fn(usize, &Node) -> Result<(), String> + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let f = &f;
                s.spawn(move || f(i, n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    })
    .map(|_| ())
}

/// `qq nodes_list` through `node`, parsed.
fn nodes_list(node: &Node) -> Result<Vec<serde_json::Value>, String> {
    let out = node.qq_ok(&["nodes_list"])?;
    match json(&out)? {
        serde_json::Value::Array(v) => Ok(v),
        other => Err(format!("nodes_list is not a list: {other}")),
    }
}

fn online(list: &[serde_json::Value]) -> usize {
    list.iter()
        .filter(|n| field(n, "node_status") == "online")
        .count()
}

/// Through each node, `qq nodes_list` shows every node online, on `version`,
/// booted from `slot`.
fn all_on(c: &Cluster, version: &str, slot: &str) -> Result<(), String> {
    for (i, n) in c.nodes.iter().enumerate() {
        let list = nodes_list(n)?;
        expect(
            list.len() == NODES as usize && online(&list) == NODES as usize,
            &format!("node {}: every node online: {list:?}", i + 1),
        )?;
        for m in &list {
            expect(
                field(m, "software_version") == version && field(m, "boot_slot") == slot,
                &format!(
                    "node {}: every node on {version} from slot {slot}: {m}",
                    i + 1
                ),
            )?;
        }
    }
    Ok(())
}

/// Boots three fresh nodes on the link, installs the factory container on each,
/// gives each its directory of a cluster made here, and adds the user.
fn form(lab: &Lab) -> Result<Cluster, String> {
    let dir = lab.work.join("lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let hub = Hub::start(&dir.join("hub.sock"))?;
    std::fs::write(dir.join("cluster.toml"), spec()).map_err(|e| e.to_string())?;
    let made = dir.join("made");
    succeeds(
        "qimgd cluster create",
        Command::new(target_dir().join("debug/qimgd"))
            .args(["cluster", "create", "--spec"])
            .arg(dir.join("cluster.toml"))
            .arg("--out")
            .arg(&made),
    )?;
    let mut nodes = vec![];
    for n in 1..=NODES {
        let name = format!("n{n}");
        let link = vm::Link {
            hub: hub.path.clone(),
            socket: lab.work.join(&name).join("link.sock"),
            mac: release::link_mac(n),
        };
        let mut node = lab.node_shaped(&name, "1.0.0", SHAPE, Some(link))?;
        // The installer's medium: the release the disk was made from, whose
        // container the factory install adds.
        node.medium = Some(lab.installer_medium("1.0.0")?);
        nodes.push(node);
    }
    let t = Instant::now();
    for n in &mut nodes {
        n.power_on()?;
        n.medium = None;
    }
    for n in &mut nodes {
        let (report, _, _) = n.wait_up()?;
        expect(report.release == "1.0.0", "a fresh node boots 1.0.0")?;
    }
    eprintln!(
        "xtask: cluster: three nodes powered on together, all agents answering in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The installer's last step on each node: the release's container, from the
    // medium.
    let t = Instant::now();
    each(&nodes, |_, n| {
        let out = n.ssh("qq factory_install --path /dev/vdb")?;
        expect(
            out.contains("installed 1.0.0"),
            &format!("factory_install: {out}"),
        )
    })?;
    eprintln!(
        "xtask: cluster: factory installs in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Each node joins: its directory where a read-only appliance keeps it
    // (qimgd.toml names none), then its etcd member and agent restarted.
    let t = Instant::now();
    each(&nodes, |i, n| {
        n.scp(
            &made.join(format!("node{}", i + 1)),
            "/var/lib/qimgd/cluster",
        )?;
        n.ssh(
            "chmod 700 /var/lib/qimgd/cluster && \
             systemctl restart --no-block qimg-etcd.service qimgd.service",
        )
        .map(|_| ())
    })?;
    // The cluster's users live in etcd: the first one is added once etcd answers.
    let deadline = Instant::now() + FORM_LIMIT;
    loop {
        let r = nodes[0].ssh(&format!(
            "printf '%s\\n' '{}' | qimgd user add {} --password-stdin",
            release::PASSWORD,
            release::USER
        ));
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "the cluster's etcd did not take a user within {FORM_LIMIT:?}: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
    for n in &nodes {
        loop {
            let login = n.qq_out(&["login", "-u", release::USER, "-p", release::PASSWORD])?;
            if login.status.success() && nodes_list(n).is_ok_and(|l| online(&l) == NODES as usize) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {} did not see three nodes online within {FORM_LIMIT:?}: {}",
                    n.serial.display(),
                    String::from_utf8_lossy(&login.stderr)
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    eprintln!(
        "xtask: cluster: joined, etcd formed, three nodes online in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Cluster { nodes, hub })
}

/// 1: the cluster as each node sees it, and one login for all.
fn formed(_lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    all_on(c, "1.0.0", "a")?;
    // A token from node 1 is a token of the cluster.
    let c1 = c.nodes[0].client()?;
    let token = c1.token().ok_or("node 1's login gave no token")?.to_owned();
    for n in &c.nodes[1..] {
        let mut other = n.client()?;
        other.set_token(Some(token.clone()));
        let _: serde_json::Value = other
            .get("/v1/cluster/nodes/")
            .map_err(|e| format!("node 1's token on another node: {e}"))?;
    }
    Ok(())
}

/// When each node went down (the kernel's restart) and came up again (its boot
/// report), as the host saw the consoles during a run.
#[derive(Clone, Debug, Default)]
struct Seen {
    down: Option<Instant>,
    up: Option<Instant>,
}

/// Watches the consoles of `serials` from now on, every 200 ms.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The kernel's restart and the node's boot report, as counted on a console.
const RESTART: &str = "reboot: Restarting";
const BOOT_REPORT: &str = "QIMG-NODE-BOOT";

/// How many restarts and boot reports `serial` shows so far (one read).
fn restarts_and_boots(serial: &Path) -> (usize, usize) {
    let text = vm::console_of(serial);
    (
        vm::count_in(&text, RESTART),
        vm::count_in(&text, BOOT_REPORT),
    )
}

impl Watch {
    fn start(serials: Vec<PathBuf>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![Seen::default(); serials.len()]));
        let (s, w) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let base: Vec<(usize, usize)> = serials.iter().map(|p| restarts_and_boots(p)).collect();
            while !s.load(Ordering::Relaxed) {
                for (i, p) in serials.iter().enumerate() {
                    let (restarts, boots) = restarts_and_boots(p);
                    let mut w = w.lock().expect("not poisoned");
                    if w[i].down.is_none() && restarts > base[i].0 {
                        w[i].down = Some(Instant::now());
                    }
                    if w[i].up.is_none() && boots > base[i].1 {
                        w[i].up = Some(Instant::now());
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().expect("not poisoned").clone()
    }
}

/// The SHA-256 of a file on the node.
fn sha256_on(node: &Node, path: &str) -> Result<String, String> {
    let out = node.ssh(&format!("sha256sum {path}"))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn sha256_here(path: &Path) -> Result<String, String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// 2: the bundle uploaded to node 1 only; a rolling platform upgrade asked of
/// node 2: every node prepares (nodes 2 and 3 fetch the bundle from node 1), then
/// reboots into slot B one at a time, the coordinator's node last, each next
/// batch held until the restriper finished after the last one came back.
fn rolling(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    let bundle = lab.bundle("2.0.0");
    let name = &upload(lab, c, "2.0.0")?;
    let path = format!("{UPGRADE_DIR}/{name}");
    for n in &c.nodes[1..] {
        expect(
            n.ssh(&format!("test ! -e {path}")).is_ok(),
            "nodes 2 and 3 do not have the bundle before the upgrade",
        )?;
    }
    let watch = Watch::start(c.nodes.iter().map(|n| n.serial.clone()).collect());
    let t = Instant::now();
    let monitor = Monitor::start(
        &c.nodes[1],
        &["upgrade_cluster", "--rolling", "--path", name],
        "rolling",
    )?;
    let err_log = c.nodes[1].serial.with_file_name("qq-rolling.err");
    let (code, out) = monitor.wait(ROLLING_LIMIT)?;
    let seen = watch.finish();
    let progress = std::fs::read_to_string(&err_log).unwrap_or_default();
    committed(code, &out, &|| {
        c.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("node {}'s agent:\n{}\n", i + 1, journal(n, 40)))
            .collect()
    })?;
    eprintln!(
        "xtask: cluster: rolling platform upgrade of three nodes, asked of node 2: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Every node: booted 2.0.0 through verity, blessed, A kept.
    let want = sha256_here(bundle)?;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        n.booted(lab, "2.0.0")
            .map_err(|e| format!("node {}: {e}", i + 1))?;
        let esp = n.esp_status()?;
        expect(
            esp.slots[1].state == Some(EntryState::Good)
                && esp.slots[0].state == Some(EntryState::Good),
            &format!(
                "node {}: ESP: B blessed, A kept as the fallback: {:?}",
                i + 1,
                esp.slots
            ),
        )?;
        expect(
            sha256_on(n, &path)? == want,
            &format!("node {}: its copy of {name} is the bundle", i + 1),
        )?;
        if i > 0 {
            let j = n.ssh(JOURNAL)?;
            expect(
                j.contains(&format!("fetched {name}")),
                &format!("node {}'s agent fetched {name} from a peer", i + 1),
            )?;
        }
    }
    // The batches, one node each, the coordinator's node last.
    let view: serde_json::Value = c.nodes[0]
        .client()?
        .get("/v1/qimg/cluster/upgrade")
        .map_err(|e| format!("the cluster's upgrade: {e}"))?;
    let batches: Vec<usize> = view["batches"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|x| x.as_array().filter(|x| x.len() == 1))
                .filter_map(|x| x[0].as_u64())
                .map(|n| n as usize)
                .collect()
        })
        .unwrap_or_default();
    let mut sorted = batches.clone();
    sorted.sort();
    expect(
        sorted == (1..=NODES as usize).collect::<Vec<_>>(),
        &format!("three batches of one node each: {view}"),
    )?;
    let last = batches[2];
    let j = c.nodes[last - 1].ssh(JOURNAL)?;
    expect(
        j.contains("steps down as coordinator"),
        &format!("node {last}, rebooted last, was the coordinator and stepped down"),
    )?;
    // The gate: each batch's reboot came after the last batch's node was back
    // and its data restriped.
    for w in batches.windows(2) {
        let (a, b) = (&seen[w[0] - 1], &seen[w[1] - 1]);
        let (Some(a_up), Some(b_down), Some(a_down)) = (a.up, b.down, a.down) else {
            return Err(format!("every node went down and up: {seen:?}"));
        };
        eprintln!(
            "xtask: cluster: node {} down to up {:.1} s; node {} went down {:.1} s after it was back",
            w[0],
            a_up.duration_since(a_down).as_secs_f64(),
            w[1],
            b_down.saturating_duration_since(a_up).as_secs_f64()
        );
        expect(
            b_down >= a_up + GATE_LEAST,
            &format!(
                "node {} rebooted {:.1} s after node {} was back: the restriper gate holds at least {GATE_LEAST:?}",
                w[1],
                b_down.saturating_duration_since(a_up).as_secs_f64(),
                w[0]
            ),
        )?;
    }
    expect(
        progress.matches("waiting for the restriper").count() >= 2
            && progress.contains("data fully protected"),
        &format!("qq shows the restriper waits: {progress}"),
    )?;
    // Qumulo's reboot status is IDLE again once the cycle ended.
    let reboot = json(&c.nodes[0].qq_ok(&["reboot_status"])?)?;
    expect(
        reboot["state"] == "REBOOT_IDLE",
        &format!("reboot_status after the rolling reboot: {reboot}"),
    )?;
    all_on(c, "2.0.0", "b")?;
    Ok(())
}

/// Uploads `version`'s bundle to node 1 with `qq upgrade_upload`; its name.
fn upload(lab: &Lab, c: &Cluster, version: &str) -> Result<String, String> {
    let bundle = lab.bundle(version);
    let t = Instant::now();
    succeeds(
        "qq upgrade_upload to node 1",
        &mut c.nodes[0].qq_waiting(
            120,
            &["upgrade_upload", "--file", &bundle.display().to_string()],
        ),
    )?;
    eprintln!(
        "xtask: cluster: {version}.qimg uploaded to node 1 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(format!("{version}.qimg"))
}

/// 3: an instant upgrade of all three: 2.0.1 (the same platform, a new
/// container) uploaded to node 1 and asked of node 3. Every node fetches it (or
/// has it), swaps its container, and reboots nothing; the downtime is measured
/// in the guests.
fn instant(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    let name = upload(lab, c, "2.0.1")?;
    let reboots: Vec<usize> = c
        .nodes
        .iter()
        .map(|n| restarts_and_boots(&n.serial).0)
        .collect();
    let t = Instant::now();
    let (code, out) = Monitor::start(
        &c.nodes[2],
        &["upgrade_cluster", "--path", &name],
        "instant",
    )?
    .wait(INSTANT_LIMIT)?;
    let downtime = instant_downtime(code, &out)?;
    eprintln!(
        "xtask: cluster: instant upgrade of three nodes in {:.1} s, container downtime measured in the guests: {downtime} ms",
        t.elapsed().as_secs_f64()
    );
    for (i, n) in c.nodes.iter().enumerate() {
        expect(
            restarts_and_boots(&n.serial).0 == reboots[i],
            &format!("node {}: an instant upgrade does not reboot", i + 1),
        )?;
        let version = n.qq_ok(&["version"])?;
        expect(
            version.contains("qimg-node 2.0.1"),
            &format!("node {}: qq version: {version}", i + 1),
        )?;
    }
    Ok(())
}

type Scenario = fn(&Lab, &mut Cluster) -> Result<(), String>;

/// Forms the cluster, then runs the scenarios in order (each starts where the
/// last left the cluster). Returns each one's time.
pub fn run(lab: &Lab) -> Result<Vec<(String, Duration)>, String> {
    let t = Instant::now();
    let mut c = form(lab)?;
    let mut times = vec![("cluster: three nodes form".to_owned(), t.elapsed())];
    let list: [(&str, Scenario); 3] = [
        ("cluster 1: one cluster through every node", formed),
        (
            "cluster 2: upload to one node, rolling platform upgrade",
            rolling,
        ),
        ("cluster 3: instant upgrade of three nodes", instant),
    ];
    for (name, f) in list {
        let t = Instant::now();
        f(lab, &mut c).map_err(|e| format!("{name}: {e} (consoles in {})", lab.work.display()))?;
        eprintln!("xtask: cluster: {name}: {:.1} s", t.elapsed().as_secs_f64());
        times.push((name.to_owned(), t.elapsed()));
    }
    for n in &mut c.nodes {
        n.power_off();
    }
    eprintln!(
        "xtask: cluster: the link carried {} frames",
        c.hub.frames.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(times)
}
