//! The cluster's scenarios without reboots: formed, an instant upgrade, a
//! bundle altered on the node that serves it.

use super::*;

/// 1: the cluster as each node sees it, and one login for all.
pub(super) fn formed(_lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    all_on(c, "1.0.0", Slot::A)?;
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

/// 2: an instant upgrade of all three: 1.0.1 (the same platform, a new
/// container) uploaded to node 1 and asked of node 3. Nodes 2 and 3 fetch it
/// from node 1, every node swaps its container and reboots nothing; the downtime
/// is measured in the guests. Then rolled back on request through node 2:
/// every node runs 1.0.0 again, nothing rebooted.
pub(super) fn instant(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    let name = upload(lab, c, "1.0.1")?;
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
            version.contains("qimg-node 1.0.1"),
            &format!("node {}: qq version: {version}", i + 1),
        )?;
        if i > 0 {
            expect(
                n.ssh(JOURNAL)?.contains(&format!("fetched {name}")),
                &format!("node {}'s agent fetched {name} from a peer", i + 1),
            )?;
        }
    }
    all_on(c, "1.0.1", Slot::A)?;
    // Not finalized: rolled back on request through node 2, every node's
    // previous container running again, nothing rebooted.
    let t = Instant::now();
    let (code, out) = Monitor::start(&c.nodes[1], &["upgrade_cluster", "rollback"], "rollback")?
        .wait(INSTANT_LIMIT)?;
    expect(
        code == 0,
        &format!("qq upgrade_cluster rollback ended {code}: {out}"),
    )?;
    eprintln!(
        "xtask: cluster: rollback of the instant upgrade on request: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for (i, n) in c.nodes.iter().enumerate() {
        expect(
            restarts_and_boots(&n.serial).0 == reboots[i],
            &format!("node {}: an instant rollback does not reboot", i + 1),
        )?;
    }
    let view: qapi::types::ClusterUpgrade = c.nodes[0]
        .client()?
        .get("/v1/qimg/cluster/upgrade")
        .map_err(|e| format!("the cluster's upgrade: {e}"))?;
    expect(
        view.phase == qapi::types::PlanPhase::RolledBack
            && view.finality.as_ref().is_some_and(|f| f.rollback.is_some()),
        &format!("the plan ended rolled back on request: {view:?}"),
    )?;
    all_on(c, "1.0.0", Slot::A)
}

/// The first component of `bundle` in archive order: its name and the offset of
/// the middle of its stored data.
fn first_component(bundle: &Path) -> Result<(String, u64), String> {
    let f = std::fs::File::open(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    let mut r = qimg::BundleReader::open(std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
    let c = r
        .next_component(std::io::sink(), &qimg::NoProgress)
        .map_err(|e| e.to_string())?
        .ok_or("a bundle without components")?;
    Ok((c.component.name, c.offset + c.component.stored_size / 2))
}

/// How long the nodes may take to discard a failed prepare.
const DISCARD_LIMIT: Duration = Duration::from_secs(60);

/// The cluster's upgrade once its plan ended (no longer active), asked
/// every second for at most `limit`; the last view when it did not end.
fn plan_ended(c: &Cluster, limit: Duration) -> Result<qapi::types::ClusterUpgrade, String> {
    let deadline = Instant::now() + limit;
    loop {
        let view: qapi::types::ClusterUpgrade = c.nodes[1]
            .client()?
            .get("/v1/qimg/cluster/upgrade")
            .map_err(|e| format!("the cluster's upgrade: {e}"))?;
        if !view.phase.is_active() || Instant::now() >= deadline {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// 3: a bundle altered on the node it was given to (one byte of its first
/// payload changed after the upload, the signed head intact): the nodes that
/// fetch it from there refuse what came, naming the component; nothing is kept
/// or installed. The good bundle uploaded again (`--replace`), the same upgrade
/// goes through.
pub(super) fn altered(lab: &Lab, c: &mut Cluster) -> Result<(), String> {
    let was = before(c)?;
    let name = upload(lab, c, "1.0.2")?;
    let path = format!("{UPGRADE_DIR}/{name}");
    let (component, at) = first_component(lab.bundle("1.0.2"))?;
    c.nodes[0].ssh(&format!(
        "printf '\\377' | dd of={path} bs=1 seek={at} conv=notrunc status=none && sync"
    ))?;
    expect(
        sha256_on(&c.nodes[0], &path)? != sha256_here(lab.bundle("1.0.2"))?,
        "node 1's copy altered",
    )?;
    let (code, out) = Monitor::start(
        &c.nodes[1],
        &["upgrade_cluster", "--path", &name],
        "altered",
    )?
    .wait(INSTANT_LIMIT)?;
    expect(
        code != 0,
        &format!("the upgrade of an altered bundle failed: {out}"),
    )?;
    // `qq` ends on the first node's failure; the plan ends once every node
    // discarded (node 1 may still be stopping its prepare).
    let view = plan_ended(c, DISCARD_LIMIT)?;
    expect(
        view.phase == qapi::types::PlanPhase::Failed,
        &format!("the plan failed: {view:?}"),
    )?;
    for i in 1..3 {
        let why = view.nodes[i].error.as_deref().unwrap_or_default();
        expect(
            why.contains("what a peer sent was refused") && why.contains(&component),
            &format!(
                "node {} refused what node 1 sent, naming {component}: {view:?}",
                i + 1
            ),
        )?;
        expect(
            c.nodes[i].ssh(&format!("test ! -e {path}")).is_ok(),
            &format!("node {} kept nothing of it", i + 1),
        )?;
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let version = n.qq_ok(&["version"])?;
        expect(
            version.contains(&format!("qimg-node {}", was.version)),
            &format!("node {}: still on {}: {version}", i + 1, was.version),
        )?;
    }
    // The operator uploads the good bundle again; the same upgrade goes through.
    succeeds(
        "qq upgrade_upload --replace to node 1",
        &mut c.nodes[0].qq_waiting(
            120,
            &[
                "upgrade_upload",
                "--file",
                &lab.bundle("1.0.2").display().to_string(),
                "--replace",
            ],
        ),
    )?;
    let (code, out) = Monitor::start(
        &c.nodes[1],
        &["upgrade_cluster", "--path", &name],
        "altered-retry",
    )?
    .wait(INSTANT_LIMIT)?;
    instant_downtime(code, &out)?;
    for (i, n) in c.nodes.iter().enumerate() {
        let version = n.qq_ok(&["version"])?;
        expect(
            version.contains("qimg-node 1.0.2"),
            &format!("node {}: qq version after the retry: {version}", i + 1),
        )?;
    }
    c.nodes[2].finalize()
}
