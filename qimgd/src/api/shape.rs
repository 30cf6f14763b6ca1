//! The REST bodies of [`qapi::types`] shaped from the engine's typed state (pure
//! functions, unit-tested case by case).

use qapi::types::{UpgradeSettings, UpgradeState, UpgradeStatus, UpgradeType};
use upgrade::state::{CommitStep, NodeState, Plan, Stage};
use upgrade::wire::Mode;

/// The REST spelling of an upgrade mode.
pub fn upgrade_type(m: Mode) -> UpgradeType {
    UpgradeType::from_platform(m == Mode::Platform)
}

/// The upgrade state of an engine state. Qumulo's lifecycle: a finished upgrade
/// (committed, its reboot or container restart done) is `IDLE` again, with its
/// settings kept; Qumulo's client reads that as "committed" after a commit it
/// followed, and as "no upgrade in progress" afterwards. The engine's record
/// keeps it as `UPGRADE_COMMITTED` (`/v1/upgrade/status`).
pub fn upgrade_state(s: &Stage) -> UpgradeState {
    match s {
        Stage::Idle { .. } => UpgradeState::Idle,
        Stage::Preparing(_) => UpgradeState::Preparing,
        Stage::Prepared(_) => UpgradeState::Prepared,
        Stage::Committing(_, CommitStep::Reboot { .. } | CommitStep::Fallback { .. }) => {
            UpgradeState::Rebooting
        }
        Stage::Committing(..) => UpgradeState::Committing,
        Stage::Committed(_) => UpgradeState::Idle,
    }
}

/// `/v3/upgrade/status` of `st`. `verified` is what the running prepare verified
/// before the engine recorded a plan; `percent` the prepare's progress.
pub fn upgrade_status(st: &NodeState, verified: Option<&Plan>, percent: u8) -> UpgradeStatus {
    let state = upgrade_state(&st.stage);
    let plan = st
        .stage
        .plan()
        .or(verified.filter(|_| state == UpgradeState::Preparing));
    let known = !st.settings.install_path.is_empty();
    let settings = known.then(|| UpgradeSettings {
        install_path: st.settings.install_path.clone(),
        target_version: plan.map(|p| p.to.version.to_string()).unwrap_or_default(),
        upgrade_type: plan.map(|p| upgrade_type(p.mode)),
        auto_commit: st.settings.auto_commit,
        do_rolling_reboot: st.settings.rolling,
        num_nodes_to_reboot: st.settings.nodes_per_batch,
    });
    let progress = match state {
        UpgradeState::Idle if !known || st.failure.is_some() => None,
        UpgradeState::Idle => Some(100),
        UpgradeState::Preparing => Some(percent.min(99)),
        _ => Some(100),
    };
    UpgradeStatus {
        state,
        progress,
        settings,
        error_info: st.failure.as_ref().map(|f| f.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootctl::layout::Slot;
    use upgrade::state::{Failure, PrepareStep, Release, Settings};
    use upgrade::wire::ErrorState;

    fn plan(mode: Mode) -> Plan {
        let r = |v: &str, s| Release {
            version: v.parse().unwrap(),
            platform_version: "1.0".parse().unwrap(),
            slot: s,
        };
        Plan {
            mode,
            from: r("7.0.0", Slot::A),
            to: r("7.1.0", Slot::B),
        }
    }

    fn with(stage: Stage) -> NodeState {
        NodeState {
            stage,
            settings: Settings {
                install_path: "/up/x.qimg".into(),
                ..Settings::default()
            },
            ..NodeState::default()
        }
    }

    #[test]
    fn states_and_settings_as_qumulo_spells_them() {
        let idle = upgrade_status(&NodeState::default(), None, 0);
        let j = serde_json::to_value(&idle).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"state":"UPGRADE_STATE_IDLE","progress":null,"settings":null,"error_info":null})
        );
        let p = plan(Mode::Platform);
        let s = upgrade_status(&with(Stage::Preparing(PrepareStep::Verify)), Some(&p), 42);
        assert_eq!(s.state, UpgradeState::Preparing);
        assert_eq!(s.progress, Some(42));
        let set = s.settings.unwrap();
        assert_eq!(set.target_version, "7.1.0");
        assert_eq!(set.upgrade_type, Some(UpgradeType::SoftwareAndPlatform));
        let j = serde_json::to_value(upgrade_status(
            &with(Stage::Prepared(plan(Mode::Instant))),
            None,
            0,
        ))
        .unwrap();
        assert_eq!(j["state"], "UPGRADE_STATE_PREPARED");
        assert_eq!(j["progress"], 100);
        assert_eq!(j["settings"]["upgrade_type"], "SOFTWARE_ONLY");
        assert_eq!(j["settings"]["install_path"], "/up/x.qimg");
        let reboot = Stage::Committing(
            p.clone(),
            CommitStep::Reboot {
                boot_id: upgrade::state::BootId("b".into()),
                kept: None,
            },
        );
        assert_eq!(
            upgrade_status(&with(reboot), None, 0).state,
            UpgradeState::Rebooting
        );
        let swap = Stage::Committing(p.clone(), CommitStep::Swap);
        assert_eq!(
            upgrade_status(&with(swap), None, 0).state,
            UpgradeState::Committing
        );
    }

    #[test]
    fn a_finished_upgrade_is_idle_again_with_its_settings() {
        let s = upgrade_status(&with(Stage::Committed(plan(Mode::Platform))), None, 0);
        assert_eq!(s.state, UpgradeState::Idle);
        assert_eq!(s.error_info, None);
        let set = s.settings.unwrap();
        assert_eq!(set.target_version, "7.1.0");
        assert_eq!(set.upgrade_type, Some(UpgradeType::SoftwareAndPlatform));
    }

    #[test]
    fn a_failure_is_error_info_with_settings() {
        let mut st = with(Stage::Idle {
            last: Some(plan(Mode::Platform)),
        });
        st.failure = Some(Failure {
            kind: ErrorState::RolledBack,
            message: "slot b: health check failed".into(),
        });
        let s = upgrade_status(&st, None, 0);
        assert_eq!(s.state, UpgradeState::Idle);
        assert_eq!(s.error_info.as_deref(), Some("slot b: health check failed"));
        assert_eq!(s.settings.unwrap().target_version, "7.1.0");
        assert_eq!(s.progress, None);
    }
}
