//! The cluster's REST bodies from a snapshot, case by case.

use super::*;

fn spec(n: u32) -> ClusterSpec {
    crate::coordinator::tests::spec_of(n, 1)
}

fn plan(phase: PlanPhase, mode: PlanMode) -> ClusterPlan {
    ClusterPlan {
        phase,
        from_version: Some("7.0.0".parse().unwrap()),
        ..ClusterPlan::new(4, "/up.qimg", "7.1.0".parse().unwrap(), mode)
    }
}

fn rep(generation: u64, step: NodeStep, progress: u8) -> NodeReport {
    NodeReport {
        generation,
        step,
        progress,
        error: (step == NodeStep::Failed).then(|| "boom".into()),
        downtime_ms: None,
        at_ms: 0,
    }
}

fn snap(p: ClusterPlan, reports: Vec<(u32, NodeReport)>) -> Snapshot {
    Snapshot::new(p, reports)
}

#[test]
fn only_this_generations_reports_count() {
    let s = snap(
        plan(PlanPhase::Preparing, PlanMode::Instant),
        vec![
            (1, rep(4, NodeStep::Preparing, 50)),
            (2, rep(3, NodeStep::Committed, 100)),
            (3, rep(4, NodeStep::Prepared, 100)),
        ],
    );
    assert_eq!(s.reports.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    // (50 + 0 + 100) / 3: node 2's report is of an older plan.
    assert_eq!(s.mean_progress(&spec(3)), 50);
    // A preparing node counts at most 99 however far its job is.
    let s = snap(
        plan(PlanPhase::Preparing, PlanMode::Instant),
        vec![(1, rep(4, NodeStep::Preparing, 100))],
    );
    assert_eq!(s.mean_progress(&spec(1)), 99);
}

#[test]
fn the_state_of_every_phase() {
    use PlanMode::{Instant, Platform};
    use PlanPhase as P;
    use UpgradeState as U;
    for (phase, mode, want) in [
        (P::Preparing, Instant, U::Preparing),
        (P::Prepared, Platform, U::Prepared),
        (P::Committing, Instant, U::Committing),
        (P::Committing, Platform, U::Rebooting),
        (P::RollingBack, Platform, U::Committing),
        (P::Committed, Platform, U::Idle),
        (P::Discarding, Instant, U::Idle),
        (P::Failed, Instant, U::Idle),
        (P::RolledBack, Platform, U::Idle),
    ] {
        assert_eq!(
            upgrade_state(&plan(phase, mode)),
            want,
            "{phase:?} {mode:?}"
        );
    }
}

#[test]
fn the_status_body() {
    // No plan yet: idle, nothing else.
    let s = status_body(None, &spec(3), |_, _| unreachable!());
    assert_eq!(
        (s.state, s.progress, s.settings),
        (UpgradeState::Idle, None, None)
    );
    // Preparing: the mean, through this node's never-decreasing progress.
    let sn = snap(
        plan(PlanPhase::Preparing, PlanMode::Platform),
        vec![(1, rep(4, NodeStep::Preparing, 30))],
    );
    let s = status_body(Some(&sn), &spec(3), |g, p| {
        assert_eq!((g, p), (4, 10));
        12
    });
    assert_eq!((s.state, s.progress), (UpgradeState::Preparing, Some(12)));
    let set = s.settings.unwrap();
    assert_eq!(set.install_path, "/up.qimg");
    assert_eq!(set.target_version, "7.1.0");
    assert_eq!(set.upgrade_type, Some(UpgradeType::from_platform(true)));
    // Committing: 100; finished: idle at 100; a failure: idle with no
    // progress, its words kept.
    let sn = snap(plan(PlanPhase::Committing, PlanMode::Instant), vec![]);
    let s = status_body(Some(&sn), &spec(3), |_, _| unreachable!());
    assert_eq!((s.state, s.progress), (UpgradeState::Committing, Some(100)));
    let sn = snap(plan(PlanPhase::Committed, PlanMode::Instant), vec![]);
    let s = status_body(Some(&sn), &spec(3), |_, _| unreachable!());
    assert_eq!((s.state, s.progress), (UpgradeState::Idle, Some(100)));
    assert!(
        s.settings.is_some(),
        "a finished upgrade keeps its settings"
    );
    let mut failed = plan(PlanPhase::Failed, PlanMode::Instant);
    failed.error = Some("node 2: boom".into());
    let s = status_body(Some(&snap(failed, vec![])), &spec(3), |_, _| unreachable!());
    assert_eq!(
        (s.state, s.progress, s.error_info.as_deref()),
        (UpgradeState::Idle, None, Some("node 2: boom"))
    );
    // A paused rolling reboot says why as its error.
    let mut paused = plan(PlanPhase::Committing, PlanMode::Platform);
    paused.paused_error = Some("node 3 not back".into());
    let s = status_body(Some(&snap(paused, vec![])), &spec(3), |_, _| 0);
    assert_eq!(s.error_info.as_deref(), Some("node 3 not back"));
}

#[test]
fn the_blocked_body() {
    assert!(!blocked_body(None).is_blocked);
    let active = snap(plan(PlanPhase::Prepared, PlanMode::Instant), vec![]);
    let b = blocked_body(Some(&active));
    assert!(b.is_blocked);
    assert!(
        b.blocked_reason.contains("in progress"),
        "{}",
        b.blocked_reason
    );
    let mut paused = plan(PlanPhase::RollingBack, PlanMode::Platform);
    paused.paused_error = Some("node 3 not back".into());
    let b = blocked_body(Some(&snap(paused, vec![])));
    assert!(
        b.blocked_reason
            .contains("paused on an error: node 3 not back")
    );
    assert!(b.blocked_reason.contains("resume"), "{}", b.blocked_reason);
    // Committed and not finalized: the next upgrade waits for finalize.
    let b = blocked_body(Some(&snap(
        plan(PlanPhase::Committed, PlanMode::Instant),
        vec![],
    )));
    assert!(b.is_blocked);
    assert!(
        b.blocked_reason.contains("not finalized") && b.blocked_reason.contains("rollback"),
        "{}",
        b.blocked_reason
    );
    let mut finalized = plan(PlanPhase::Committed, PlanMode::Instant);
    finalized.finalized = Some(qapi::history::Started::default());
    assert!(!blocked_body(Some(&snap(finalized, vec![]))).is_blocked);
    for ended in [PlanPhase::Failed, PlanPhase::RolledBack] {
        let b = blocked_body(Some(&snap(plan(ended, PlanMode::Instant), vec![])));
        assert!(!b.is_blocked, "{ended:?}");
    }
}

#[test]
fn the_nodes_body() {
    let reg = |id: u32| NodeInfo {
        id,
        name: format!("n{id}"),
        uuid: String::new(),
        address: String::new(),
        model: "m".into(),
        installed: Some("7.0.0".parse().unwrap()),
        slot: None,
        health: "online".into(),
    };
    let mut p = plan(PlanPhase::Committing, PlanMode::Platform);
    p.rolling = true;
    p.batches = vec![vec![2], vec![1, 3]];
    p.batch = 1;
    p.gate_why = Some("the restriper probe: connection refused".into());
    let s = snap(
        p,
        vec![
            (1, rep(4, NodeStep::Committing, 100)),
            (2, rep(4, NodeStep::Committed, 100)),
            (3, rep(3, NodeStep::Failed, 0)),
        ],
    );
    let b = nodes_body(&s, &spec(3), &[reg(1), reg(2)], true);
    assert_eq!((b.generation, b.batch, b.restriping), (4, 1, true));
    assert_eq!(
        b.data_safety_wait.as_deref(),
        Some("the restriper probe: connection refused")
    );
    let idle = nodes_body(&s, &spec(3), &[reg(1), reg(2)], false);
    assert_eq!(
        idle.data_safety_wait, None,
        "said only while the gate holds"
    );
    assert_eq!(b.batches, vec![vec![2], vec![1, 3]]);
    assert_eq!(b.from_version.as_deref(), Some("7.0.0"));
    let n: Vec<_> = b
        .nodes
        .iter()
        .map(|n| (n.id, n.online, n.step, n.error.is_some()))
        .collect();
    assert_eq!(
        n,
        vec![
            (1, true, Some(NodeStep::Committing), false),
            (2, true, Some(NodeStep::Committed), false),
            // Offline, and its failure is of an older plan: no step here.
            (3, false, None, false),
        ]
    );
}

#[test]
fn the_reboot_body() {
    let idle = reboot_body(None, 3);
    assert_eq!((idle.state, idle.total_node_count), (RebootState::Idle, 3));
    // An instant commit reboots nothing.
    let s = snap(plan(PlanPhase::Committing, PlanMode::Instant), vec![]);
    assert_eq!(reboot_body(Some(&s), 3).state, RebootState::Idle);
    let mut p = plan(PlanPhase::Committing, PlanMode::Platform);
    p.rolling = true;
    let reports = vec![
        (1, rep(4, NodeStep::Committed, 100)),
        (2, rep(4, NodeStep::Committing, 100)),
        (3, rep(3, NodeStep::Committed, 100)),
    ];
    let b = reboot_body(Some(&snap(p.clone(), reports.clone())), 3);
    assert_eq!(
        (b.state, b.rolling, b.rebooted_node_count),
        (RebootState::InProgress, true, 1)
    );
    p.paused = true;
    assert_eq!(
        reboot_body(Some(&snap(p.clone(), reports.clone())), 3).state,
        RebootState::Paused
    );
    p.paused_error = Some("node 2 not back".into());
    let b = reboot_body(Some(&snap(p.clone(), reports)), 3);
    assert_eq!(
        (b.state, b.error_message.as_str()),
        (RebootState::PausedDueToError, "node 2 not back")
    );
    // A rollback counts the nodes back on the old release.
    p.phase = PlanPhase::RollingBack;
    p.paused_error = None;
    p.paused = false;
    let b = reboot_body(
        Some(&snap(
            p,
            vec![
                (1, rep(4, NodeStep::RolledBack, 100)),
                (2, rep(4, NodeStep::Committed, 100)),
            ],
        )),
        3,
    );
    assert_eq!(b.rebooted_node_count, 1);
}
