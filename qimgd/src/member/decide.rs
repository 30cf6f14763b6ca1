//! The member's decisions, pure: the plan, this node's report for it, whether a
//! job of this node runs, and what its engine says → what to do next. The loop
//! (`super`) loads those, asks [`member_action`], and acts; like the
//! coordinator's `next`, every case is table-tested (`super::tests`).

use qcluster::{ClusterPlan, NodeReport, NodeStep, PlanPhase};
use upgrade::CommitOutcome;
use upgrade::state::{CommitStep, NodeState, Stage};

/// What this node's engine says, as far as the member decides by it: read only
/// when [`needs_engine`] says the decision depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Its state could not be read (the next look tries again).
    Unreadable,
    /// A reboot was asked for, or a commit waits for the boot it asked for: the
    /// boot decides, and this boot starts nothing.
    AwaitingBoot,
    /// A prepare runs or was cut off (the engine's next operation undoes it).
    Preparing,
    /// Prepared; no commit began.
    Prepared,
    /// A commit was cut off (the agent restarted) before it asked for its reboot:
    /// an instant swap or a platform's set-next. Committing again finishes it.
    CommitCutOff,
    /// The node runs the new release.
    Committed,
    /// Nothing in progress; `last`: what the last commit came to, if it ended
    /// on this node's old release (rolled back or failed).
    Idle {
        /// The engine's own outcome (`CommitOutcome::of` its state).
        last: Option<CommitOutcome>,
    },
}

impl Engine {
    /// The view of an engine state (`reboot_pending`: the machine was asked to
    /// reboot and has not gone down yet).
    pub fn of(st: &NodeState, reboot_pending: bool) -> Engine {
        if reboot_pending {
            return Engine::AwaitingBoot;
        }
        match &st.stage {
            Stage::Prepared(_) => Engine::Prepared,
            Stage::Committing(_, CommitStep::Swap | CommitStep::SetNext) => Engine::CommitCutOff,
            Stage::Committing(..) => Engine::AwaitingBoot,
            Stage::Preparing(_) => Engine::Preparing,
            Stage::Committed(_) => Engine::Committed,
            Stage::Idle { .. } => Engine::Idle {
                last: CommitOutcome::of(st),
            },
        }
    }
}

/// What the member does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing now.
    Wait,
    /// Start preparing this plan's bundle; `again`: an earlier prepare of this
    /// plan was interrupted (the agent restarted mid-prepare).
    Prepare {
        /// Interrupted before.
        again: bool,
    },
    /// Report the running prepare's progress (a change only).
    Progress(u8),
    /// Start the commit; `again`: finish one a restart cut off.
    Commit {
        /// Cut off before.
        again: bool,
    },
    /// Roll the committed upgrade back; `again`: still on the new release after
    /// going back (cut off before the reboot, or the loader booted it again).
    Revert {
        /// Went back before.
        again: bool,
    },
    /// Give up what was prepared.
    Discard,
    /// Report the step a boot reached (timed when this node came up).
    Booted(NodeStep),
    /// Report this node failed the plan, with why.
    Fail(String),
}

/// Whether the decision depends on the engine: a commit or a rollback this node
/// reported and no job runs, so a boot (or a restart) decided how it ended.
pub fn needs_engine(plan: &ClusterPlan, own: Option<&NodeReport>, busy: bool) -> bool {
    let mine = own.map(|r| r.step);
    !busy
        && matches!(
            (plan.phase, mine),
            (
                PlanPhase::Committing | PlanPhase::RollingBack,
                Some(NodeStep::Committing)
            ) | (PlanPhase::RollingBack, Some(NodeStep::RollingBack))
        )
}

/// The member's next action for node `me`: `own` is its report *for this
/// plan's generation* (an older one is none), `busy` whether a job of this node
/// runs, `progress` the running job's percent, `engine` the engine's view when
/// [`needs_engine`] asked for it.
pub fn member_action(
    plan: &ClusterPlan,
    me: u32,
    own: Option<&NodeReport>,
    busy: bool,
    progress: u8,
    engine: Option<&Engine>,
) -> Action {
    let mine = own.map(|r| r.step);
    match (plan.phase, mine) {
        (PlanPhase::Preparing, None) if !busy => Action::Prepare { again: false },
        (PlanPhase::Preparing, Some(NodeStep::Preparing)) if busy => match own {
            // Only a change is written.
            Some(r) if r.progress != progress => Action::Progress(progress),
            _ => Action::Wait,
        },
        // Reported as preparing, and nothing runs: the agent restarted
        // mid-prepare. Preparing again first undoes the interrupted one.
        (PlanPhase::Preparing, Some(NodeStep::Preparing)) => Action::Prepare { again: true },
        (PlanPhase::Committing, Some(NodeStep::Prepared)) if !busy && plan.may_commit(me) => {
            Action::Commit { again: false }
        }
        (PlanPhase::Committing | PlanPhase::RollingBack, Some(NodeStep::Committing)) if !busy => {
            after_commit(plan.phase, engine)
        }
        (PlanPhase::RollingBack, Some(NodeStep::Committed)) if !busy && plan.may_commit(me) => {
            Action::Revert { again: false }
        }
        (PlanPhase::RollingBack, Some(NodeStep::RollingBack)) if !busy => match engine {
            // After the reboot back into the previous slot: the boot decided.
            Some(Engine::Idle { .. }) => Action::Booted(NodeStep::RolledBack),
            Some(Engine::Committed) => Action::Revert { again: true },
            _ => Action::Wait,
        },
        (PlanPhase::RollingBack, None | Some(NodeStep::Prepared)) if !busy => Action::Discard,
        (PlanPhase::Discarding, None | Some(NodeStep::Prepared | NodeStep::Preparing)) if !busy => {
            Action::Discard
        }
        _ => Action::Wait,
    }
}

/// A commit this node reported, no job running: after a platform commit's
/// reboot, what the boot decided; after a restart mid-commit, commit again (the
/// engine finishes it; a rollback then brings it back).
fn after_commit(phase: PlanPhase, engine: Option<&Engine>) -> Action {
    match engine {
        Some(Engine::Committed) => Action::Booted(NodeStep::Committed),
        Some(Engine::Idle { last }) => Action::Fail(match last {
            Some(CommitOutcome::RolledBack { reason } | CommitOutcome::Failed { reason }) => {
                reason.clone()
            }
            _ => "the commit ended without committing".into(),
        }),
        Some(Engine::Prepared) if phase == PlanPhase::RollingBack => Action::Discard,
        Some(Engine::Prepared | Engine::CommitCutOff) => Action::Commit { again: true },
        Some(Engine::AwaitingBoot | Engine::Preparing | Engine::Unreadable) | None => Action::Wait,
    }
}

/// The step an outcome reports, with why when it failed; `None` while the
/// machine reboots (the boot decides, and the loop reports it then).
pub type StepReport = Option<(NodeStep, Option<String>)>;

/// What a commit's outcome reports.
pub fn commit_report(o: &CommitOutcome) -> StepReport {
    match o {
        CommitOutcome::Committed { .. } => Some((NodeStep::Committed, None)),
        CommitOutcome::Rebooting { .. } => None,
        CommitOutcome::RolledBack { reason } | CommitOutcome::Failed { reason } => {
            Some((NodeStep::Failed, Some(reason.clone())))
        }
    }
}

/// What a rollback's outcome ([`upgrade::Agent::revert`]) reports (`None`
/// while the machine reboots into the previous slot).
pub fn revert_report(o: &CommitOutcome) -> StepReport {
    match o {
        CommitOutcome::RolledBack { .. } => Some((NodeStep::RolledBack, None)),
        CommitOutcome::Rebooting { .. } => None,
        CommitOutcome::Failed { reason } => Some((NodeStep::Failed, Some(reason.clone()))),
        // A rollback never commits; the new release still running is a failure.
        CommitOutcome::Committed { .. } => Some((
            NodeStep::Failed,
            Some("rolling back left the new release running".into()),
        )),
    }
}
