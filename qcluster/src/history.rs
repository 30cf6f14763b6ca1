//! The upgrade history: what the coordinator keeps of each plan generation in
//! an [`UpgradeRecord`], and the [`Event`]s it tells on the way. [`advance`] is
//! pure (the last record + the plan + the reports → the next record and what
//! changed); the coordinator writes the record by compare-and-swap and only
//! then tells the events, so a new coordinator continues the record where the
//! last one stopped and no event is told twice.

pub use qapi::history::{
    EVENT_SCHEMA, Event, EventKind, HISTORY_SCHEMA, NodeRecord, Pause, PhaseAt, Started, StepAt,
    UpgradeHistory, UpgradeRecord, UpgradeResult, took,
};

use crate::plan::{ClusterPlan, NodeReport, NodeStep, PlanPhase};

/// How many upgrades the store keeps (the oldest go when a new one starts).
pub const KEEP: usize = 100;

/// The next record of `plan`'s generation, and the events since `prev` (the
/// record as written last; `None` for a plan not seen yet). `None` when nothing
/// changed, or the record has ended.
pub fn advance(
    prev: Option<&UpgradeRecord>,
    plan: &ClusterPlan,
    reports: &[(u32, NodeReport)],
    now_ms: u64,
) -> Option<(UpgradeRecord, Vec<Event>)> {
    let prev = prev.filter(|r| r.generation == plan.generation);
    // An ended record goes on only for what follows a commit: its finalize,
    // or its rollback on demand.
    if prev.is_some_and(|r| {
        r.result.is_some()
            && r.finalized == plan.finalized
            && r.phases.last().map(|p| p.phase) == Some(plan.phase)
    }) {
        return None;
    }
    let mut events = vec![];
    let mut r = match prev {
        Some(r) => r.clone(),
        None => {
            let r = begin(plan, now_ms);
            let by = plan
                .started
                .as_ref()
                .map(|s| format!(" by {} from {}", s.by, s.from))
                .unwrap_or_default();
            let how = qapi::history::how(plan.mode, plan.in_batches());
            events.push(event(
                &r,
                EventKind::Started,
                r.started_ms(),
                format!(
                    "upgrade {} to {} ({how}) started{by}: {}",
                    r.generation, r.to_version, r.image_path
                ),
            ));
            r
        }
    };
    if plan.phase == PlanPhase::RollingBack && r.result.is_some() {
        // The operator rolls the upgrade back: under way again.
        r.result = None;
        r.ended_ms = None;
    }
    r.rollback.clone_from(&plan.rollback);
    if let (Some(f), None) = (&plan.finalized, &r.finalized) {
        r.finalized = Some(f.clone());
        events.push(event(
            &r,
            EventKind::Finalized,
            f.at_ms,
            format!(
                "upgrade {} finalized by {}: the cluster keeps {} (no rollback any more)",
                r.generation, f.by, r.to_version
            ),
        ));
    }
    if !plan.batches.is_empty() && r.batches != plan.batches {
        r.batches = plan.batches.clone();
    }
    if plan.downtime_ms.is_some() {
        r.downtime_ms = plan.downtime_ms;
    }
    // The nodes' steps, in node order, each at the time the node reached it.
    for (id, rep) in reports
        .iter()
        .filter(|(_, rep)| rep.generation == plan.generation)
    {
        let at_ms = if rep.at_ms == 0 { now_ms } else { rep.at_ms };
        if !r.nodes.iter().any(|n| n.id == *id) {
            r.nodes.push(NodeRecord {
                id: *id,
                steps: vec![],
                error: None,
            });
            r.nodes.sort_by_key(|n| n.id);
        }
        let Some(node) = r.nodes.iter_mut().find(|n| n.id == *id) else {
            continue;
        };
        if node.outcome() == Some(rep.step) {
            continue;
        }
        node.steps.push(StepAt {
            step: rep.step,
            at_ms,
        });
        if rep.error.is_some() {
            node.error.clone_from(&rep.error);
        }
        let failed = rep.step == NodeStep::Failed;
        let mut e = event(
            &r,
            EventKind::NodeStep,
            at_ms,
            format!(
                "upgrade {}: node {id} {}{}",
                r.generation,
                rep.step.name().replace('_', " "),
                rep.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        );
        e.node = Some(*id);
        e.step = Some(rep.step);
        e.warning = failed;
        events.push(e);
    }
    if r.phases.last().map(|p| p.phase) != Some(plan.phase) {
        r.phases.push(PhaseAt {
            phase: plan.phase,
            at_ms: now_ms,
        });
        if plan.phase.is_active() {
            let mut e = event(
                &r,
                EventKind::Phase,
                now_ms,
                format!("upgrade {}: {}", r.generation, phase_words(plan)),
            );
            e.phase = Some(plan.phase);
            e.warning = matches!(plan.phase, PlanPhase::Discarding)
                || (plan.phase == PlanPhase::RollingBack && plan.rollback.is_none());
            events.push(e);
        }
    }
    // Pauses: the operator's, or the rollout's own on an error.
    let paused = plan.phase.is_active() && (plan.paused || plan.paused_error.is_some());
    let open = r.pauses.last().is_some_and(|p| p.resumed_ms.is_none());
    if paused && !open {
        r.pauses.push(Pause {
            at_ms: now_ms,
            error: plan.paused_error.clone(),
            resumed_ms: None,
            canary: plan.soaking,
        });
        let mut e = event(
            &r,
            EventKind::Paused,
            now_ms,
            match (&plan.paused_error, plan.soaking) {
                (Some(why), _) => format!("upgrade {}: the reboots stopped: {why}", r.generation),
                (None, true) => format!(
                    "upgrade {}: the canaries run {}: the rollout waits {}",
                    r.generation,
                    r.to_version,
                    if plan.soak_until_ms == 0 {
                        "until it is resumed".to_string()
                    } else {
                        format!("until {} UTC", qapi::history::utc(plan.soak_until_ms))
                    }
                ),
                (None, false) => {
                    format!("upgrade {}: the operator paused the reboots", r.generation)
                }
            },
        );
        e.warning = plan.paused_error.is_some();
        events.push(e);
    } else if !paused && open {
        if let Some(p) = r.pauses.last_mut() {
            p.resumed_ms = Some(now_ms);
        }
        if plan.phase.is_active() {
            events.push(event(
                &r,
                EventKind::Resumed,
                now_ms,
                format!("upgrade {}: the reboots go on", r.generation),
            ));
        }
    }
    if !plan.phase.is_active() && r.result.is_none() {
        let result = match plan.phase {
            PlanPhase::Committed => UpgradeResult::Upgraded,
            PlanPhase::RolledBack => UpgradeResult::RolledBack,
            _ if plan.rollback.is_none()
                && r.phases.iter().any(|p| p.phase == PlanPhase::RollingBack) =>
            {
                UpgradeResult::RolledBack
            }
            _ => UpgradeResult::Failed,
        };
        r.result = Some(result);
        r.reason = match plan.phase {
            PlanPhase::RolledBack => Some(plan.rollback_reason()),
            _ => plan.error.clone(),
        };
        r.ended_ms = Some(now_ms);
        let took = took(r.elapsed_ms(now_ms));
        let mut e = event(
            &r,
            EventKind::Finished,
            now_ms,
            match result {
                UpgradeResult::Upgraded => format!(
                    "upgrade {} ended: the cluster runs {} ({took})",
                    r.generation, r.to_version
                ),
                UpgradeResult::RolledBack | UpgradeResult::Failed => format!(
                    "upgrade {} ended: {}{} ({took})",
                    r.generation,
                    result.name().replace('_', " "),
                    r.reason
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            },
        );
        e.result = Some(result);
        e.warning = result != UpgradeResult::Upgraded && plan.phase != PlanPhase::RolledBack;
        events.push(e);
    }
    if prev == Some(&r) {
        return None;
    }
    Some((r, events))
}

/// A new record of `plan`, started at its request's time (else now).
fn begin(plan: &ClusterPlan, now_ms: u64) -> UpgradeRecord {
    let started_ms = plan.started.as_ref().map_or(now_ms, |s| s.at_ms);
    UpgradeRecord {
        generation: plan.generation,
        started: plan.started.clone(),
        image_path: plan.image_path.clone(),
        from_version: plan.from_version.as_ref().map(ToString::to_string),
        to_version: plan.target_version.to_string(),
        mode: plan.mode,
        rolling: plan.in_batches(),
        batches: vec![],
        on_failure: plan.on_failure,
        overrides: plan.overrides.clone(),
        // A plan first seen past its first phase still started preparing.
        phases: vec![PhaseAt {
            phase: PlanPhase::Preparing,
            at_ms: started_ms,
        }],
        nodes: vec![],
        pauses: vec![],
        result: None,
        reason: None,
        ended_ms: None,
        finalized: None,
        rollback: None,
        downtime_ms: None,
        bundle_size: plan.bundle.as_ref().map(|b| b.size),
    }
}

fn event(r: &UpgradeRecord, kind: EventKind, at_ms: u64, message: String) -> Event {
    Event {
        schema: EVENT_SCHEMA.into(),
        kind,
        generation: r.generation,
        at_ms,
        from_version: r.from_version.clone(),
        to_version: r.to_version.clone(),
        phase: None,
        node: None,
        step: None,
        result: None,
        warning: false,
        message,
    }
}

fn phase_words(plan: &ClusterPlan) -> &'static str {
    match plan.phase {
        PlanPhase::RollingBack if plan.rollback.is_some() => {
            "the operator rolls the upgrade back: every node goes back to the release it ran"
        }
        PlanPhase::Preparing => "every node prepares",
        PlanPhase::Prepared => "every node prepared: ready to commit",
        PlanPhase::Committing => "the nodes commit",
        PlanPhase::Committed => "every node runs the new release",
        PlanPhase::Discarding => "a node failed: every node discards what it prepared",
        PlanPhase::RollingBack => "a node failed its commit: the nodes that committed go back",
        PlanPhase::Failed => "ended without committing",
        PlanPhase::RolledBack => "every node runs the release it ran before",
    }
}

#[cfg(test)]
mod tests;
