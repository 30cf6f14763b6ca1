//! Three real nodes under QEMU as one cluster (issue 27). Each VM boots the same
//! node image as the node's life (`scenarios.rs`) from its own disk; the host
//! makes the cluster once (`qimgd cluster create`) and gives each node its
//! directory over SSH, as an operator would; every node runs its etcd member
//! (`qimg-etcd.service`) and its agent. The VMs reach each other only over a link
//! private to the test (`../switch.rs`); the host reaches each agent only through its
//! loopback port forward. The data-safety gate is the real one: the release's
//! container plays the storage service, whose restriper the agent's
//! `restriper_probe` asks (`release.rs`).
//!
//! Scenarios (`SCENARIOS`), each starting where the last left the cluster: the
//! cluster forms (three nodes online through each node, one login for all); an
//! instant upgrade through node 3 (uploaded to node 1, fetched by the others); a
//! bundle altered on the node that serves it, refused by the others, then the
//! good one uploaded again (`no_reboot.rs`); a rolling platform upgrade through
//! node 2, each node really rebooting in turn, each batch held until the
//! restriper finished; a complete reboot, every node at once; a slot damaged on
//! node 3, the cluster rolled back; the coordinator's VM cut mid-rollout
//! (`platform.rs`). `--quick` (CI's) runs the first three.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bootctl::entries::{DEFAULT_TRIES, EntryState};
use bootctl::layout::Slot;

use super::super::expect;
use super::release::{self, Health, Release};
use super::scenarios::{Monitor, committed, field, instant_downtime, journal, json};
use super::switch::Switch;
use super::{Lab, Node, UPGRADE_DIR, vm};
use crate::target_dir;

mod no_reboot;
mod platform;
mod watch;

use no_reboot::{altered, formed, instant};
use platform::{complete, coordinator_cut, damaged, rolling};
use watch::{BOOT_REPORT, restarts_and_boots};

/// The releases the cluster's scenarios use: the disks' 1.0.0, 1.0.1 (the same
/// platform with a new container), then two platform releases.
pub const RELEASES: &[Release] = &[
    Release::platform("1.0.0", Health::Good),
    Release::container("1.0.1", "1.0.0"),
    Release::platform("2.0.0", Health::Good),
    Release::platform("2.1.0", Health::Good),
    Release::platform("2.2.0", Health::Good),
    Release::container("1.0.2", "1.0.0"),
    Release::platform("2.3.0", Health::Good),
];

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
/// A commit whose node falls back (its tries) and the cluster's rollback.
const ROLLBACK_LIMIT: Duration = Duration::from_secs(900);
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
    link: Switch,
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
/// booted from `slot` (within [`REGISTERED_LIMIT`]).
fn all_on(c: &Cluster, version: &str, slot: Slot) -> Result<(), String> {
    // A node registers what it runs every third of its lease (10 s here): the
    // list may lag a job that just ended by that long.
    let deadline = Instant::now() + REGISTERED_LIMIT;
    loop {
        match all_on_now(c, version, slot) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
            r => {
                return r
                    .map_err(|e| format!("{e} (still so {} s later)", REGISTERED_LIMIT.as_secs()));
            }
        }
    }
}

/// How long every node's list may take to show what each node now runs.
const REGISTERED_LIMIT: Duration = Duration::from_secs(30);

/// [`all_on`], as the lists say now.
fn all_on_now(c: &Cluster, version: &str, slot: Slot) -> Result<(), String> {
    for (i, n) in c.nodes.iter().enumerate() {
        let list = nodes_list(n)?;
        expect(
            list.len() == NODES as usize && online(&list) == NODES as usize,
            &format!("node {}: every node online: {list:?}", i + 1),
        )?;
        for m in &list {
            expect(
                field(m, "software_version") == version
                    && field(m, "boot_slot") == slot.to_string(),
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
    let link = Switch::start(&dir.join("link.sock"))?;
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
            switch: link.path.clone(),
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
    expect(
        link.ports() == NODES as usize,
        &format!("every node's NIC on the link ({} ports)", link.ports()),
    )?;
    eprintln!(
        "xtask: cluster: three nodes powered on together, all agents answering in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Where a boot's time goes, by systemd's count on node 1 (three VMs on
    // the machine's cores).
    if let Ok(out) =
        nodes[0].ssh("systemd-analyze; systemd-analyze critical-chain qimgd.service | tail -n +3")
    {
        for l in out.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("xtask: cluster: node 1: {}", l.trim());
        }
    }
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
            // An earlier try whose answer was lost (etcd took the write, then
            // the call timed out): the user is there. The logins below prove it.
            Err(e) if e.contains("already exists") => break,
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "the cluster's etcd did not take a user within {FORM_LIMIT:?}: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
    // etcd's access control on, as the operator does once the members run: a
    // role per node. From node 1, with the CA's key copied there for the
    // command and removed after it (an operator's laptop in the field).
    let t_secure = Instant::now();
    nodes[0].ssh("rm -rf /run/qimg-secure && mkdir -m 700 /run/qimg-secure")?;
    nodes[0].scp(&made.join("ca"), "/run/qimg-secure/ca")?;
    nodes[0].scp(&made.join("node1"), "/run/qimg-secure/node1")?;
    let secured = nodes[0].ssh(
        "qimgd cluster secure-etcd --out /run/qimg-secure; r=$?; rm -rf /run/qimg-secure; exit $r",
    )?;
    expect(
        secured.lines().count() == NODES as usize,
        &format!("a user per node in etcd: {secured}"),
    )?;
    eprintln!(
        "xtask: cluster: etcd's authentication on, a role per node, in {:.1} s",
        t_secure.elapsed().as_secs_f64()
    );
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
    Ok(Cluster { nodes, link })
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

/// Where the cluster is before a scenario that reads it: the release the
/// nodes run, the platform release node 1 booted and its slot.
struct Before {
    version: String,
    platform: String,
    slot: Slot,
}

fn before(c: &Cluster) -> Result<Before, String> {
    let list = nodes_list(&c.nodes[0])?;
    let me = list.first().ok_or("nodes_list is empty")?;
    let slot = match field(me, "boot_slot") {
        "a" => Slot::A,
        "b" => Slot::B,
        other => return Err(format!("node 1 booted slot {other:?}")),
    };
    let console = vm::console_of(&c.nodes[0].serial);
    let platform = console
        .lines()
        .rev()
        .find(|l| l.contains(BOOT_REPORT))
        .and_then(super::parse_report)
        .ok_or("no boot report on node 1's console")?
        .release;
    Ok(Before {
        version: field(me, "software_version").to_owned(),
        platform,
        slot,
    })
}

/// The state of `slot`'s boot entry in an ESP's status.
fn entry_state(esp: &bootctl::status::Status, slot: Slot) -> Option<EntryState> {
    esp.slots
        .iter()
        .find(|s| s.slot == slot)
        .and_then(|s| s.state)
}

type Scenario = fn(&Lab, &mut Cluster) -> Result<(), String>;

/// The scenarios in the order they run; each starts where the last left the
/// cluster (3 needs the 1.0.0 platform; 6 and 7 read where the cluster is).
const SCENARIOS: [(&str, Scenario); COUNT] = [
    ("cluster 1: one cluster through every node", formed),
    ("cluster 2: instant upgrade of three nodes", instant),
    (
        "cluster 3: a bundle altered on the node serving it is refused",
        altered,
    ),
    (
        "cluster 4: upload to one node, rolling platform upgrade",
        rolling,
    ),
    ("cluster 5: complete reboot of three nodes", complete),
    (
        "cluster 6: a slot damaged on node 3, the cluster rolled back",
        damaged,
    ),
    (
        "cluster 7: the coordinator's VM cut mid-rollout",
        coordinator_cut,
    ),
];

/// How many scenarios there are.
pub const COUNT: usize = 7;

/// The scenarios CI runs (`--quick`): no reboots.
pub const QUICK: [usize; 3] = [1, 2, 3];

/// Forms the cluster, then runs the scenarios in order (each starts where the
/// last left the cluster). Returns each one's time.
pub fn run(lab: &Lab, pick: &[usize]) -> Result<Vec<(String, Duration)>, String> {
    let t = Instant::now();
    let mut c = form(lab)?;
    let mut times = vec![("cluster: three nodes form".to_owned(), t.elapsed())];
    let list: Vec<(&str, Scenario)> = SCENARIOS
        .iter()
        .enumerate()
        .filter(|(i, _)| pick.contains(&(i + 1)))
        .map(|(_, s)| *s)
        .collect();
    for (name, f) in list {
        let t = Instant::now();
        f(lab, &mut c).map_err(|e| format!("{name}: {e} (consoles in {})", lab.work.display()))?;
        eprintln!("xtask: cluster: {name}: {:.1} s", t.elapsed().as_secs_f64());
        times.push((name.to_owned(), t.elapsed()));
    }
    for n in &mut c.nodes {
        n.power_off();
    }
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "xtask: cluster: the link carried {} frames, dropped {} for ports not reading",
        load(&c.link.frames),
        load(&c.link.dropped)
    );
    Ok(times)
}
