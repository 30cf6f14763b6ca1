//! The node's life, scenario by scenario (issue 15): each one starts where the last
//! left the node, as on a real appliance, and asserts the serial console, the
//! API's answers and the ESP afterwards.

use std::process::Child;
use std::time::{Duration, Instant};

use bootctl::entries::{DEFAULT_TRIES, EntryState};
use bootctl::layout::Slot;

use super::super::expect;
use super::release::{Health, Release};
use super::{Lab, Node, root_hash};

/// The releases the scenarios use: platform releases, an instant one, one whose
/// slot is damaged after install, one whose health check fails.
pub const RELEASES: &[Release] = &[
    Release::platform("1.0.0", Health::Good),
    Release::platform("2.0.0", Health::Good),
    Release::container("2.0.1", "2.0.0"),
    Release::platform("2.1.0", Health::Good),
    Release::platform("2.2.0", Health::Failing),
    Release::platform("2.3.0", Health::Good),
];

/// A whole upgrade through one platform reboot may take this long.
const UPGRADE_LIMIT: Duration = Duration::from_secs(420);
/// Three failed tries and the fallback boot.
const ROLLBACK_LIMIT: Duration = Duration::from_secs(600);

pub(super) fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// A `qq` run that follows the upgrade (its monitor), in the background.
pub(super) struct Monitor {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Monitor {
    pub(super) fn start(node: &Node, args: &[&str], name: &str) -> Result<Monitor, String> {
        let out = node.serial.with_file_name(format!("qq-{name}.out"));
        let err = node.serial.with_file_name(format!("qq-{name}.err"));
        let f = std::fs::File::create(&out).map_err(|e| e.to_string())?;
        let e = std::fs::File::create(&err).map_err(|e| e.to_string())?;
        let child = node
            .qq(args)
            .stdout(f)
            .stderr(e)
            .spawn()
            .map_err(|e| format!("qq: {e}"))?;
        Ok(Monitor { child, out, err })
    }

    /// Waits for qq to end, at most `limit`; returns its exit code and output
    /// (and, when it failed, its stderr after it, for the failure's message).
    pub(super) fn wait(mut self, limit: Duration) -> Result<(i32, String), String> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                let mut text = std::fs::read_to_string(&self.out).unwrap_or_default();
                let code = st.code().unwrap_or(-1);
                if code != 0 {
                    let err = std::fs::read_to_string(&self.err).unwrap_or_default();
                    text.push_str(&format!("\nqq's stderr ({}):\n{err}", self.err.display()));
                }
                return Ok((code, text));
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("qq did not end within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container downtime of an instant upgrade that must have ended committed
/// (qq's exit code `code`, JSON `out`), as the engine measured it in the guest.
pub(super) fn instant_downtime(code: i32, out: &str) -> Result<u64, String> {
    let s = json(out)?;
    expect(
        code == 0 && field(&s, "state") == "UPGRADE_COMMITTED" && field(&s, "mode") == "instant",
        &format!("qq upgrade_cluster ended {code}: {out}"),
    )?;
    s.get("downtime_ms")
        .and_then(|d| d.as_u64())
        .ok_or_else(|| format!("the downtime is reported: {out}"))
}

/// The end of the agent's journal on `node` (every boot's), or why not.
pub(super) fn journal(node: &Node, lines: u32) -> String {
    node.ssh(&format!(
        "journalctl --merge -u qimgd --no-pager | tail -n {lines}"
    ))
    .unwrap_or_else(|e| format!("(no journal: {e})"))
}

/// qq's answer to an upgrade that must have ended committed (exit code
/// `code`, JSON `out`); otherwise the error, with `why` (the agents' journals).
pub(super) fn committed(
    code: i32,
    out: &str,
    why: &dyn Fn() -> String,
) -> Result<serde_json::Value, String> {
    let s = if code == 0 { json(out).ok() } else { None };
    match s {
        Some(s) if field(&s, "state") == "UPGRADE_COMMITTED" => Ok(s),
        _ => Err(format!("qq upgrade_cluster ended {code}: {out}\n{}", why())),
    }
}

pub(super) fn json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("qq's JSON: {e}: {text}"))
}

/// 1: a fresh disk boots slot A through verity; the agent answers; the installer
/// adds the factory container.
fn fresh(lab: &Lab, node: &mut Node) -> Result<(), String> {
    node.medium = Some(lab.installer_medium("1.0.0")?);
    node.power_on()?;
    node.medium = None;
    let (report, version, took) = node.wait_up()?;
    eprintln!(
        "xtask: node: first boot, power on to the agent answering: {:.1} s",
        took.as_secs_f64()
    );
    expect(
        report.release == "1.0.0",
        "the fresh disk boots release 1.0.0",
    )?;
    expect(
        report.root == "/dev/mapper/root,squashfs",
        &format!("the root is the verity device, squashfs: {}", report.root),
    )?;
    let hash = root_hash(lab.bundle("1.0.0"))?;
    expect(
        report.table.contains(" verity ")
            && report.table.contains(&hash)
            && report.table.contains("panic_on_corruption"),
        &format!(
            "root's device-mapper table: verity, 1.0.0's root hash {hash}, panic on corruption: {}",
            report.table
        ),
    )?;
    expect(
        version.contains("\"revision_id\": \"qimg-node unknown\""),
        &format!("a fresh node runs no container yet: {version}"),
    )?;
    // The installer's last step: the release's container, from its bundle on
    // the installer's medium.
    let t = Instant::now();
    let out = node.ssh("qq factory_install --path /dev/vdb")?;
    eprintln!(
        "xtask: node: factory install in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    expect(
        out.contains("installed 1.0.0"),
        &format!("factory_install: {out}"),
    )?;
    let version = node.qq_ok(&["version"])?;
    expect(
        version.contains("\"revision_id\": \"qimg-node 1.0.0\""),
        &format!("qq version after the factory install: {version}"),
    )
}

/// 2: `qq upgrade_cluster --path` from the host: slot B prepared in the running
/// guest, the commit, a real reboot into B through verity, blessed, COMMITTED.
fn platform(lab: &Lab, node: &mut Node) -> Result<(), String> {
    let name = lab.offer(node, "2.0.0")?;
    let start = Instant::now();
    let (code, out) = Monitor::start(node, &["upgrade_cluster", "--path", &name], "2.0.0")?
        .wait(UPGRADE_LIMIT)?;
    let s = committed(code, &out, &|| {
        format!("the agent's journal:\n{}", journal(node, 60))
    })?;
    node.booted(lab, "2.0.0")?;
    eprintln!(
        "xtask: node: platform upgrade, prepare to the agent answering on 2.0.0: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    expect(
        field(&s, "details").contains("blessed"),
        &format!("details: {out}"),
    )?;
    let esp = node.esp_status()?;
    expect(
        esp.slots[1].state == Some(EntryState::Good)
            && esp.slots[0].state == Some(EntryState::Good),
        &format!("ESP: B blessed, A kept as the fallback: {:?}", esp.slots),
    )?;
    node.finalize()
}

/// 5: an instant upgrade: the container swapped inside the guest, the downtime
/// measured there, no reboot; then rolled back on request (not finalized): the
/// previous container runs again, no reboot.
fn instant(lab: &Lab, node: &mut Node) -> Result<(), String> {
    let name = lab.offer(node, "2.0.1")?;
    let reboots = node.vm().count("reboot: Restarting");
    let (code, out) = Monitor::start(node, &["upgrade_cluster", "--path", &name], "2.0.1")?
        .wait(UPGRADE_LIMIT)?;
    let downtime = instant_downtime(code, &out)?;
    eprintln!(
        "xtask: node: instant upgrade, container downtime measured in the guest: {downtime} ms"
    );
    expect(
        node.vm().count("reboot: Restarting") == reboots,
        "an instant upgrade does not reboot",
    )?;
    let version = node.qq_ok(&["version"])?;
    expect(
        version.contains("qimg-node 2.0.1"),
        &format!("qq version: {version}"),
    )?;
    // Not finalized: rolled back on request, the previous container running
    // again in the guest, still no reboot.
    node.qq_ok(&["upgrade_cluster", "rollback"])?;
    let version = node.qq_ok(&["version"])?;
    expect(
        version.contains("qimg-node 2.0.0"),
        &format!("qq version after the rollback: {version}"),
    )?;
    expect(
        node.vm().count("reboot: Restarting") == reboots,
        "an instant rollback does not reboot",
    )
}

/// Where systemd-pstore archives the kernel's logs on the node (node.toml's default).
const PSTORE: &str = "/var/lib/systemd/pstore";
/// The panic of an archive planted before the commit.
const PLANTED: &str = "a planted older crash";

/// 3: a slot damaged after install, the hash tree untouched: only the kernel can
/// see it. dm-verity refuses the block, the boot fails, the tries run out, the
/// node falls back, and the API says so.
fn tampered(lab: &Lab, node: &mut Node) -> Result<(), String> {
    let name = lab.offer(node, "2.1.0")?;
    let (code, out) = Monitor::start(
        node,
        &["upgrade_cluster", "prepare", "--path", &name],
        "2.1.0-prepare",
    )?
    .wait(UPGRADE_LIMIT)?;
    expect(
        code == 0 && field(&json(&out)?, "state") == "UPGRADE_PREPARED",
        &format!("prepare 2.1.0 ended {code}: {out}"),
    )?;
    node.damage_root(Slot::A)?;
    // An older panic's archive, dated a day ahead (a wall-clock step): it was there
    // before the commit's reboot, so it must not be named as the reason.
    node.ssh(&format!(
        "d={PSTORE}/100 && mkdir -p $d && \
         echo '<0>[    1.000000] Kernel panic - not syncing: {PLANTED}' > $d/dmesg.txt && \
         touch -d '+1 day' $d/dmesg.txt && sync"
    ))?;
    let start = Instant::now();
    let (code, out) = Monitor::start(node, &["upgrade_cluster", "commit"], "2.1.0-commit")?
        .wait(ROLLBACK_LIMIT)?;
    let (report, _, _) = node.wait_up()?;
    eprintln!(
        "xtask: node: damaged slot: {DEFAULT_TRIES} refused boots and the fallback in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let console = node.vm().console();
    let refused = console
        .lines()
        .filter(|l| l.contains("verity") && l.contains("data block 0 is corrupted"))
        .count();
    expect(
        refused >= DEFAULT_TRIES as usize,
        &format!(
            "the kernel's dm-verity refused block 0 on each of the {DEFAULT_TRIES} tries (seen {refused})"
        ),
    )?;
    expect(
        report.release == "2.0.0",
        &format!("the node fell back to slot B: {report:?}"),
    )?;
    let s = node.status()?;
    expect(
        code != 0 && field(&s, "error_state") == "UPGRADE_ERROR_ROLLED_BACK",
        &format!("qq ended {code} ({out}); status {s}"),
    )?;
    // Why: the kernel's panic on the last try, kept by efi_pstore and archived by
    // systemd-pstore on the fallback boot.
    let why = field(&s, "error_message");
    eprintln!("xtask: node: the API says: {why}");
    expect(
        why.contains(&format!(
            "{DEFAULT_TRIES} tries exhausted; the kernel panicked: dm-verity device corrupted"
        )) && why.contains("data block 0 is corrupted")
            && !why.contains(PLANTED),
        &format!("the API says why the tries ran out, not an older panic: {why}"),
    )?;
    let esp = node.esp_status()?;
    expect(
        matches!(esp.slots[0].state, Some(EntryState::Bad { .. }))
            && esp.slots[1].state == Some(EntryState::Good),
        &format!("ESP: A bad, B good: {:?}", esp.slots),
    )
}

/// 4: a release whose health check fails: marked bad, rebooted, back on the old
/// slot, ROLLED_BACK with the product's reason.
fn unhealthy(lab: &Lab, node: &mut Node) -> Result<(), String> {
    let name = lab.offer(node, "2.2.0")?;
    let (code, out) = Monitor::start(node, &["upgrade_cluster", "--path", &name], "2.2.0")?
        .wait(UPGRADE_LIMIT)?;
    // The new slot's boot, then the fallback's.
    let first = node.wait_report()?;
    let (report, _, _) = node.wait_up()?;
    expect(
        first.release == "2.2.0" && report.release == "2.0.0",
        &format!("booted 2.2.0, then back on 2.0.0: {first:?}, {report:?}"),
    )?;
    let s = node.status()?;
    expect(
        code != 0
            && field(&s, "error_state") == "UPGRADE_ERROR_ROLLED_BACK"
            && field(&s, "error_message").contains("storage daemon does not start"),
        &format!("qq ended {code} ({out}); status {s}"),
    )?;
    eprintln!("xtask: node: the API says: {}", field(&s, "error_message"));
    let esp = node.esp_status()?;
    expect(
        matches!(esp.slots[0].state, Some(EntryState::Bad { .. })),
        &format!("ESP: A marked bad: {:?}", esp.slots),
    )
}

/// 6: the power cut in the middle of prepare, then in the middle of the commit's
/// reboot: a good slot boots each time; the node's plan outlives the cut, so
/// the prepare goes on by itself once the node is back, and the commit's `qq`
/// finishes after the second cut.
fn power_loss(lab: &Lab, node: &mut Node) -> Result<(), String> {
    let name = lab.offer(node, "2.3.0")?;
    // Logged in before the prepare starts, so the first look comes within 50 ms.
    let mut api = node.client()?;
    let m = Monitor::start(
        node,
        &["upgrade_cluster", "prepare", "--path", &name],
        "2.3.0-cut",
    )?;
    let start = Instant::now();
    loop {
        let s: qapi::types::UpgradeStatus = api
            .get("/v3/upgrade/status")
            .map_err(|e| format!("upgrade status: {e}"))?;
        let p = s.progress.unwrap_or(0);
        if s.state == qapi::types::UpgradeState::Preparing && p >= 10 {
            eprintln!("xtask: node: power cut at {p} % of prepare");
            break;
        }
        if s.state == qapi::types::UpgradeState::Prepared {
            return Err("the prepare ended before the power cut".into());
        }
        if start.elapsed() > UPGRADE_LIMIT {
            return Err(format!("prepare never got to 10 %: {s:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    node.power_off();
    m.kill();
    let esp = node.esp_status()?;
    expect(
        esp.slots[0].label.as_deref() == Some(bootctl::layout::EMPTY)
            && esp.slots[0].entry.is_none()
            && esp.slots[1].state == Some(EntryState::Good),
        &format!(
            "cut mid-prepare: A is _empty with no entry, B good: {:?}",
            esp.slots
        ),
    )?;
    node.power_on()?;
    let (report, _, _) = node.wait_up()?;
    expect(report.release == "2.0.0", "after the cut the node boots B")?;
    // The plan (the node's own store, a cluster of one) still says prepare: the
    // node undoes the cut prepare and prepares again by itself.
    let mut api = node.client()?;
    let start = Instant::now();
    loop {
        let s: qapi::types::UpgradeStatus = api
            .get("/v3/upgrade/status")
            .map_err(|e| format!("upgrade status: {e}"))?;
        if s.state == qapi::types::UpgradeState::Prepared {
            break;
        }
        if s.error_info.is_some() || start.elapsed() > UPGRADE_LIMIT {
            return Err(format!("the cut prepare did not go on to PREPARED: {s:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The commit; the power is cut again once its reboot is under way (the
    // loader has counted the try).
    let m = Monitor::start(node, &["upgrade_cluster", "commit"], "2.3.0")?;
    let stubs = node.vm().count("EFI stub: Loaded initrd");
    let start = Instant::now();
    while node.vm().count("EFI stub: Loaded initrd") == stubs {
        if start.elapsed() > UPGRADE_LIMIT {
            return Err("the commit's reboot never started".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    node.power_off();
    let esp = node.esp_status()?;
    expect(
        matches!(esp.slots[0].state, Some(EntryState::Trying { done: 1, .. })),
        &format!("cut mid-reboot: A counted one try: {:?}", esp.slots),
    )?;
    node.power_on()?;
    let (code, out) = m.wait(UPGRADE_LIMIT)?;
    let (report, version, _) = node.wait_up()?;
    let s = node.status()?;
    expect(
        code == 0 && field(&s, "state") == "UPGRADE_COMMITTED" && report.release == "2.3.0",
        &format!("qq ended {code} ({out}); booted {report:?}; status {s}"),
    )?;
    expect(
        version.contains("qimg-node 2.3.0"),
        &format!("qq version: {version}"),
    )?;
    let esp = node.esp_status()?;
    expect(
        esp.slots[0].state == Some(EntryState::Good),
        &format!("ESP: A blessed: {:?}", esp.slots),
    )
}

type Scenario = fn(&Lab, &mut Node) -> Result<(), String>;

/// Runs the scenarios in order on `node`; returns each one's time.
pub fn run(lab: &Lab, node: &mut Node) -> Result<Vec<(String, Duration)>, String> {
    let list: [(&str, Scenario); 6] = [
        ("node 1: fresh disk boots slot A through verity", fresh),
        ("node 2: platform upgrade over HTTPS, real reboot", platform),
        (
            "node 5: instant upgrade and its rollback, no reboot",
            instant,
        ),
        (
            "node 3: slot damaged after install, verity refuses",
            tampered,
        ),
        ("node 4: failing health check, rolled back", unhealthy),
        ("node 6: power cut mid-prepare and mid-reboot", power_loss),
    ];
    // For a developer: `QIMG_NODE_SCENARIOS=1,2,6` runs only those, in this order
    // (each starts where the previous one left the node).
    let only: Option<Vec<String>> = std::env::var("QIMG_NODE_SCENARIOS")
        .ok()
        .map(|v| v.split(',').map(|x| x.trim().to_owned()).collect());
    let mut times = vec![];
    for (name, f) in list {
        let number = name.split([' ', ':']).nth(1).unwrap_or("");
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|x| x == number))
        {
            eprintln!("xtask: node: {name}: not asked for (QIMG_NODE_SCENARIOS)");
            continue;
        }
        let t = Instant::now();
        f(lab, node).map_err(|e| format!("{name}: {e} (serial log {})", node.serial.display()))?;
        eprintln!("xtask: node: {name}: {:.1} s", t.elapsed().as_secs_f64());
        times.push((name.to_owned(), t.elapsed()));
    }
    Ok(times)
}
