//! What one request knows of the cluster's upgrade, read once ([`Snapshot`]: the
//! plan and *this generation's* reports, from the mirror while etcd's watch keeps
//! it current), and the cluster's REST bodies shaped from it by pure functions
//! (table-tested in `tests`): the status, blocked, the plan node by node, the
//! reboot manager's status.

use std::collections::BTreeMap;

use qapi::types::{
    Blocked, ClusterUpgrade, NodeProgress, RebootState, RebootStatus, UpgradeSettings,
    UpgradeState, UpgradeStatus, UpgradeType,
};
use qcluster::{ClusterPlan, ClusterSpec, NodeInfo, NodeReport, NodeStep, PlanMode, PlanPhase};

use super::Shared;
use super::error::ApiError;

/// The plan and the reports of its generation (what a request shows; a write
/// reads the plan from etcd again, for its compare-and-swap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The plan.
    pub plan: ClusterPlan,
    /// The reports of the plan's generation, by node id; a report of an older
    /// plan is none.
    pub reports: BTreeMap<u32, NodeReport>,
}

impl Snapshot {
    /// The snapshot of `plan` from every report read: only its generation's kept.
    pub fn new(plan: ClusterPlan, reports: Vec<(u32, NodeReport)>) -> Snapshot {
        let g = plan.generation;
        Snapshot {
            reports: reports
                .into_iter()
                .filter(|(_, r)| r.generation == g)
                .collect(),
            plan,
        }
    }

    /// Reads it (the mirror while etcd's watch is live, else etcd); `None`
    /// before the cluster's first upgrade.
    pub async fn load(app: &Shared) -> Result<Option<Snapshot>, ApiError> {
        let store = super::cluster_upgrade::store(app)?;
        let Some((plan, _)) = store.plan_seen().await? else {
            return Ok(None);
        };
        let reports = store.reports_seen().await?;
        Ok(Some(Snapshot::new(plan, reports)))
    }

    /// The mean progress of the spec's nodes: a node preparing counts its
    /// progress (at most 99), a node past it 100, a node without a report 0.
    pub fn mean_progress(&self, spec: &ClusterSpec) -> u8 {
        let sum: u32 = spec
            .nodes
            .iter()
            .map(|n| {
                self.reports.get(&n.id).map_or(0, |r| match r.step {
                    NodeStep::Preparing => u32::from(r.progress.min(99)),
                    _ => 100,
                })
            })
            .sum();
        (sum / spec.nodes.len().max(1) as u32) as u8
    }

    /// The nodes done with this plan's reboots: back on the new release, or on
    /// the old one in a rollback.
    pub fn rebooted(&self) -> u32 {
        let done = match self.plan.phase {
            PlanPhase::RollingBack => NodeStep::RolledBack,
            _ => NodeStep::Committed,
        };
        self.reports.values().filter(|r| r.step == done).count() as u32
    }
}

/// Qumulo's state of a plan: a finished upgrade is `IDLE` again (its client's
/// lifecycle; the plan keeps what happened, `/v1/qimg/cluster/upgrade`).
pub(crate) fn upgrade_state(p: &ClusterPlan) -> UpgradeState {
    match p.phase {
        PlanPhase::Preparing => UpgradeState::Preparing,
        PlanPhase::Prepared => UpgradeState::Prepared,
        PlanPhase::Committing if p.mode == PlanMode::Platform => UpgradeState::Rebooting,
        PlanPhase::Committing | PlanPhase::RollingBack => UpgradeState::Committing,
        PlanPhase::Committed
        | PlanPhase::Discarding
        | PlanPhase::Failed
        | PlanPhase::RolledBack => UpgradeState::Idle,
    }
}

/// `/v3/upgrade/status` of a cluster; `progress` turns the nodes' mean into
/// what this node shows (never decreasing, `App::cluster_progress`).
pub(crate) fn status_body(
    s: Option<&Snapshot>,
    spec: &ClusterSpec,
    progress: impl FnOnce(u64, u8) -> u8,
) -> UpgradeStatus {
    let Some(s) = s else {
        return UpgradeStatus {
            state: UpgradeState::Idle,
            progress: None,
            settings: None,
            error_info: None,
        };
    };
    let p = &s.plan;
    let state = upgrade_state(p);
    // Qumulo's lifecycle: a finished upgrade is IDLE at 100 %, its settings
    // kept; a failed or discarded one has no progress.
    let progress = match (state, p.phase) {
        (UpgradeState::Preparing, _) => Some(progress(p.generation, s.mean_progress(spec).min(99))),
        (UpgradeState::Idle, PlanPhase::Committed) => Some(100),
        (UpgradeState::Idle, _) => None,
        _ => Some(100),
    };
    UpgradeStatus {
        state,
        progress,
        settings: Some(UpgradeSettings {
            install_path: p.image_path.clone(),
            target_version: p.target_version.to_string(),
            upgrade_type: Some(UpgradeType::from(p.mode)),
            auto_commit: p.auto_commit,
            do_rolling_reboot: p.rolling,
            num_nodes_to_reboot: p.nodes_per_batch,
        }),
        error_info: p.error.clone().or_else(|| p.paused_error.clone()),
    }
}

/// Why a request cannot start while `p` is in progress.
pub(crate) fn in_progress(p: &ClusterPlan) -> String {
    format!(
        "an upgrade to {} is in progress in the cluster (plan {}, {:?}): wait for it to end",
        p.target_version, p.generation, p.phase
    )
}

/// `/v2/upgrade/blocked` of a cluster.
pub(crate) fn blocked_body(s: Option<&Snapshot>) -> Blocked {
    let (is_blocked, blocked_reason) = match s.map(|s| &s.plan) {
        Some(p)
            if p.paused_error.is_some()
                && matches!(p.phase, PlanPhase::Committing | PlanPhase::RollingBack) =>
        {
            (
                true,
                format!(
                    "the rolling reboot paused on an error: {} (POST /v1/shutdown/reboot/resume to go on)",
                    p.paused_error.as_deref().unwrap_or_default()
                ),
            )
        }
        Some(p) if p.phase.is_active() => (true, in_progress(p)),
        Some(p) if p.finalizable() => (
            true,
            qapi::rollback::not_finalized(&p.target_version.to_string(), p.generation),
        ),
        _ => (false, String::new()),
    };
    Blocked {
        is_blocked,
        cluster_degraded: false,
        blocked_reason,
    }
}

/// `GET /v1/qimg/cluster/upgrade`: the plan node by node (`registered`: the
/// nodes registered now, online; `restriping`: whether the data-safety gate
/// holds).
pub(crate) fn nodes_body(
    s: &Snapshot,
    spec: &ClusterSpec,
    registered: &[NodeInfo],
    restriping: bool,
) -> ClusterUpgrade {
    let p = &s.plan;
    let nodes = spec
        .nodes
        .iter()
        .map(|n| {
            let r = s.reports.get(&n.id);
            let reg = registered.iter().find(|r| r.id == n.id);
            NodeProgress {
                id: n.id,
                name: n.name.clone(),
                online: reg.is_some(),
                step: r.map(|r| r.step),
                progress: r.map_or(0, |r| r.progress),
                error: r.and_then(|r| r.error.clone()),
                installed: reg.and_then(|r| r.installed.as_ref().map(ToString::to_string)),
            }
        })
        .collect();
    ClusterUpgrade {
        generation: p.generation,
        phase: p.phase,
        rolling: p.rolling,
        batches: p.batches.clone(),
        batch: p.batch,
        restriping,
        data_safety_wait: p.gate_why.clone().filter(|_| restriping),
        nodes,
        mode: Some(p.mode),
        from_version: p.from_version.as_ref().map(ToString::to_string),
        target_version: p.target_version.to_string(),
        downtime_ms: p.downtime_ms,
        eta: None,
        canary: p.canary,
        soaking: p.soaking,
        soak_until_ms: p.soak_until_ms,
        finality: Some(p.finality()),
    }
}

/// True while a platform plan reboots nodes: forward, or back to their previous
/// slot in a cluster-wide rollback.
pub(crate) fn rebooting(p: &ClusterPlan) -> bool {
    matches!(p.phase, PlanPhase::Committing | PlanPhase::RollingBack)
        && p.mode == PlanMode::Platform
}

/// `/v1/shutdown/reboot/status` of a cluster of `total` nodes.
pub(crate) fn reboot_body(s: Option<&Snapshot>, total: u32) -> RebootStatus {
    let Some(s) = s.filter(|s| rebooting(&s.plan)) else {
        return RebootStatus {
            state: RebootState::Idle,
            rolling: false,
            upgrade_initiated: false,
            total_node_count: total,
            rebooted_node_count: 0,
            error_message: String::new(),
        };
    };
    let p = &s.plan;
    let state = match (&p.paused_error, p.paused) {
        (Some(_), _) => RebootState::PausedDueToError,
        (None, true) => RebootState::Paused,
        _ => RebootState::InProgress,
    };
    RebootStatus {
        state,
        rolling: p.rolling,
        upgrade_initiated: true,
        total_node_count: total,
        rebooted_node_count: s.rebooted(),
        error_message: p.paused_error.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
