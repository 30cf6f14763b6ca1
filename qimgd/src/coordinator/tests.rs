//! Tests of the coordinator's decisions (pure: plan + reports + context → the next plan).

use super::decide::grave;
use super::*;
use crate::restriper::Source;
use qcluster::plan::OnFailure;
use qcluster::{ClusterPlan, ClusterSpec, NodeReport, NodeSpec, NodeStep, PlanMode, PlanPhase};

const CX: Ctx = Ctx {
    now_ms: 1_000_000,
    me: 1,
    batch_limit_ms: 60_000,
    gate_limit_ms: 60_000,
    data: DataSafety::Timed { ms_per_node: 1000 },
};

fn spec() -> ClusterSpec {
    spec_of(3, 1)
}

/// A spec of `n` nodes on fixed loopback ports (nothing listens), no etcd
/// members: for the pure decisions' tests.
pub(crate) fn spec_of(n: u32, max_node_failures: u32) -> ClusterSpec {
    ClusterSpec {
        name: "c".into(),
        max_node_failures,
        nodes: (1..=n)
            .map(|i| NodeSpec {
                id: i,
                name: format!("n{i}"),
                agent: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                etcd_client: None,
                etcd_peer: None,
            })
            .collect(),
    }
}

/// A rolling reboot's context at `now_ms` on node `me`: 10 s limits, the
/// simulated restriper at 1 s per node.
fn rolling_cx(now_ms: u64, me: u32) -> Ctx {
    Ctx {
        now_ms,
        me,
        batch_limit_ms: 10_000,
        gate_limit_ms: 10_000,
        data: DataSafety::Timed { ms_per_node: 1000 },
    }
}

/// A platform commit rebooting `k` nodes at a time, batches not fixed yet.
fn rolling_plan(k: u32) -> ClusterPlan {
    ClusterPlan {
        rolling: true,
        nodes_per_batch: Some(k),
        phase: PlanPhase::Committing,
        ..ClusterPlan::new(1, "/x", "7.1.0".parse().unwrap(), PlanMode::Platform)
    }
}

fn plan(phase: PlanPhase, auto_commit: bool) -> ClusterPlan {
    ClusterPlan {
        auto_commit,
        phase,
        ..ClusterPlan::new(7, "/x", "7.0.1".parse().unwrap(), PlanMode::Instant)
    }
}

fn r(id: u32, generation: u64, step: NodeStep, downtime: Option<u64>) -> (u32, NodeReport) {
    (
        id,
        NodeReport {
            generation,
            step,
            progress: 100,
            error: (step == NodeStep::Failed).then(|| "boom".into()),
            downtime_ms: downtime,
            at_ms: 0,
        },
    )
}

#[test]
fn prepared_only_when_every_node_is_and_of_this_generation() {
    let s = spec();
    let p = plan(PlanPhase::Preparing, false);
    let mut reps = vec![
        r(1, 7, NodeStep::Prepared, None),
        r(2, 7, NodeStep::Prepared, None),
    ];
    assert_eq!(next(&p, &s, &reps, &CX), None, "node 3 has not reported");
    reps.push(r(3, 6, NodeStep::Prepared, None));
    assert_eq!(
        next(&p, &s, &reps, &CX),
        None,
        "an older generation's report does not count"
    );
    reps[2] = r(3, 7, NodeStep::Prepared, None);
    assert_eq!(next(&p, &s, &reps, &CX).unwrap().phase, PlanPhase::Prepared);
    let auto = plan(PlanPhase::Preparing, true);
    assert_eq!(
        next(&auto, &s, &reps, &CX).unwrap().phase,
        PlanPhase::Committing
    );
}

#[test]
fn a_failure_discards_everywhere_then_fails_naming_the_node() {
    let s = spec();
    let p = plan(PlanPhase::Preparing, false);
    let reps = vec![
        r(1, 7, NodeStep::Preparing, None),
        r(2, 7, NodeStep::Failed, None),
    ];
    let d = next(&p, &s, &reps, &CX).unwrap();
    assert_eq!(d.phase, PlanPhase::Discarding);
    assert!(
        d.error.as_deref().unwrap().contains("node n2: boom"),
        "{:?}",
        d.error
    );
    let settled = vec![
        r(1, 7, NodeStep::Discarded, None),
        r(2, 7, NodeStep::Failed, None),
        r(3, 7, NodeStep::Discarded, None),
    ];
    assert_eq!(next(&d, &s, &reps[..1], &CX), None);
    assert_eq!(
        next(&d, &s, &settled, &CX).unwrap().phase,
        PlanPhase::Failed
    );
}

#[test]
fn an_instant_commit_failing_somewhere_rolls_every_node_back() {
    let s = spec();
    let p = plan(PlanPhase::Committing, false);
    let reps = vec![
        r(1, 7, NodeStep::Committed, Some(4)),
        r(2, 7, NodeStep::Failed, None),
        r(3, 7, NodeStep::Committing, None),
    ];
    let back = next(&p, &s, &reps, &CX).unwrap();
    assert_eq!(back.phase, PlanPhase::RollingBack);
    assert!(
        back.error.as_deref().unwrap().contains("node n2"),
        "{back:?}"
    );
    assert_eq!(
        next(&back, &s, &reps, &CX),
        None,
        "node 1 has not gone back yet"
    );
    let settled = vec![
        r(1, 7, NodeStep::RolledBack, None),
        r(2, 7, NodeStep::Failed, None),
        r(3, 7, NodeStep::RolledBack, None),
    ];
    assert_eq!(
        next(&back, &s, &settled, &CX).unwrap().phase,
        PlanPhase::Failed
    );
}

#[test]
fn committed_with_the_longest_downtime() {
    let s = spec();
    let p = plan(PlanPhase::Committing, false);
    let reps = vec![
        r(1, 7, NodeStep::Committed, Some(4)),
        r(2, 7, NodeStep::Committed, Some(9)),
        r(3, 7, NodeStep::Committed, Some(3)),
    ];
    let c = next(&p, &s, &reps, &CX).unwrap();
    assert_eq!((c.phase, c.downtime_ms), (PlanPhase::Committed, Some(9)));
    assert_eq!(next(&c, &s, &reps, &CX), None, "a committed plan stays");
}

fn committed(ids: &[u32]) -> Vec<(u32, NodeReport)> {
    ids.iter()
        .map(|&id| {
            (
                id,
                NodeReport {
                    generation: 1,
                    step: NodeStep::Committed,
                    progress: 100,
                    error: None,
                    downtime_ms: None,
                    at_ms: 0,
                },
            )
        })
        .collect()
}

#[test]
fn only_a_stop_or_an_undo_is_grave() {
    let p = ClusterPlan {
        phase: PlanPhase::Committing,
        ..ClusterPlan::new(1, "/x", "7.1.0".parse().unwrap(), PlanMode::Platform)
    };
    let moved = ClusterPlan {
        batch: 1,
        ..p.clone()
    };
    assert!(!grave(&p, &moved), "a next batch is not");
    let paused = ClusterPlan {
        paused_error: Some("late".into()),
        ..p.clone()
    };
    assert!(grave(&p, &paused));
    assert!(!grave(&paused, &paused), "already paused");
    for phase in [
        PlanPhase::Failed,
        PlanPhase::Discarding,
        PlanPhase::RollingBack,
    ] {
        assert!(grave(&p, &ClusterPlan { phase, ..p.clone() }), "{phase:?}");
    }
    assert!(!grave(
        &p,
        &ClusterPlan {
            phase: PlanPhase::Committed,
            ..p.clone()
        }
    ));
}

#[test]
fn the_simulated_restriper_runs_from_when_the_batch_was_back() {
    let s = spec_of(4, 2);
    let cx = |now_ms| rolling_cx(now_ms, 2);
    let mut p = rolling_plan(2);
    p = next(&p, &s, &[], &cx(1000)).unwrap();
    let first = p.batches[0].clone();
    let back = |at: &[u64]| -> Vec<(u32, NodeReport)> {
        let mut r = committed(&first);
        for ((_, rep), at) in r.iter_mut().zip(at) {
            rep.at_ms = *at;
        }
        r
    };
    // The last node of the batch was back at 2600: the gate runs from then.
    let g = next(&p, &s, &back(&[2400, 2600]), &cx(3000)).unwrap();
    assert_eq!((g.batch, g.gate_until_ms), (0, 2600 + 2000));
    // A clock ahead of the coordinator's counts as now.
    let g = next(&p, &s, &back(&[2400, 9000]), &cx(3000)).unwrap();
    assert_eq!(g.gate_until_ms, 3000 + 2000);
    // Already restriped when the coordinator reads it: the next batch at once.
    let n = next(&p, &s, &back(&[1500, 1600]), &cx(4000)).unwrap();
    assert_eq!((n.batch, n.gate_until_ms, n.batch_started_ms), (1, 0, 4000));
}

#[test]
fn batches_then_gate_then_next_batch_then_committed() {
    let s = spec_of(4, 2);
    let cx = |now_ms| rolling_cx(now_ms, 2);
    let mut p = rolling_plan(2);
    p = next(&p, &s, &[], &cx(1000)).unwrap();
    assert_eq!(p.batches.last().unwrap(), &vec![2], "the coordinator last");
    let first = p.batches[0].clone();
    assert!(p.may_commit(first[0]) && !p.may_commit(2));
    assert_eq!(next(&p, &s, &[], &cx(2000)), None, "the batch reboots");
    // Back: the gate starts, holds, then the next batch goes.
    p = next(&p, &s, &committed(&first), &cx(3000)).unwrap();
    assert_eq!(p.gate_until_ms, 3000 + 1000 * first.len() as u64);
    assert_eq!(
        next(&p, &s, &committed(&first), &cx(3500)),
        None,
        "restriping"
    );
    p = next(&p, &s, &committed(&first), &cx(6000)).unwrap();
    assert_eq!((p.batch, p.gate_until_ms), (1, 0));
    // A paused rollout waits.
    let mut paused = p.clone();
    paused.paused = true;
    assert_eq!(
        next(&paused, &s, &committed(&[1, 2, 3, 4]), &cx(7000)),
        None
    );
    // Too long: paused due to error, naming the node.
    let late = next(&p, &s, &committed(&first), &cx(20_000)).unwrap();
    assert!(
        late.paused_error
            .as_deref()
            .unwrap()
            .contains("did not come back"),
        "{late:?}"
    );
    // The rest commits: after the last gate, the plan is committed.
    let all = committed(&[1, 2, 3, 4]);
    let mut now = 7000;
    while p.phase == PlanPhase::Committing {
        now += 5000; // past every gate, within the batch limit
        p = next(&p, &s, &all, &cx(now)).unwrap();
    }
    assert_eq!(p.phase, PlanPhase::Committed);
}

#[test]
fn a_rolling_platform_failure_brings_the_committed_nodes_back_batch_by_batch() {
    let s = spec_of(5, 2);
    let cx = |now_ms| rolling_cx(now_ms, 1);
    let p = ClusterPlan {
        batches: vec![vec![2], vec![3], vec![4], vec![5], vec![1]],
        batch: 2,
        ..rolling_plan(1)
    };
    let step = |id, step| r(id, 1, step, None);
    let reps = vec![
        step(1, NodeStep::Prepared),
        step(2, NodeStep::Committed),
        step(3, NodeStep::Committed),
        step(4, NodeStep::Failed),
        step(5, NodeStep::Prepared),
    ];
    // The policy "stop" ends the rollout where it is.
    let stop = ClusterPlan {
        on_failure: OnFailure::Stop,
        ..p.clone()
    };
    let stopped = next(&stop, &s, &reps, &cx(1000)).unwrap();
    assert_eq!(stopped.phase, PlanPhase::Failed);
    assert!(stopped.error.unwrap().contains("node n4: boom"));
    // The default rolls back: the committed nodes, one at a time.
    let mut b = next(&p, &s, &reps, &cx(1000)).unwrap();
    assert_eq!(b.phase, PlanPhase::RollingBack);
    assert!(
        b.error.as_deref().unwrap().contains("node n4: boom"),
        "{b:?}"
    );
    assert_eq!(b.batches, vec![vec![2], vec![3]]);
    assert!(b.may_commit(2) && !b.may_commit(3) && !b.may_commit(5));
    assert_eq!(next(&b, &s, &reps, &cx(2000)), None, "node 2 goes back");
    let mut back = reps.clone();
    back[0] = step(1, NodeStep::Discarded);
    back[4] = step(5, NodeStep::Discarded);
    back[1] = step(2, NodeStep::RolledBack);
    b = next(&b, &s, &back, &cx(3000)).unwrap();
    assert_eq!(b.gate_until_ms, 4000, "the restriper gate between batches");
    assert_eq!(next(&b, &s, &back, &cx(3500)), None);
    b = next(&b, &s, &back, &cx(4000)).unwrap();
    assert_eq!(b.batch, 1);
    assert!(b.may_commit(3));
    // Node 3 does not come back within the limit: paused, named.
    let late = next(&b, &s, &back, &cx(30_000)).unwrap();
    assert!(
        late.paused_error
            .as_deref()
            .unwrap()
            .contains("node n3 did not come back healthy on its previous release"),
        "{late:?}"
    );
    back[2] = step(3, NodeStep::RolledBack);
    b = next(&b, &s, &back, &cx(5000)).unwrap();
    b = next(&b, &s, &back, &cx(7000)).unwrap();
    assert_eq!(b.phase, PlanPhase::Failed, "{b:?}");
    assert!(b.error.unwrap().contains("every node goes back"));
}

#[test]
fn a_complete_reboot_failure_brings_every_committed_node_back_at_once() {
    let s = spec();
    let p = ClusterPlan {
        phase: PlanPhase::Committing,
        ..ClusterPlan::new(1, "/x", "7.1.0".parse().unwrap(), PlanMode::Platform)
    };
    let reps = vec![
        r(1, 1, NodeStep::Committed, None),
        r(2, 1, NodeStep::Failed, None),
        r(3, 1, NodeStep::Committed, None),
    ];
    let b = next(&p, &s, &reps, &CX).unwrap();
    assert_eq!((b.phase, b.batches.len()), (PlanPhase::RollingBack, 0));
    assert!(b.may_commit(1) && b.may_commit(3));
    let settled = vec![
        r(1, 1, NodeStep::RolledBack, None),
        r(2, 1, NodeStep::Failed, None),
        r(3, 1, NodeStep::RolledBack, None),
    ];
    assert_eq!(next(&b, &s, &reps, &CX), None);
    assert_eq!(
        next(&b, &s, &settled, &CX).unwrap().phase,
        PlanPhase::Failed
    );
}

#[test]
fn a_probed_restriper_holds_the_next_batch_until_the_data_is_safe() {
    let s = spec_of(3, 1);
    let cx = |now_ms, data| Ctx {
        gate_limit_ms: 60_000,
        data,
        ..rolling_cx(now_ms, 1)
    };
    let mut p = ClusterPlan {
        batches: vec![vec![2], vec![3], vec![1]],
        batch_started_ms: 1000,
        ..rolling_plan(1)
    };
    let back = committed(&[2]);
    // The batch is back: the gate starts now, whatever the simulated timing.
    p = next(&p, &s, &back, &cx(2000, DataSafety::Safe)).unwrap();
    assert_eq!((p.batch, p.gate_until_ms), (0, 2000));
    // The probe's answer is written where every node reads the plan, once
    // per change; the batch stays.
    let risk = DataSafety::AtRisk("the restriper is RUNNING (40 % complete)".into());
    p = next(&p, &s, &back, &cx(30_000, risk.clone())).unwrap();
    assert_eq!(
        (p.batch, p.gate_until_ms, p.gate_why.as_deref()),
        (0, 2000, Some("the restriper is RUNNING (40 % complete)"))
    );
    assert_eq!(next(&p, &s, &back, &cx(31_000, risk.clone())), None);
    let down = DataSafety::AtRisk("the restriper probe: connection refused".into());
    let said = next(&p, &s, &back, &cx(32_000, down)).unwrap();
    assert_eq!(
        (said.batch, said.gate_why.as_deref()),
        (0, Some("the restriper probe: connection refused"))
    );
    let stuck = next(&p, &s, &back, &cx(70_000, risk)).unwrap();
    assert_eq!(
        stuck.paused_error.as_deref(),
        Some(
            "the data-safety gate did not pass within 60 s: the restriper is RUNNING (40 % complete)"
        )
    );
    p = next(&p, &s, &back, &cx(30_000, DataSafety::Safe)).unwrap();
    assert_eq!((p.batch, p.gate_until_ms, p.gate_why), (1, 0, None));
}

#[test]
fn without_a_data_safety_source_the_reboots_pause_instead_of_waiting_a_timer() {
    let s = spec_of(3, 1);
    let why = crate::restriper::MISSING.to_string();
    let cx = |now_ms| Ctx {
        data: Source::Missing.initial(),
        ..rolling_cx(now_ms, 1)
    };
    let mut p = ClusterPlan {
        batches: vec![vec![2], vec![3], vec![1]],
        batch_started_ms: 1000,
        ..rolling_plan(1)
    };
    let back = committed(&[2]);
    // The batch is back: the gate holds from now...
    p = next(&p, &s, &back, &cx(2000)).unwrap();
    assert_eq!(
        (p.batch, p.gate_until_ms, p.paused_error.as_deref()),
        (0, 2000, None)
    );
    // ...and, with nothing to ask, pauses the reboots naming the setting; no
    // amount of time lets the next batch go.
    let paused = next(&p, &s, &back, &cx(2001)).unwrap();
    assert_eq!(
        paused.paused_error,
        Some(format!("the data-safety gate cannot pass: {why}"))
    );
    assert_eq!(paused.batch, 0);
    assert!(why.contains("restriper_probe"));
    assert_eq!(next(&paused, &s, &back, &cx(10_000_000)), None);
}

#[test]
fn canaries_go_first_then_the_rollout_soaks_and_goes_on() {
    // Five nodes, two failures permitted, batches of 2 after one canary; the
    // coordinator is node 1.
    let s = spec_of(5, 2);
    let cx = |now_ms| Ctx {
        data: DataSafety::Safe,
        ..rolling_cx(now_ms, 1)
    };
    let start = ClusterPlan {
        canary: Some(1),
        soak_ms: 5_000,
        ..rolling_plan(2)
    };
    let p = next(&start, &s, &[], &cx(1000)).unwrap();
    assert_eq!(p.batches[0], vec![2], "one canary, not the coordinator");
    assert!(
        p.batches.last().unwrap().contains(&1),
        "the coordinator last: {:?}",
        p.batches
    );
    assert_eq!(p.batches.concat().len(), 5, "{:?}", p.batches);
    assert!(p.batches.iter().all(|b| b.len() <= 2), "{:?}", p.batches);
    // The canary is back: its gate, then the rollout waits on it.
    let back = committed(&[2]);
    let gated = next(&p, &s, &back, &cx(2000)).unwrap();
    assert_eq!((gated.batch, gated.soaking), (0, false));
    let soaking = next(&gated, &s, &back, &cx(2001)).unwrap();
    assert_eq!(
        (
            soaking.batch,
            soaking.soaking,
            soaking.paused,
            soaking.soak_until_ms
        ),
        (1, true, true, 7001)
    );
    // Nothing moves while it soaks; at the end of the soak it goes on.
    assert_eq!(next(&soaking, &s, &back, &cx(7000)), None);
    let on = next(&soaking, &s, &back, &cx(7001)).unwrap();
    assert_eq!(
        (
            on.batch,
            on.soaking,
            on.paused,
            on.soak_until_ms,
            on.batch_started_ms
        ),
        (1, false, false, 0, 7001)
    );
    // Without a soak time, only the operator's resume lets it go on.
    let forever = ClusterPlan {
        soak_ms: 0,
        ..gated.clone()
    };
    let held = next(&forever, &s, &back, &cx(2001)).unwrap();
    assert_eq!((held.soaking, held.soak_until_ms), (true, 0));
    assert_eq!(next(&held, &s, &back, &cx(100_000_000)), None);
    // The next batches do not soak.
    let b1 = committed(&[2, 3, 4]);
    let mut later = ClusterPlan {
        batches: vec![vec![2], vec![3, 4], vec![5], vec![1]],
        ..on
    };
    later = next(&later, &s, &b1, &cx(8000)).unwrap();
    let moved = next(&later, &s, &b1, &cx(8001)).unwrap();
    assert_eq!(
        (moved.batch, moved.soaking, moved.paused),
        (2, false, false)
    );
}

#[test]
fn a_committed_upgrade_stays_finalizable_unless_its_time_finalizes_it() {
    let s = spec();
    let reps = vec![
        r(1, 7, NodeStep::Committed, None),
        r(2, 7, NodeStep::Committed, None),
        r(3, 7, NodeStep::Committed, None),
    ];
    // Asked for nothing: committed, finalizable, and it stays so.
    let c = next(&plan(PlanPhase::Committing, false), &s, &reps, &CX).unwrap();
    assert_eq!(c.phase, PlanPhase::Committed);
    assert_eq!(c.committed_ms, CX.now_ms, "the rollback window's start");
    assert!(c.finalizable() && c.auto_finalize_at_ms().is_none());
    let later = Ctx {
        now_ms: CX.now_ms + 86_400_000,
        ..CX
    };
    assert_eq!(next(&c, &s, &reps, &later), None);
    // `auto_finalize_after_secs: 0`: finalized in the same write.
    let at_once = ClusterPlan {
        auto_finalize_ms: Some(0),
        ..plan(PlanPhase::Committing, false)
    };
    let c0 = next(&at_once, &s, &reps, &CX).unwrap();
    assert_eq!(c0.phase, PlanPhase::Committed);
    assert!(!c0.finalizable());
    let f = c0.finalized.as_ref().unwrap();
    assert_eq!(
        (f.by.as_str(), f.at_ms),
        (qapi::rollback::AUTO_FINALIZE, CX.now_ms)
    );
    assert!(f.from.contains("node 1"), "{f:?}");
    // After an hour: not before it, at it.
    let hour = ClusterPlan {
        auto_finalize_ms: Some(3_600_000),
        ..plan(PlanPhase::Committing, false)
    };
    let c1 = next(&hour, &s, &reps, &CX).unwrap();
    assert_eq!(c1.auto_finalize_at_ms(), Some(CX.now_ms + 3_600_000));
    let at = |ms| Ctx { now_ms: ms, ..CX };
    assert_eq!(next(&c1, &s, &reps, &at(CX.now_ms + 3_599_999)), None);
    let f1 = next(&c1, &s, &reps, &at(CX.now_ms + 3_600_000)).unwrap();
    assert_eq!(f1.phase, PlanPhase::Committed);
    assert!(f1.finalized.is_some() && !f1.finalizable());
    assert_eq!(f1.auto_finalize_at_ms(), None);
    assert_eq!(next(&f1, &s, &reps, &at(CX.now_ms + 9_999_999)), None);
    // A rolling commit's last batch commits the same way.
    let s5 = spec_of(2, 1);
    let p = ClusterPlan {
        batches: vec![vec![2], vec![1]],
        batch: 1,
        gate_until_ms: 1,
        auto_finalize_ms: Some(0),
        ..rolling_plan(1)
    };
    let done = next(&p, &s5, &committed(&[1, 2]), &rolling_cx(5000, 1)).unwrap();
    assert_eq!(done.phase, PlanPhase::Committed);
    assert_eq!(done.committed_ms, 5000);
    assert!(done.finalized.is_some());
}

#[test]
fn a_rollback_on_demand_ends_rolled_back_or_names_the_node_that_could_not_go_back() {
    let s = spec();
    let asked = qapi::history::Started {
        at_ms: 1,
        by: "user \"admin\"".into(),
        from: "127.0.0.1".into(),
    };
    let p = ClusterPlan {
        rollback: Some(asked),
        ..plan(PlanPhase::RollingBack, false)
    };
    let going = vec![
        r(1, 7, NodeStep::RolledBack, None),
        r(2, 7, NodeStep::RollingBack, None),
        r(3, 7, NodeStep::Committed, None),
    ];
    assert_eq!(next(&p, &s, &going, &CX), None, "nodes 2 and 3 go back");
    let back = vec![
        r(1, 7, NodeStep::RolledBack, None),
        r(2, 7, NodeStep::RolledBack, None),
        r(3, 7, NodeStep::RolledBack, None),
    ];
    let done = next(&p, &s, &back, &CX).unwrap();
    assert_eq!(done.phase, PlanPhase::RolledBack);
    assert_eq!(done.error, None);
    assert!(!done.phase.is_active());
    assert!(!done.finalizable(), "nothing left to finalize");
    assert_eq!(next(&done, &s, &back, &CX), None, "it stays");
    assert!(!grave(&p, &done), "asked for: not an alarm");
    // A node that could not go back: failed, named.
    let mut bad = back.clone();
    bad[2] = r(3, 7, NodeStep::Failed, None);
    let failed = next(&p, &s, &bad, &CX).unwrap();
    assert_eq!(failed.phase, PlanPhase::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("the rollback failed on node n3: boom"),
        "{failed:?}"
    );
    // The reason every node gives its engine names who asked.
    assert_eq!(
        p.rollback_reason(),
        "rolled back on request by user \"admin\" from 127.0.0.1"
    );
}
