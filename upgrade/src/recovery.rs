//! What to do with a state left by a process that ended in the middle of an
//! operation: a pure function from the state (and whether the node rebooted since
//! the reboot it asked for) to an action. The [`crate::agent::Agent`] carries the
//! action out; the table is unit-tested case by case below.

use crate::state::{CommitStep, Plan, Stage};

/// The action that brings a state to rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The state is at rest.
    Nothing,
    /// An interrupted prepare: undo what `plan` says was written (nothing before
    /// the write step), then idle with `UPGRADE_ERROR_PREPARE_FAILED`.
    AbandonPrepare {
        /// The step it was interrupted in.
        step: &'static str,
        /// What to undo, when something was written.
        undo: Option<Plan>,
    },
    /// An interrupted instant swap: finish it (the new container runs healthy, or
    /// the old one is put back).
    FinishSwap(Plan),
    /// A platform commit interrupted before it asked for the reboot: make the new
    /// slot boot next again (idempotent), then reboot.
    SetNextAgain(Plan),
    /// The node rebooted since it asked to: run the post-boot decision.
    CheckBoot(Plan),
    /// A reboot was asked for and has not happened: the commit only waits (or, when
    /// an operator runs commit again, asks again).
    AwaitReboot,
}

/// The recovery for `stage`; `rebooted` says whether the boot id differs from the
/// one recorded with the reboot request (ignored when none was recorded).
pub fn recovery(stage: &Stage, rebooted: bool) -> Recovery {
    match stage {
        Stage::Idle { .. } | Stage::Prepared(_) | Stage::Committed(_) => Recovery::Nothing,
        Stage::Preparing(_) => Recovery::AbandonPrepare {
            step: stage.step_name().expect("a prepare always has a step"),
            // Every step after verify has written something; its plan says how to undo.
            undo: stage.plan().cloned(),
        },
        Stage::Committing(p, CommitStep::Swap) => Recovery::FinishSwap(p.clone()),
        Stage::Committing(p, CommitStep::SetNext) => Recovery::SetNextAgain(p.clone()),
        Stage::Committing(p, CommitStep::Reboot { .. } | CommitStep::Fallback { .. }) => {
            if rebooted {
                Recovery::CheckBoot(p.clone())
            } else {
                Recovery::AwaitReboot
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BootId, Mode, PrepareStep, Release};
    use bootctl::layout::Slot;

    fn plan(mode: Mode) -> Plan {
        let rel = |v: &str, slot| Release {
            version: v.parse().unwrap(),
            platform_version: "7.0".parse().unwrap(),
            slot,
        };
        Plan {
            mode,
            from: rel("7.0", Slot::A),
            to: rel(
                "7.1",
                if mode == Mode::Platform {
                    Slot::B
                } else {
                    Slot::A
                },
            ),
        }
    }

    fn check(stage: Stage, rebooted: bool, want: Recovery) {
        assert_eq!(
            recovery(&stage, rebooted),
            want,
            "{stage:?} rebooted={rebooted}"
        );
    }

    #[test]
    fn states_at_rest_need_nothing() {
        for rebooted in [false, true] {
            check(Stage::Idle { last: None }, rebooted, Recovery::Nothing);
            check(
                Stage::Idle {
                    last: Some(plan(Mode::Platform)),
                },
                rebooted,
                Recovery::Nothing,
            );
            check(
                Stage::Prepared(plan(Mode::Platform)),
                rebooted,
                Recovery::Nothing,
            );
            check(
                Stage::Committed(plan(Mode::Instant)),
                rebooted,
                Recovery::Nothing,
            );
        }
    }

    #[test]
    fn an_interrupted_prepare_is_undone_from_the_first_write_on() {
        let p = plan(Mode::Platform);
        check(
            Stage::Preparing(PrepareStep::Verify),
            false,
            Recovery::AbandonPrepare {
                step: "verify",
                undo: None,
            },
        );
        for (s, name) in [
            (PrepareStep::Write(p.clone()), "write"),
            (PrepareStep::StageEntry(p.clone()), "stage-entry"),
            (PrepareStep::Firmware(p.clone()), "firmware"),
        ] {
            // A reboot in the middle of a prepare changes nothing: it is undone.
            for rebooted in [false, true] {
                check(
                    Stage::Preparing(s.clone()),
                    rebooted,
                    Recovery::AbandonPrepare {
                        step: name,
                        undo: Some(p.clone()),
                    },
                );
            }
        }
    }

    #[test]
    fn an_interrupted_commit_goes_forward() {
        let i = plan(Mode::Instant);
        check(
            Stage::Committing(i.clone(), CommitStep::Swap),
            false,
            Recovery::FinishSwap(i),
        );
        let p = plan(Mode::Platform);
        check(
            Stage::Committing(p.clone(), CommitStep::SetNext),
            false,
            Recovery::SetNextAgain(p.clone()),
        );
        let reboot = CommitStep::Reboot {
            boot_id: BootId("b1".into()),
            kept: None,
        };
        check(
            Stage::Committing(p.clone(), reboot.clone()),
            false,
            Recovery::AwaitReboot,
        );
        check(
            Stage::Committing(p.clone(), reboot),
            true,
            Recovery::CheckBoot(p.clone()),
        );
        let fallback = CommitStep::Fallback {
            boot_id: BootId("b2".into()),
            reason: "unhealthy".into(),
        };
        check(
            Stage::Committing(p.clone(), fallback.clone()),
            false,
            Recovery::AwaitReboot,
        );
        check(
            Stage::Committing(p.clone(), fallback),
            true,
            Recovery::CheckBoot(p),
        );
    }
}
