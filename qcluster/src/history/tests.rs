use super::*;
use qapi::types::PlanMode;

fn plan(phase: PlanPhase) -> ClusterPlan {
    ClusterPlan {
        rolling: true,
        phase,
        from_version: Some("1.0.0".parse().unwrap()),
        started: Some(Started {
            at_ms: 1_000,
            by: "user \"admin\"".into(),
            from: "10.0.0.9".into(),
        }),
        ..ClusterPlan::new(
            7,
            "/upgrade/r.qimg",
            "2.0.0".parse().unwrap(),
            PlanMode::Platform,
        )
    }
}

fn report(id: u32, step: NodeStep, at_ms: u64) -> (u32, NodeReport) {
    (
        id,
        NodeReport {
            generation: 7,
            step,
            progress: 0,
            error: (step == NodeStep::Failed).then(|| "its boot fell back".into()),
            downtime_ms: None,
            at_ms,
        },
    )
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// What the coordinator loads at one reconciliation: the plan, the reports, now.
type Seen = (ClusterPlan, Vec<(u32, NodeReport)>, u64);

/// Feeds the record through `steps` and returns each step's events (empty when
/// `advance` said nothing changed).
fn run(steps: &[Seen]) -> (UpgradeRecord, Vec<Vec<Event>>) {
    let mut rec: Option<UpgradeRecord> = None;
    let mut all = vec![];
    for (p, reports, now) in steps {
        match advance(rec.as_ref(), p, reports, *now) {
            Some((r, events)) => {
                rec = Some(r);
                all.push(events);
            }
            None => all.push(vec![]),
        }
    }
    (rec.expect("a record"), all)
}

#[test]
fn a_rolling_upgrade_is_recorded_step_by_step_and_told_once() {
    let mut committing = plan(PlanPhase::Committing);
    committing.batches = vec![vec![2], vec![1]];
    let mut paused = committing.clone();
    paused.paused = true;
    let mut done = committing.clone();
    done.phase = PlanPhase::Committed;
    let (r, ev) = run(&[
        (plan(PlanPhase::Preparing), vec![], 1_100),
        (
            plan(PlanPhase::Preparing),
            vec![report(1, NodeStep::Preparing, 1_200)],
            1_300,
        ),
        // Seen again: nothing new.
        (
            plan(PlanPhase::Preparing),
            vec![report(1, NodeStep::Preparing, 1_200)],
            1_400,
        ),
        (
            plan(PlanPhase::Prepared),
            vec![
                report(1, NodeStep::Prepared, 5_000),
                report(2, NodeStep::Prepared, 5_500),
            ],
            5_600,
        ),
        (
            committing.clone(),
            vec![
                report(1, NodeStep::Prepared, 5_000),
                report(2, NodeStep::Committed, 9_000),
            ],
            9_100,
        ),
        (
            paused.clone(),
            vec![report(2, NodeStep::Committed, 9_000)],
            9_500,
        ),
        (paused, vec![report(2, NodeStep::Committed, 9_000)], 9_600),
        (
            committing,
            vec![report(2, NodeStep::Committed, 9_000)],
            12_000,
        ),
        (
            done.clone(),
            vec![
                report(1, NodeStep::Committed, 20_000),
                report(2, NodeStep::Committed, 9_000),
            ],
            20_100,
        ),
        // Ended: the record no longer changes.
        (done, vec![report(1, NodeStep::Committed, 20_000)], 30_000),
    ]);
    assert_eq!(
        ev.iter().map(|e| kinds(e)).collect::<Vec<_>>(),
        vec![
            vec![EventKind::Started],
            vec![EventKind::NodeStep],
            vec![],
            vec![EventKind::NodeStep, EventKind::NodeStep, EventKind::Phase],
            vec![EventKind::NodeStep, EventKind::Phase],
            vec![EventKind::Paused],
            vec![],
            vec![EventKind::Resumed],
            vec![EventKind::NodeStep, EventKind::Finished],
            vec![],
        ]
    );
    assert_eq!(r.result, Some(UpgradeResult::Upgraded));
    assert_eq!(r.started_ms(), 1_000, "the request's time");
    assert_eq!(r.ended_ms, Some(20_100));
    assert_eq!(r.batches, vec![vec![2], vec![1]]);
    assert_eq!(r.from_version.as_deref(), Some("1.0.0"));
    assert_eq!(r.started.as_ref().unwrap().by, "user \"admin\"");
    assert_eq!(
        r.phases
            .iter()
            .map(|p| (p.phase, p.at_ms))
            .collect::<Vec<_>>(),
        vec![
            (PlanPhase::Preparing, 1_000),
            (PlanPhase::Prepared, 5_600),
            (PlanPhase::Committing, 9_100),
            (PlanPhase::Committed, 20_100),
        ]
    );
    // Each step at the node's own time, not when the coordinator read it.
    let n2: Vec<_> = r.nodes[1].steps.iter().map(|s| (s.step, s.at_ms)).collect();
    assert_eq!(
        n2,
        vec![(NodeStep::Prepared, 5_500), (NodeStep::Committed, 9_000)]
    );
    assert_eq!(r.nodes[0].id, 1, "nodes in id order");
    assert_eq!(
        r.pauses,
        vec![Pause {
            at_ms: 9_500,
            error: None,
            resumed_ms: Some(12_000),
            canary: false,
        }]
    );
    let last = &ev[8][1];
    assert!(!last.warning);
    assert!(
        last.message.contains("the cluster runs 2.0.0 (19.1 s)"),
        "{}",
        last.message
    );
    let first = &ev[0][0];
    assert!(
        first
            .message
            .contains("started by user \"admin\" from 10.0.0.9"),
        "{}",
        first.message
    );
    assert!(first.message.contains("platform, rolling reboots"));
}

#[test]
fn a_failed_commit_that_rolled_back_says_so_and_warns() {
    let mut back = plan(PlanPhase::RollingBack);
    back.error = Some("node 3 failed its commit: its boot fell back".into());
    let mut failed = back.clone();
    failed.phase = PlanPhase::Failed;
    let mut stopped = back.clone();
    stopped.paused_error = Some("node 2 not back within 600 s".into());
    let (r, ev) = run(&[
        (plan(PlanPhase::Committing), vec![], 1_100),
        (
            back.clone(),
            vec![report(3, NodeStep::Failed, 2_000)],
            2_100,
        ),
        (stopped, vec![], 2_500),
        (back, vec![report(2, NodeStep::RolledBack, 3_000)], 3_100),
        (failed, vec![report(2, NodeStep::RolledBack, 3_000)], 3_200),
    ]);
    assert_eq!(
        kinds(&ev[1]),
        vec![EventKind::NodeStep, EventKind::Phase],
        "{:?}",
        ev[1]
    );
    assert!(
        ev[1].iter().all(|e| e.warning),
        "a failure and a rollback warn"
    );
    assert_eq!(ev[1][0].node, Some(3));
    assert!(
        ev[1][0]
            .message
            .contains("node 3 failed: its boot fell back")
    );
    assert_eq!(kinds(&ev[2]), vec![EventKind::Paused]);
    assert!(ev[2][0].warning);
    assert_eq!(kinds(&ev[3]), vec![EventKind::NodeStep, EventKind::Resumed]);
    assert_eq!(kinds(&ev[4]), vec![EventKind::Finished]);
    assert_eq!(r.result, Some(UpgradeResult::RolledBack));
    assert_eq!(ev[4][0].result, Some(UpgradeResult::RolledBack));
    assert!(ev[4][0].warning);
    assert_eq!(
        r.reason.as_deref(),
        Some("node 3 failed its commit: its boot fell back")
    );
    assert_eq!(
        r.pauses[0].error.as_deref(),
        Some("node 2 not back within 600 s")
    );
    assert_eq!(r.nodes[1].error.as_deref(), Some("its boot fell back"));
}

#[test]
fn a_prepare_that_failed_is_failed_and_other_generations_are_not_mixed_in() {
    let mut failed = plan(PlanPhase::Failed);
    failed.error = Some("node 2: no space".into());
    let mut old = report(2, NodeStep::Committed, 500);
    old.1.generation = 6;
    let (r, ev) = run(&[(failed, vec![old], 900)]);
    assert_eq!(
        kinds(&ev[0]),
        vec![EventKind::Started, EventKind::Finished],
        "a plan first seen when it has ended is still recorded"
    );
    assert!(
        r.nodes.is_empty(),
        "a report of another plan is not this one's"
    );
    assert_eq!(r.result, Some(UpgradeResult::Failed));
    assert_eq!(r.phases.len(), 2);
    // A record of another generation is not continued.
    let next = ClusterPlan {
        generation: 8,
        ..plan(PlanPhase::Preparing)
    };
    let (r8, events) = advance(Some(&r), &next, &[], 2_000).unwrap();
    assert_eq!(r8.generation, 8);
    assert_eq!(kinds(&events), vec![EventKind::Started]);
}

#[test]
fn a_finalize_and_a_rollback_on_demand_go_on_in_the_ended_record() {
    let every = |step| {
        vec![
            report(1, step, 2_000),
            report(2, step, 2_100),
            report(3, step, 2_200),
        ]
    };
    let done = plan(PlanPhase::Committed);
    let asked = Started {
        at_ms: 9_000,
        by: "user \"admin\"".into(),
        from: "10.0.0.9".into(),
    };
    let mut finalized = done.clone();
    finalized.finalized = Some(asked.clone());
    // Finalized: once, and only a finalize event.
    let (r, ev) = run(&[
        (
            plan(PlanPhase::Committing),
            every(NodeStep::Committed),
            3_000,
        ),
        (done.clone(), every(NodeStep::Committed), 4_000),
        (done.clone(), every(NodeStep::Committed), 5_000),
        (finalized.clone(), every(NodeStep::Committed), 9_100),
        (finalized.clone(), every(NodeStep::Committed), 9_200),
    ]);
    assert_eq!(r.result, Some(UpgradeResult::Upgraded));
    assert_eq!(
        r.ended_ms,
        Some(4_000),
        "the finalize does not move its end"
    );
    assert_eq!(r.finalized.as_ref(), Some(&asked));
    assert!(ev[2].is_empty() && ev[4].is_empty(), "{ev:?}");
    assert_eq!(kinds(&ev[3]), vec![EventKind::Finalized]);
    assert!(ev[3][0].message.contains("finalized by user \"admin\""));
    assert!(!ev[3][0].warning);
    // Rolled back on request: under way again, then rolled back with who asked.
    let mut back = done.clone();
    back.phase = PlanPhase::RollingBack;
    back.rollback = Some(asked.clone());
    let mut rolled = back.clone();
    rolled.phase = PlanPhase::RolledBack;
    let (r, ev) = run(&[
        (
            plan(PlanPhase::Committing),
            every(NodeStep::Committed),
            3_000,
        ),
        (done.clone(), every(NodeStep::Committed), 4_000),
        (back.clone(), every(NodeStep::Committed), 9_100),
        (back.clone(), every(NodeStep::RollingBack), 9_500),
        (rolled.clone(), every(NodeStep::RolledBack), 12_000),
        (rolled.clone(), every(NodeStep::RolledBack), 13_000),
    ]);
    assert_eq!(kinds(&ev[2]), vec![EventKind::Phase]);
    assert!(
        ev[2][0]
            .message
            .contains("the operator rolls the upgrade back")
            && !ev[2][0].warning,
        "{:?}",
        ev[2][0]
    );
    assert_eq!(
        kinds(&ev[4]),
        vec![
            EventKind::NodeStep,
            EventKind::NodeStep,
            EventKind::NodeStep,
            EventKind::Finished
        ]
    );
    let fin = &ev[4][3];
    assert_eq!(fin.result, Some(UpgradeResult::RolledBack));
    assert!(!fin.warning, "asked for: not a warning");
    assert!(ev[5].is_empty());
    assert_eq!(r.result, Some(UpgradeResult::RolledBack));
    assert_eq!(r.ended_ms, Some(12_000));
    assert_eq!(r.rollback.as_ref(), Some(&asked));
    assert_eq!(
        r.reason.as_deref(),
        Some("rolled back on request by user \"admin\" from 10.0.0.9")
    );
    let phases: Vec<PlanPhase> = r.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        vec![
            PlanPhase::Preparing,
            PlanPhase::Committing,
            PlanPhase::Committed,
            PlanPhase::RollingBack,
            PlanPhase::RolledBack
        ]
    );
    assert_eq!(
        r.nodes[0].outcome(),
        Some(NodeStep::RolledBack),
        "each node's way back is in its steps"
    );
    // One that could not go back: failed, a warning.
    let mut failed = back.clone();
    failed.phase = PlanPhase::Failed;
    failed.error = Some("the rollback failed on node n3: boom".into());
    let (r, ev) = run(&[
        (done.clone(), every(NodeStep::Committed), 4_000),
        (back.clone(), every(NodeStep::Committed), 9_100),
        (failed, every(NodeStep::Committed), 12_000),
    ]);
    assert_eq!(r.result, Some(UpgradeResult::Failed));
    assert!(ev[2].last().unwrap().warning);
}
