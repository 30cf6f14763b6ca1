//! Tests of the member's decisions (pure: plan + own report + busy + engine →
//! the action), one row per case.

use super::decide::*;
use qcluster::{ClusterPlan, NodeReport, NodeStep, PlanMode, PlanPhase};
use upgrade::CommitOutcome;
use upgrade::state::{BootId, CommitStep, Failure, Mode, NodeState, Plan, Release, Stage};
use upgrade::wire::ErrorState;

use Action::*;
use NodeStep as S;
use PlanPhase as P;

const ME: u32 = 2;

fn plan(phase: PlanPhase) -> ClusterPlan {
    ClusterPlan {
        phase,
        ..ClusterPlan::new(5, "/x", "7.1.0".parse().unwrap(), PlanMode::Instant)
    }
}

/// A rolling platform plan whose current batch is node 1's (not this node's).
fn rolling_other_batch(phase: PlanPhase) -> ClusterPlan {
    ClusterPlan {
        rolling: true,
        batches: vec![vec![1], vec![ME]],
        batch: 0,
        ..ClusterPlan {
            phase,
            ..ClusterPlan::new(5, "/x", "7.1.0".parse().unwrap(), PlanMode::Platform)
        }
    }
}

fn rep(step: NodeStep, progress: u8) -> NodeReport {
    NodeReport {
        generation: 5,
        step,
        progress,
        error: None,
        downtime_ms: None,
        at_ms: 0,
    }
}

fn rolled_back(reason: &str) -> Engine {
    Engine::Idle {
        last: Some(CommitOutcome::RolledBack {
            reason: reason.into(),
        }),
    }
}

#[test]
fn every_case_of_the_member() {
    let idle = Engine::Idle { last: None };
    let failed = Engine::Idle {
        last: Some(CommitOutcome::Failed {
            reason: "health check failed".into(),
        }),
    };
    // (plan, own step + progress, busy, job progress, engine) → action
    #[allow(clippy::type_complexity)]
    #[rustfmt::skip]
    let rows: Vec<(
        &str,
        ClusterPlan,
        Option<(NodeStep, u8)>,
        bool,
        u8,
        Option<Engine>,
        Action,
    )> = vec![
        // Preparing.
        ("a new plan is prepared", plan(P::Preparing), None, false, 0, None, Prepare { again: false }),
        ("a job of this node runs: wait for it", plan(P::Preparing), None, true, 0, None, Wait),
        ("the running prepare's progress is reported", plan(P::Preparing), Some((S::Preparing, 10)), true, 40, None, Progress(40)),
        ("an unchanged progress is not written", plan(P::Preparing), Some((S::Preparing, 40)), true, 40, None, Wait),
        ("preparing and nothing runs: the agent restarted", plan(P::Preparing), Some((S::Preparing, 40)), false, 0, None, Prepare { again: true }),
        ("prepared: wait for the commit", plan(P::Preparing), Some((S::Prepared, 100)), false, 100, None, Wait),
        ("a failed node waits", plan(P::Preparing), Some((S::Failed, 0)), false, 0, None, Wait),
        // Committing.
        ("prepared, the plan commits", plan(P::Committing), Some((S::Prepared, 100)), false, 0, None, Commit { again: false }),
        ("prepared, but a job runs", plan(P::Committing), Some((S::Prepared, 100)), true, 0, None, Wait),
        ("prepared, not this node's batch", rolling_other_batch(P::Committing), Some((S::Prepared, 100)), false, 0, None, Wait),
        ("committing, the job runs", plan(P::Committing), Some((S::Committing, 100)), true, 0, None, Wait),
        ("committing, the boot committed", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(Engine::Committed), Booted(S::Committed)),
        ("committing, the boot fell back", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(rolled_back("slot b did not boot")), Fail("slot b did not boot".into())),
        ("committing, the commit failed", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(failed.clone()), Fail("health check failed".into())),
        ("committing, idle without an outcome", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(idle.clone()), Fail("the commit ended without committing".into())),
        ("committing, cut off before the swap", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(Engine::CommitCutOff), Commit { again: true }),
        ("committing, cut off before it began", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(Engine::Prepared), Commit { again: true }),
        ("committing, the reboot is to come", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(Engine::AwaitingBoot), Wait),
        ("committing, the engine unreadable", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(Engine::Unreadable), Wait),
        ("committing, the engine preparing", plan(P::Committing), Some((S::Committing, 100)), false, 0, Some(Engine::Preparing), Wait),
        ("committed: done", plan(P::Committing), Some((S::Committed, 100)), false, 0, None, Wait),
        // Rolling back.
        ("committed, the plan rolls back", plan(P::RollingBack), Some((S::Committed, 100)), false, 0, None, Revert { again: false }),
        ("committed, rolling back another batch", rolling_other_batch(P::RollingBack), Some((S::Committed, 100)), false, 0, None, Wait),
        ("committed, a job runs", plan(P::RollingBack), Some((S::Committed, 100)), true, 0, None, Wait),
        ("rolling back, the boot went back", plan(P::RollingBack), Some((S::RollingBack, 100)), false, 0, Some(rolled_back("with the cluster")), Booted(S::RolledBack)),
        ("rolling back, still on the new release", plan(P::RollingBack), Some((S::RollingBack, 100)), false, 0, Some(Engine::Committed), Revert { again: true }),
        ("rolling back, the reboot is to come", plan(P::RollingBack), Some((S::RollingBack, 100)), false, 0, Some(Engine::AwaitingBoot), Wait),
        ("rolling back, the job runs", plan(P::RollingBack), Some((S::RollingBack, 100)), true, 0, None, Wait),
        ("committing when the plan rolls back: cut off, committed first", plan(P::RollingBack), Some((S::Committing, 100)), false, 0, Some(Engine::CommitCutOff), Commit { again: true }),
        ("committing when the plan rolls back: never began, discarded", plan(P::RollingBack), Some((S::Committing, 100)), false, 0, Some(Engine::Prepared), Discard),
        ("committing when the plan rolls back: the boot committed", plan(P::RollingBack), Some((S::Committing, 100)), false, 0, Some(Engine::Committed), Booted(S::Committed)),
        ("prepared when the plan rolls back", plan(P::RollingBack), Some((S::Prepared, 100)), false, 0, None, Discard),
        ("nothing reported when the plan rolls back", plan(P::RollingBack), None, false, 0, None, Discard),
        ("rolled back: done", plan(P::RollingBack), Some((S::RolledBack, 100)), false, 0, None, Wait),
        // Discarding.
        ("prepared, the plan discards", plan(P::Discarding), Some((S::Prepared, 100)), false, 0, None, Discard),
        ("preparing (interrupted), the plan discards", plan(P::Discarding), Some((S::Preparing, 10)), false, 0, None, Discard),
        ("nothing reported, the plan discards", plan(P::Discarding), None, false, 0, None, Discard),
        ("a prepare runs, the plan discards: it is cancelled first", plan(P::Discarding), Some((S::Preparing, 10)), true, 0, None, Wait),
        ("discarded: done", plan(P::Discarding), Some((S::Discarded, 0)), false, 0, None, Wait),
        // Ended plans: nothing to do.
        ("a committed plan", plan(P::Committed), Some((S::Committed, 100)), false, 0, None, Wait),
        ("a prepared plan waits for the operator", plan(P::Prepared), Some((S::Prepared, 100)), false, 0, None, Wait),
        ("a failed plan", plan(P::Failed), Some((S::Failed, 0)), false, 0, None, Wait),
        ("a failed plan, nothing reported", plan(P::Failed), None, false, 0, None, Wait),
    ];
    for (name, plan, own, busy, progress, engine, want) in rows {
        let own = own.map(|(s, p)| rep(s, p));
        assert_eq!(
            needs_engine(&plan, own.as_ref(), busy),
            engine.is_some(),
            "{name}: whether the engine is read"
        );
        let got = member_action(&plan, ME, own.as_ref(), busy, progress, engine.as_ref());
        assert_eq!(got, want, "{name}");
    }
}

fn release(v: &str, slot: bootctl::layout::Slot) -> Release {
    Release {
        version: v.parse().unwrap(),
        platform_version: "7.0".parse().unwrap(),
        slot,
    }
}

fn platform() -> Plan {
    Plan {
        mode: Mode::Platform,
        from: release("7.0", bootctl::layout::Slot::A),
        to: release("7.1", bootctl::layout::Slot::B),
    }
}

#[test]
fn the_engine_view_of_each_state() {
    let p = platform();
    let boot = BootId("b1".into());
    let st = |stage: Stage, failure: Option<Failure>| NodeState {
        stage,
        failure,
        ..NodeState::default()
    };
    let fail = |kind, m: &str| {
        Some(Failure {
            kind,
            message: m.into(),
        })
    };
    #[rustfmt::skip]
    let rows = [
        (st(Stage::Prepared(p.clone()), None), false, Engine::Prepared),
        (st(Stage::Committing(p.clone(), CommitStep::Swap), None), false, Engine::CommitCutOff),
        (st(Stage::Committing(p.clone(), CommitStep::SetNext), None), false, Engine::CommitCutOff),
        (st(Stage::Committing(p.clone(), CommitStep::Reboot { boot_id: boot.clone(), kept: None, },), None,), false, Engine::AwaitingBoot),
        (st(Stage::Committing(p.clone(), CommitStep::Fallback { boot_id: boot.clone(), reason: "r".into(), },), None,), false, Engine::AwaitingBoot),
        (st(Stage::Committed(p.clone()), None), false, Engine::Committed),
        (st(Stage::Idle { last: None }, None), false, Engine::Idle { last: None }),
        (st(Stage::Idle { last: Some(p.clone()), }, fail(ErrorState::RolledBack, "went back"),), false, Engine::Idle { last: Some(CommitOutcome::RolledBack { reason: "went back".into(), }), }),
        (st(Stage::Idle { last: Some(p.clone()), }, fail(ErrorState::CommitFailed, "no"),), false, Engine::Idle { last: Some(CommitOutcome::Failed { reason: "no".into(), }), }),
        (st(Stage::Idle { last: None }, fail(ErrorState::PrepareFailed, "bad bundle"),), false, Engine::Idle { last: None }),
        // A reboot asked for and not yet happened: whatever the record says.
        (st(Stage::Prepared(p.clone()), None), true, Engine::AwaitingBoot),
        (st(Stage::Committing(p.clone(), CommitStep::SetNext), None), true, Engine::AwaitingBoot),
        (st(Stage::Committed(p.clone()), None), true, Engine::AwaitingBoot),
    ];
    for (state, pending, want) in rows {
        assert_eq!(
            Engine::of(&state, pending),
            want,
            "{:?} pending {pending}",
            state.stage
        );
    }
}

#[test]
fn outcomes_report_the_engines_word() {
    let boot = BootId("b".into());
    let rebooting = CommitOutcome::Rebooting { boot_id: boot };
    let c = CommitOutcome::Committed {
        downtime_ms: Some(7),
    };
    let rb = CommitOutcome::RolledBack {
        reason: "fell back".into(),
    };
    let f = CommitOutcome::Failed {
        reason: "swap failed".into(),
    };
    assert_eq!(commit_report(&c), Some((S::Committed, None)));
    assert_eq!(commit_report(&rebooting), None, "the boot decides");
    assert_eq!(
        commit_report(&rb),
        Some((S::Failed, Some("fell back".into())))
    );
    assert_eq!(
        commit_report(&f),
        Some((S::Failed, Some("swap failed".into())))
    );
    assert_eq!(revert_report(&rb), Some((S::RolledBack, None)));
    assert_eq!(revert_report(&rebooting), None, "the boot decides");
    assert_eq!(
        revert_report(&f),
        Some((S::Failed, Some("swap failed".into())))
    );
    assert!(matches!(revert_report(&c), Some((S::Failed, Some(_)))));
}
