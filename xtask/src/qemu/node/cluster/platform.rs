//! The cluster's platform scenarios, each with real reboots: rolling,
//! complete, a damaged slot rolled back cluster-wide, the coordinator cut.

use super::watch::Watch;
use super::*;

/// 4: the bundle uploaded to node 1 only; a rolling platform upgrade asked of
/// node 2: every node prepares (nodes 2 and 3 fetch the bundle from node 1;
/// halfway, node 1's agent restarts and their fetches resume where they broke
/// off), then
/// reboots into slot B one at a time, the coordinator's node last, each next
/// batch held until the restriper finished after the last one came back.
pub(super) fn rolling(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
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
    let cut_at = restart_server_halfway(c, name, file_size(bundle)?)?;
    let err_log = c.nodes[1].serial.with_file_name("qq-rolling.err");
    let (code, out) = monitor.wait(ROLLING_LIMIT)?;
    let seen = watch.finish();
    let progress = std::fs::read_to_string(&err_log).unwrap_or_default();
    committed_everywhere(c, code, &out)?;
    eprintln!(
        "xtask: cluster: rolling platform upgrade of three nodes, asked of node 2: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Every node: booted 2.0.0 through verity, blessed, A kept.
    for (i, n) in c.nodes.iter_mut().enumerate() {
        n.booted(lab, "2.0.0")
            .map_err(|e| format!("node {}: {e}", i + 1))?;
        blessed_over(n, i, Slot::B)?;
    }
    // Each node's copy is the bundle (hashed on the three at once), and nodes 2
    // and 3 logged their fetch; the one that was halfway took its stream up
    // again where it broke off, not from the start.
    let want = sha256_here(bundle)?;
    each(&c.nodes, |i, n| {
        expect(
            sha256_on(n, &path)? == want,
            &format!("node {}: its copy of {name} is the bundle", i + 1),
        )?;
        let journal = n.ssh(JOURNAL)?;
        expect(
            i == 0 || journal.contains(&format!("fetched {name}")),
            &format!("node {}'s agent fetched {name} from a peer", i + 1),
        )?;
        if i == cut_at.0 {
            let resumed = resumed_at(&journal, name);
            expect(
                !resumed.is_empty() && resumed.iter().all(|b| *b >= cut_at.1),
                &format!(
                    "node {} took its fetch up again at or after byte {} (it had that much when node 1's agent restarted): {resumed:?}",
                    i + 1,
                    cut_at.1
                ),
            )?;
            eprintln!(
                "xtask: cluster: node {}'s fetch, cut at {} bytes, taken up again at byte(s) {resumed:?}",
                i + 1,
                cut_at.1
            );
        }
        Ok(())
    })?;
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
    all_on(c, "2.0.0", Slot::B)?;
    c.nodes[0].finalize()
}

/// How long nodes 2 and 3 may take to hold half the bundle, node 1 prepared.
const HALF_FETCH_LIMIT: Duration = Duration::from_secs(300);

/// Waits until node 1 (which serves the bundle) has prepared and node 2 or 3
/// holds at least half of its fetch, then restarts node 1's agent: the streams
/// to both break. Returns the node (0-based) that was furthest, and the bytes
/// it held.
fn restart_server_halfway(c: &Cluster, name: &str, size: u64) -> Result<(usize, u64), String> {
    use qapi::types::NodeStep;
    // One command per node: the bytes of its partial file(s), then "done" once
    // the bundle has its name.
    let probe = format!(
        "for f in {UPGRADE_DIR}/{PARTIAL}*; do [ -e \"$f\" ] && stat -c %s \"$f\"; done; \
         [ -e {UPGRADE_DIR}/{name} ] && echo done; true"
    );
    let deadline = Instant::now() + HALF_FETCH_LIMIT;
    loop {
        let prepared = plan_view(c).is_some_and(|v| {
            v.nodes
                .first()
                .is_some_and(|n| n.step == Some(NodeStep::Prepared))
        });
        let mut held = vec![];
        for (i, n) in c.nodes.iter().enumerate().skip(1) {
            let out = n.ssh(&probe).unwrap_or_default();
            let bytes: u64 = out
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .sum();
            held.push((i, bytes, out.contains("done")));
        }
        if held.iter().any(|h| h.2) {
            return Err(format!(
                "a node finished its fetch before node 1 prepared and another held half of it: {held:?}"
            ));
        }
        let (i, bytes, _) = *held.iter().max_by_key(|h| h.1).expect("two nodes");
        if prepared && bytes * 2 >= size {
            c.nodes[0].ssh("systemctl restart qimgd.service")?;
            eprintln!(
                "xtask: cluster: node 1's agent restarted while node {} held {bytes} of {size} bytes",
                i + 1
            );
            return Ok((i, bytes));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node 1 prepared ({prepared}) and half a fetch ({held:?}) not both within {HALF_FETCH_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The name prefix of a bundle being received (`qimgd::images::PARTIAL_PREFIX`).
const PARTIAL: &str = ".upload-";

/// Where the agent's journal says its fetch of `name` was taken up again.
fn resumed_at(journal: &str, name: &str) -> Vec<u64> {
    let marker = format!("fetch of {name}: resuming at byte ");
    journal
        .lines()
        .filter_map(|l| l.split_once(&marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn file_size(p: &std::path::Path) -> Result<u64, String> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// `qq`'s run ended committed, or the error with every node's agent journal.
fn committed_everywhere(c: &Cluster, code: i32, out: &str) -> Result<(), String> {
    committed(code, out, &|| {
        c.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("node {}'s agent:\n{}\n", i + 1, journal(n, 40)))
            .collect()
    })
    .map(|_| ())
}

/// Node `i`'s ESP: the slot it booted (`now`) blessed, the other kept
/// good as the fallback.
fn blessed_over(n: &Node, i: usize, now: Slot) -> Result<(), String> {
    let esp = n.esp_status()?;
    expect(
        entry_state(&esp, now) == Some(EntryState::Good)
            && entry_state(&esp, now.other()) == Some(EntryState::Good),
        &format!(
            "node {}: ESP: slot {} blessed, the other kept as the fallback: {:?}",
            i + 1,
            now,
            esp.slots
        ),
    )
}

/// 5: a complete reboot: 2.1.0 uploaded to node 1 and asked of node 1 without
/// `--rolling`: every node prepares, then all three reboot at once into the other slot
/// (the API is gone meanwhile) and the cluster comes back on the new release.
pub(super) fn complete(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    let was = before(c)?;
    let new = was.slot.other();
    let name = upload(lab, c, "2.1.0")?;
    let watch = Watch::start(c.nodes.iter().map(|n| n.serial.clone()).collect());
    let t = Instant::now();
    let (code, out) = Monitor::start(
        &c.nodes[0],
        &["upgrade_cluster", "--path", &name],
        "complete",
    )?
    .wait(ROLLING_LIMIT)?;
    let seen = watch.finish();
    committed_everywhere(c, code, &out)?;
    eprintln!(
        "xtask: cluster: complete reboot of three nodes, asked of node 1: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // All at once: every node went down before any came back, so there was a
    // time when no node answered.
    let (Some(last_down), Some(first_up)) = (
        seen.iter().filter_map(|s| s.down).max(),
        seen.iter().filter_map(|s| s.up).min(),
    ) else {
        return Err(format!("every node went down and up: {seen:?}"));
    };
    expect(
        seen.iter().all(|s| s.down.is_some() && s.up.is_some()) && last_down < first_up,
        &format!("all three nodes were down together: {seen:?}"),
    )?;
    eprintln!(
        "xtask: cluster: all three down for {:.1} s (the last one down to the first boot report)",
        first_up.duration_since(last_down).as_secs_f64()
    );
    for (i, n) in c.nodes.iter_mut().enumerate() {
        n.booted(lab, "2.1.0")
            .map_err(|e| format!("node {}: {e}", i + 1))?;
        blessed_over(n, i, new)?;
    }
    let view: serde_json::Value = c.nodes[0]
        .client()?
        .get("/v1/qimg/cluster/upgrade")
        .map_err(|e| format!("the cluster's upgrade: {e}"))?;
    expect(
        view["batches"].as_array().is_none_or(|b| b.len() <= 1),
        &format!("a complete reboot is one batch of every node: {view}"),
    )?;
    all_on(c, "2.1.0", new)?;
    c.nodes[0].finalize()
}

/// 6: a platform release whose slot is damaged on node 3 only, after its
/// prepare (blocks changed under the verity tree): all three reboot at once;
/// nodes 1 and 2 boot it, node 3's kernel refuses it until its tries run out and
/// it falls back; the cluster takes nodes 1 and 2 back to their previous slot
/// with real reboots and ends on one release; the API names node 3 and the
/// kernel's reason.
pub(super) fn damaged(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    let was = before(c)?;
    let new = was.slot.other();
    let name = upload(lab, c, "2.2.0")?;
    let (code, out) = Monitor::start(
        &c.nodes[0],
        &["upgrade_cluster", "prepare", "--path", &name],
        "damaged-prepare",
    )?
    .wait(ROLLING_LIMIT)?;
    expect(
        code == 0 && field(&json(&out)?, "state") == "UPGRADE_PREPARED",
        &format!("prepare 2.2.0 ended {code}: {out}"),
    )?;
    c.nodes[2].damage_root(new)?;
    let t = Instant::now();
    let (code, out) = Monitor::start(&c.nodes[0], &["upgrade_cluster", "commit"], "damaged")?
        .wait(ROLLBACK_LIMIT)?;
    // Nodes 1 and 2 booted 2.2.0, then their previous release again; node 3's
    // failed tries print no boot report: its next one is the fallback's.
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let mut releases = vec![];
        if i < 2 {
            // It boots 2.2.0, then goes back at once: only its report is read.
            let report = n
                .wait_report()
                .map_err(|e| format!("node {}: {e}", i + 1))?;
            releases.push(report.release);
        }
        let (report, _, _) = n.wait_up().map_err(|e| format!("node {}: {e}", i + 1))?;
        releases.push(report.release);
        let want: Vec<&str> = if i < 2 {
            vec!["2.2.0", &was.platform]
        } else {
            vec![&was.platform]
        };
        expect(
            releases == want,
            &format!("node {} booted {want:?}: {releases:?}", i + 1),
        )?;
    }
    eprintln!(
        "xtask: cluster: node 3's slot damaged: its fallback and the cluster's rollback in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Node 3: the kernel refused block 0 on every try.
    let refused = vm::count_in(&c.nodes[2].vm().console(), "data block 0 is corrupted");
    expect(
        refused >= DEFAULT_TRIES as usize,
        &format!(
            "node 3's dm-verity refused block 0 on each of its {DEFAULT_TRIES} tries (seen {refused})"
        ),
    )?;
    for (i, n) in c.nodes[..2].iter().enumerate() {
        let esp = n.esp_status()?;
        expect(
            entry_state(&esp, was.slot) == Some(EntryState::Good)
                && entry_state(&esp, new) != Some(EntryState::Good),
            &format!(
                "node {}: ESP: the previous slot good, the new one no longer: {:?}",
                i + 1,
                esp.slots
            ),
        )?;
    }
    let esp = c.nodes[2].esp_status()?;
    expect(
        entry_state(&esp, was.slot) == Some(EntryState::Good)
            && matches!(entry_state(&esp, new), Some(EntryState::Bad { .. })),
        &format!(
            "node 3: ESP: the previous slot good, the new one bad: {:?}",
            esp.slots
        ),
    )?;
    // Why, through any node: node 3, its tries, the kernel's panic.
    let s = c.nodes[1].status()?;
    let why = field(&s, "error_message");
    eprintln!("xtask: cluster: the API says: {why}");
    expect(
        code != 0
            && why.contains("node3")
            && why.contains(&format!("{DEFAULT_TRIES} tries exhausted"))
            && why.contains("dm-verity")
            && why.contains("every node goes back"),
        &format!("qq ended {code} ({out}); the API names node 3 and the kernel's reason: {s}"),
    )?;
    all_on(c, &was.version, was.slot)
}

/// The cluster's upgrade as the first node that answers sees it.
fn plan_view(c: &Cluster) -> Option<qapi::types::ClusterUpgrade> {
    c.nodes.iter().filter(|n| n.vm.is_some()).find_map(|n| {
        let mut api = n.client().ok()?;
        api.get("/v1/qimg/cluster/upgrade").ok()
    })
}

/// 7: the coordinator's VM powered off (QEMU killed) in the middle of a rolling
/// reboot, after the first batch came back: another node takes over; the cut
/// node, powered on again, boots its good slot, rejoins, and the upgrade
/// finishes with it.
pub(super) fn coordinator_cut(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    use qapi::types::PlanPhase;
    let was = before(c)?;
    let name = upload(lab, c, "2.3.0")?;
    let t = Instant::now();
    c.nodes[0].qq_ok(&[
        "upgrade_cluster",
        "--rolling",
        "--path",
        &name,
        "--no-monitor",
    ])?;
    // The coordinator's node is the last batch; it is cut once the first batch
    // is back and the second one is under way.
    let coordinator = loop {
        if let Some(v) = plan_view(c)
            && v.phase == PlanPhase::Committing
            && v.batch >= 1
            && let Some(last) = v.batches.last().and_then(|b| b.first())
        {
            break *last as usize;
        }
        expect(
            t.elapsed() < ROLLING_LIMIT,
            "the rolling reboot's second batch began",
        )?;
        std::thread::sleep(Duration::from_millis(500));
    };
    let cut = &mut c.nodes[coordinator - 1];
    cut.power_off();
    eprintln!(
        "xtask: cluster: node {coordinator}, the coordinator, powered off {:.1} s into the rollout",
        t.elapsed().as_secs_f64()
    );
    // Another node takes over (the cut node's session lease runs out).
    let took_over = Instant::now();
    let successor = 'found: loop {
        for (i, n) in c.nodes.iter().enumerate() {
            if i + 1 != coordinator
                && n.ssh(&format!(
                    "{JOURNAL} --since=-{}s",
                    took_over.elapsed().as_secs() + 5
                ))
                .is_ok_and(|j| j.contains("this node is the cluster's coordinator"))
            {
                break 'found i + 1;
            }
        }
        expect(
            took_over.elapsed() < FORM_LIMIT,
            "another node became the coordinator",
        )?;
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "xtask: cluster: node {successor} took over as coordinator in {:.1} s",
        took_over.elapsed().as_secs_f64()
    );
    let cut = &mut c.nodes[coordinator - 1];
    let boots = restarts_and_boots(&cut.serial).1;
    cut.power_on()?;
    let (report, _, _) = cut.wait_up()?;
    expect(
        report.release == was.platform,
        &format!(
            "the cut node boots its good slot ({}): {report:?}",
            was.platform
        ),
    )?;
    // It rejoins and takes its turn: the plan ends committed.
    loop {
        if let Some(v) = plan_view(c) {
            if v.phase == PlanPhase::Committed {
                break;
            }
            expect(
                !matches!(
                    v.phase,
                    PlanPhase::Failed | PlanPhase::RollingBack | PlanPhase::Discarding
                ),
                &format!("the rollout goes on after the cut: {v:?}"),
            )?;
        }
        expect(
            t.elapsed() < ROLLING_LIMIT,
            "the rollout ended committed after the cut",
        )?;
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "xtask: cluster: rolling upgrade with the coordinator cut: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    expect(
        restarts_and_boots(&c.nodes[coordinator - 1].serial).1 >= boots + 2,
        "the cut node booted its good slot, then the new release",
    )?;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        n.booted(lab, "2.3.0")
            .map_err(|e| format!("node {}: {e}", i + 1))?;
    }
    all_on(c, "2.3.0", was.slot.other())
}
