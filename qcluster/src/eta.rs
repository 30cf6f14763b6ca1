//! How long an upgrade is expected to take, from this cluster's own history
//! (`crate::history`): a prepare's rate over the bundle's size, a commit's time
//! per batch of nodes that reboot together; a stated default where nothing of
//! the kind was recorded. Pure: the preview (`POST /v1/qimg/upgrade/preview`)
//! and the running upgrade's time left (`/v1/qimg/cluster/upgrade`) both ask
//! [`expected`], and [`eta`] counts down from it.

use qapi::types::{Eta, PhaseEta, PlanMode, PlanPhase};

use crate::history::{UpgradeRecord, UpgradeResult};
use crate::plan::ClusterPlan;

/// With no prepare recorded: the rate (bytes/s) a prepare is expected to go at
/// on every node at once (read, verify, write a slot).
pub const DEFAULT_PREPARE_BYTES_PER_S: u64 = 50_000_000;
/// With no prepare recorded and no size known.
pub const DEFAULT_PREPARE_MS: u64 = 5 * 60_000;
/// With no instant commit recorded: one (every container swapped).
pub const DEFAULT_INSTANT_COMMIT_MS: u64 = 30_000;
/// With no platform commit recorded: one batch (a reboot, the boot check, the
/// data-safety gate after it).
pub const DEFAULT_BATCH_MS: u64 = 10 * 60_000;
/// How many recent upgrades a measure looks at (their median).
pub const LOOK_BACK: usize = 5;

/// What an upgrade will be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Instant or platform.
    pub mode: PlanMode,
    /// How many batches of nodes reboot one after another (1 for an instant
    /// upgrade or a complete reboot).
    pub batches: usize,
    /// The bundle's size in bytes, if known.
    pub bundle_size: Option<u64>,
}

/// How long the prepare of `r` took: from preparing to the next phase.
fn prepare_ms(r: &UpgradeRecord) -> Option<u64> {
    let start = r.entered(PlanPhase::Preparing)?;
    let end = r
        .entered(PlanPhase::Prepared)
        .or_else(|| r.entered(PlanPhase::Committing))?;
    Some(end.saturating_sub(start)).filter(|ms| *ms > 0)
}

/// How long one batch of `r`'s commit took (its commit over its batches).
fn batch_ms(r: &UpgradeRecord) -> Option<u64> {
    let ms = r.between(PlanPhase::Committing, PlanPhase::Committed)?;
    Some(ms / r.batches.len().max(1) as u64)
}

/// The median of `v` (the lower middle for an even count), `None` when empty.
fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// The expected preparing and committing of `shape`, from `history` (newest
/// first; only upgrades that committed on every node are measured: those that
/// ended well, and those the operator rolled back after they had).
pub fn expected(shape: &Shape, history: &[UpgradeRecord]) -> Vec<PhaseEta> {
    let good = || {
        history.iter().filter(|r| {
            r.result == Some(UpgradeResult::Upgraded)
                || (r.result == Some(UpgradeResult::RolledBack) && r.rollback.is_some())
        })
    };
    // A prepare's rate, in bytes per second, over the bundle's size.
    let rates: Vec<u64> = good()
        .filter_map(|r| Some(r.bundle_size? * 1000 / prepare_ms(r)?))
        .filter(|rate| *rate > 0)
        .take(LOOK_BACK)
        .collect();
    let n = rates.len();
    let (prepare, prepare_basis) = match (median(rates), shape.bundle_size) {
        (Some(rate), Some(size)) => (
            size * 1000 / rate,
            format!(
                "{:.1} MB/s, measured over the last {n} prepare{}",
                rate as f64 / 1e6,
                if n == 1 { "" } else { "s" }
            ),
        ),
        (None, Some(size)) => (
            size * 1000 / DEFAULT_PREPARE_BYTES_PER_S,
            format!(
                "{} MB/s, a default: no prepare recorded",
                DEFAULT_PREPARE_BYTES_PER_S / 1_000_000
            ),
        ),
        (_, None) => (
            DEFAULT_PREPARE_MS,
            "a default: the bundle's size is not known".into(),
        ),
    };
    let batches = shape.batches.max(1) as u64;
    let per: Vec<u64> = good()
        .filter(|r| r.mode == shape.mode)
        .filter_map(batch_ms)
        .take(LOOK_BACK)
        .collect();
    let n = per.len();
    let what = match shape.mode {
        PlanMode::Instant => "instant commit",
        PlanMode::Platform => "batch",
    };
    let (commit, commit_basis) = match median(per) {
        Some(ms) => (
            ms * batches,
            format!(
                "{} per {what}, measured over the last {n} {} commit{}",
                qapi::history::took(ms),
                mode_name(shape.mode),
                if n == 1 { "" } else { "s" }
            ),
        ),
        None => {
            let ms = match shape.mode {
                PlanMode::Instant => DEFAULT_INSTANT_COMMIT_MS,
                PlanMode::Platform => DEFAULT_BATCH_MS,
            };
            (
                ms * batches,
                format!(
                    "{} per {what}, a default: no {} commit recorded",
                    qapi::history::took(ms),
                    mode_name(shape.mode)
                ),
            )
        }
    };
    let commit_basis = if batches > 1 {
        format!("{batches} batches; {commit_basis}")
    } else {
        commit_basis
    };
    vec![
        PhaseEta {
            phase: PlanPhase::Preparing,
            expected_ms: prepare,
            elapsed_ms: None,
            basis: prepare_basis,
        },
        PhaseEta {
            phase: PlanPhase::Committing,
            expected_ms: commit,
            elapsed_ms: None,
            basis: commit_basis,
        },
    ]
}

fn mode_name(m: PlanMode) -> &'static str {
    match m {
        PlanMode::Instant => "instant",
        PlanMode::Platform => "platform",
    }
}

/// The time expected and left of `plan` while it prepares or commits, at
/// `now_ms`: its phases as [`expected`] says, each with how long it has run
/// (by `record`, the plan's own), and what is left. `batches`: how many
/// batches its commit reboots in (the plan's once set). `None` once it ended,
/// and while it discards or rolls back.
pub fn eta(
    plan: &ClusterPlan,
    record: Option<&UpgradeRecord>,
    history: &[UpgradeRecord],
    batches: usize,
    now_ms: u64,
) -> Option<Eta> {
    let running = matches!(
        plan.phase,
        PlanPhase::Preparing | PlanPhase::Prepared | PlanPhase::Committing
    );
    if !running {
        return None;
    }
    let shape = Shape {
        mode: plan.mode,
        batches: if plan.batches.is_empty() {
            batches
        } else {
            plan.batches.len()
        },
        bundle_size: plan.bundle.as_ref().map(|b| b.size),
    };
    // The plan's own record has not ended: `expected` measures only upgrades
    // that ended well.
    let mut phases = expected(&shape, history);
    let entered = |p: PlanPhase| record.and_then(|r| r.entered(p));
    let started = entered(PlanPhase::Preparing)
        .or_else(|| plan.started.as_ref().map(|s| s.at_ms))
        .unwrap_or(now_ms);
    let prepare_end = entered(PlanPhase::Prepared).or_else(|| entered(PlanPhase::Committing));
    phases[0].elapsed_ms = Some(prepare_end.unwrap_or(now_ms).saturating_sub(started));
    if plan.phase == PlanPhase::Committing {
        phases[1].elapsed_ms =
            Some(now_ms.saturating_sub(entered(PlanPhase::Committing).unwrap_or(now_ms)));
    }
    let left = |p: &PhaseEta| p.expected_ms.saturating_sub(p.elapsed_ms.unwrap_or(0));
    let remaining_ms = match plan.phase {
        PlanPhase::Preparing => left(&phases[0]) + phases[1].expected_ms,
        PlanPhase::Prepared => phases[1].expected_ms,
        // A rolling commit counts down by batch: the batches not done at the
        // measured time each, less what the current one ran.
        _ if plan.in_batches() && !plan.batches.is_empty() => {
            let per = phases[1].expected_ms / plan.batches.len() as u64;
            let ahead = plan.batches.len().saturating_sub(plan.batch) as u64;
            let ran = if plan.batch_started_ms == 0 {
                0
            } else {
                now_ms.saturating_sub(plan.batch_started_ms).min(per)
            };
            (per * ahead).saturating_sub(ran)
        }
        _ => left(&phases[1]),
    };
    let phases = match plan.phase {
        PlanPhase::Committing => phases.split_off(1),
        _ => phases,
    };
    Some(Eta {
        phases,
        remaining_ms,
    })
}

#[cfg(test)]
mod tests;
