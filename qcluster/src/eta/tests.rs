use super::*;
use crate::history::{PhaseAt, UpgradeResult};
use qapi::types::OnFailure;

/// A finished upgrade of `size` bytes whose prepare took `prepare_ms` and whose
/// commit took `commit_ms` over `batches` batches.
fn done(
    generation: u64,
    mode: PlanMode,
    size: u64,
    prepare_ms: u64,
    commit_ms: u64,
    batches: usize,
    result: UpgradeResult,
) -> UpgradeRecord {
    let t0 = 1_000_000 * generation;
    UpgradeRecord {
        generation,
        started: None,
        image_path: "/x.qimg".into(),
        from_version: Some("1.0.0".into()),
        to_version: "2.0.0".into(),
        mode,
        rolling: batches > 1,
        batches: (1..=batches as u32).map(|i| vec![i]).collect(),
        on_failure: OnFailure::Rollback,
        overrides: vec![],
        phases: vec![
            PhaseAt {
                phase: PlanPhase::Preparing,
                at_ms: t0,
            },
            PhaseAt {
                phase: PlanPhase::Prepared,
                at_ms: t0 + prepare_ms,
            },
            PhaseAt {
                phase: PlanPhase::Committing,
                at_ms: t0 + prepare_ms + 50,
            },
            PhaseAt {
                phase: PlanPhase::Committed,
                at_ms: t0 + prepare_ms + 50 + commit_ms,
            },
        ],
        nodes: vec![],
        pauses: vec![],
        result: Some(result),
        reason: None,
        ended_ms: Some(t0 + prepare_ms + 50 + commit_ms),
        downtime_ms: None,
        bundle_size: Some(size),
        finalized: None,
        rollback: None,
    }
}

#[test]
fn expected_times_come_from_the_clusters_own_upgrades_or_a_stated_default() {
    let shape = Shape {
        mode: PlanMode::Platform,
        batches: 4,
        bundle_size: Some(200_000_000),
    };
    // Nothing recorded: the defaults, said to be defaults.
    let d = expected(&shape, &[]);
    assert_eq!(d[0].expected_ms, 4_000, "200 MB at 50 MB/s");
    assert!(d[0].basis.contains("a default"), "{}", d[0].basis);
    assert_eq!(d[1].expected_ms, 4 * DEFAULT_BATCH_MS);
    assert!(
        d[1].basis
            .starts_with("4 batches; 10 min 0 s per batch, a default"),
        "{}",
        d[1].basis
    );
    // Newest first: 100 MB in 10 s (10 MB/s) and a 3-batch commit of 90 s; an
    // instant upgrade (not this mode's commit) and a rollback (not measured).
    let history = vec![
        done(
            4,
            PlanMode::Instant,
            1_000,
            1,
            7_000,
            1,
            UpgradeResult::Upgraded,
        ),
        done(
            3,
            PlanMode::Platform,
            100_000_000,
            10_000,
            90_000,
            3,
            UpgradeResult::Upgraded,
        ),
        done(
            2,
            PlanMode::Platform,
            100_000_000,
            1,
            1,
            3,
            UpgradeResult::RolledBack,
        ),
    ];
    let m = expected(&shape, &history);
    // The instant upgrade's prepare counts (a prepare is a prepare): 1 000
    // bytes in 1 ms is 1 MB/s, and 100 MB in 10 s is 10 MB/s: the median of
    // two is the lower one.
    assert_eq!(m[0].expected_ms, 200_000, "{m:?}");
    assert!(
        m[0].basis.contains("measured over the last 2 prepares"),
        "{}",
        m[0].basis
    );
    assert_eq!(m[1].expected_ms, 4 * 30_000, "30 s per batch, four batches");
    assert!(
        m[1].basis
            .contains("30.0 s per batch, measured over the last 1 platform commit"),
        "{}",
        m[1].basis
    );
    // An instant upgrade measures instant commits only.
    let i = expected(
        &Shape {
            mode: PlanMode::Instant,
            batches: 1,
            bundle_size: None,
        },
        &history,
    );
    assert_eq!(i[1].expected_ms, 7_000);
    assert_eq!(i[0].expected_ms, DEFAULT_PREPARE_MS, "no size: a default");
}

#[test]
fn a_running_upgrade_counts_down_by_phase_and_by_batch() {
    let history = vec![done(
        1,
        PlanMode::Platform,
        100_000_000,
        10_000,
        90_000,
        3,
        UpgradeResult::Upgraded,
    )];
    let mut plan = ClusterPlan {
        rolling: true,
        bundle: Some(qimg::BundlePin::of(b"m", 100_000_000)),
        ..ClusterPlan::new(2, "/x.qimg", "3.0.0".parse().unwrap(), PlanMode::Platform)
    };
    let mut rec = history[0].clone();
    rec.generation = 2;
    rec.result = None;
    rec.phases.truncate(1);
    rec.phases[0].at_ms = 5_000_000;
    // Preparing for 4 s of the 10 expected, then three batches of 30 s.
    let e = eta(&plan, Some(&rec), &history, 3, 5_004_000).unwrap();
    assert_eq!(e.phases.len(), 2);
    assert_eq!(e.phases[0].elapsed_ms, Some(4_000));
    assert_eq!(e.remaining_ms, 6_000 + 90_000);
    // Late: the prepare's part is 0, never negative.
    let late = eta(&plan, Some(&rec), &history, 3, 5_030_000).unwrap();
    assert_eq!(late.remaining_ms, 90_000);
    // Committing, in the second of three batches, 10 s into it: two batches
    // left less 10 s.
    plan.phase = PlanPhase::Committing;
    plan.batches = vec![vec![2], vec![3], vec![1]];
    plan.batch = 1;
    plan.batch_started_ms = 5_100_000;
    rec.phases.push(PhaseAt {
        phase: PlanPhase::Committing,
        at_ms: 5_070_000,
    });
    let c = eta(&plan, Some(&rec), &history, 0, 5_110_000).unwrap();
    assert_eq!(c.phases.len(), 1, "the prepare is behind");
    assert_eq!(c.phases[0].elapsed_ms, Some(40_000));
    assert_eq!(c.remaining_ms, 2 * 30_000 - 10_000);
    // Its own record is not its history, and an ended plan has no ETA.
    plan.phase = PlanPhase::Committed;
    assert!(eta(&plan, Some(&rec), &history, 3, 5_200_000).is_none());
    plan.phase = PlanPhase::RollingBack;
    assert!(eta(&plan, Some(&rec), &history, 3, 5_200_000).is_none());
}

#[test]
fn an_upgrade_rolled_back_on_request_had_committed_and_counts() {
    let shape = Shape {
        mode: PlanMode::Instant,
        batches: 1,
        bundle_size: Some(100_000_000),
    };
    let mut asked = done(
        2,
        PlanMode::Instant,
        100_000_000,
        4_000,
        6_000,
        1,
        UpgradeResult::RolledBack,
    );
    // Rolled back after a node failed: its commit did not end well.
    let failed_commit = expected(&shape, std::slice::from_ref(&asked));
    assert!(
        failed_commit[0].basis.contains("no prepare recorded"),
        "{failed_commit:?}"
    );
    asked.rollback = Some(crate::history::Started::default());
    let e = expected(&shape, &[asked]);
    assert_eq!(e[0].expected_ms, 4_000, "{e:?}");
    assert_eq!(e[1].expected_ms, 6_000, "{e:?}");
}
