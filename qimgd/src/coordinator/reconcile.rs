//! One reconciliation: load the plan and the reports (from etcd at a poll, from
//! the mirror when the watch woke the loop), ask the data-safety probe while a
//! gate holds, decide ([`super::next`]), write by compare-and-swap; then the
//! upgrade's record (`qcluster::history::advance`, written by compare-and-swap,
//! its events told only once it is written).

use qcluster::{ClusterSpec, Store};

use qcluster::{ClusterPlan, NodeReport};

use super::Ctx;
use super::decide::{grave, next};
use crate::events::Events;

/// One reconciliation; returns when the plan's data-safety gate is up (Unix ms,
/// 0 for none), for the loop to wake then.
pub(super) async fn reconcile(
    store: &Store,
    spec: &ClusterSpec,
    mut cx: Ctx,
    probe: Option<&[String]>,
    mut fresh: bool,
    events: &Events,
) -> Result<u64, qcluster::Error> {
    loop {
        // Read from etcd at the poll; as the watch delivered it otherwise (a stale
        // plan only loses its compare-and-swap).
        let (plan, reports) = if fresh {
            (store.plan().await?, store.reports().await?)
        } else {
            (store.plan_seen().await?, store.reports_seen().await?)
        };
        let Some((plan, rev)) = plan else {
            return Ok(0);
        };
        // The restriper is asked only while a gate holds the next batch back.
        if let Some(argv) = probe.filter(|_| plan.gating(cx.now_ms, false)) {
            cx.data = crate::restriper::ask(argv).await;
        }
        let Some(p) = next(&plan, spec, &reports, &cx) else {
            record(store, &plan, &reports, cx.now_ms, events).await?;
            return Ok(plan.gate_until_ms);
        };
        // A report the mirror has not seen yet must not pause or fail the rollout:
        // such a decision is made again on what etcd says.
        if !fresh && grave(&plan, &p) {
            fresh = true;
            continue;
        }
        if !store.put_plan_if(&p, Some(rev)).await? {
            return Ok(plan.gate_until_ms);
        }
        crate::log(&format!(
            "coordinator: plan {} {:?} -> {:?}{}",
            p.generation,
            plan.phase,
            p.phase,
            p.error
                .as_deref()
                .or(p.paused_error.as_deref())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        record(store, &p, &reports, cx.now_ms, events).await?;
        return Ok(p.gate_until_ms);
    }
}

/// Moves the record of `plan`'s generation on, if anything changed; its events
/// are told once the record is written (a writer that lost the race tells
/// nothing: the next reconciliation starts from what won).
async fn record(
    store: &Store,
    plan: &ClusterPlan,
    reports: &[(u32, NodeReport)],
    now_ms: u64,
    events: &Events,
) -> Result<(), qcluster::Error> {
    let prev = store.record_seen(plan.generation).await?;
    let Some((next, told)) =
        qcluster::history::advance(prev.as_ref().map(|(r, _)| r), plan, reports, now_ms)
    else {
        return Ok(());
    };
    if store.put_record_if(&next, prev.map(|(_, rev)| rev)).await? {
        for e in &told {
            events.tell(e);
        }
    }
    Ok(())
}
