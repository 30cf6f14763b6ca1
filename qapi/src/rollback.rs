//! An upgrade's rollback on demand, and its finalize (qimg extensions, as
//! OneFS's `isi upgrade rollback` and `commit`): once every node committed, the
//! upgrade stays *finalizable*: every node keeps the release it ran before (a
//! platform upgrade's previous slot, an instant upgrade's previous container),
//! and `POST /v1/qimg/upgrade/rollback` ([`RollbackRequest`]) returns the whole
//! cluster to it, batch by batch under the data-safety gate or all at once.
//! `POST /v1/qimg/upgrade/finalize` (or the prepare's
//! `auto_finalize_after_secs`) ends that: the previous release may be
//! overwritten, and only then may a new upgrade be prepared.

use serde::{Deserialize, Serialize};

use crate::who::Started;

/// `POST /v1/qimg/upgrade/rollback`: how the nodes go back (each field absent:
/// as the upgrade committed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A few nodes at a time, each batch held by the data-safety gate (a
    /// platform upgrade); `false`: every node at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_rolling_reboot: Option<bool>,
    /// Nodes per batch of a rolling rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_nodes_to_reboot: Option<u32>,
}

/// Where a committed upgrade stands: may it still be rolled back?
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finality {
    /// Every node committed and the upgrade is not finalized: a rollback on
    /// demand is possible, and a new prepare is refused.
    pub finalizable: bool,
    /// Who finalized it, from where, when (`by` is `auto_finalize_after` when
    /// the upgrade's own time did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized: Option<Started>,
    /// When it finalizes by itself (Unix ms; `None`: only when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_finalize_at_ms: Option<u64>,
    /// Who asked for the rollback, from where, when (`None`: nobody did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Started>,
}

/// Who finalized an upgrade when its `auto_finalize_after_secs` ran out.
pub const AUTO_FINALIZE: &str = "auto_finalize_after";

/// Why a new prepare is refused while the last upgrade is finalizable (409,
/// `upgrade_wrong_state_error`).
pub fn not_finalized(to_version: &str, generation: u64) -> String {
    format!(
        "the upgrade to {to_version} (plan {generation}) is not finalized: finalize it \
         (`qq upgrade_cluster finalize`, POST /v1/qimg/upgrade/finalize) or roll it back \
         (`qq upgrade_cluster rollback`, POST /v1/qimg/upgrade/rollback) before preparing another"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let r = RollbackRequest {
            do_rolling_reboot: Some(false),
            num_nodes_to_reboot: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"do_rolling_reboot":false}"#);
        assert_eq!(serde_json::from_str::<RollbackRequest>(&text).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<RollbackRequest>("{}").unwrap(),
            RollbackRequest::default()
        );
        assert!(serde_json::from_str::<RollbackRequest>(r#"{"rolling":true}"#).is_err());
        let f = Finality {
            finalizable: false,
            finalized: Some(Started {
                at_ms: 5,
                by: AUTO_FINALIZE.into(),
                from: "node 1".into(),
            }),
            auto_finalize_at_ms: Some(5),
            rollback: None,
        };
        let back: Finality = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(not_finalized("2.0.0", 7).contains("finalize"));
    }
}
