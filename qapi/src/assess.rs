//! The assessment before an upgrade (`POST /v1/qimg/upgrade/assess`, `qq
//! upgrade_assess`, the Web UI's dialog; a qimg extension): named checks, each
//! `pass`, `warn` or `fail`, on every node and of the cluster, with a sentence.
//! A prepare runs the same checks and refuses on a `fail` unless the request
//! overrides that check by name (`overrides`), which the upgrade's record keeps.

use serde::{Deserialize, Serialize};

use crate::status::PlanMode;

/// The schema of [`Assessment`].
pub const ASSESSMENT_SCHEMA: &str = "qimg.upgrade_assessment/1";

/// A check, by the name an override gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    /// The bundle's signature, and (assessment) every payload's digest, as the
    /// node reads its copy.
    Bundle,
    /// Product, target, model and version rules (upgrade path, downgrade).
    ReleaseRules,
    /// The settle period the bundle asks for since the last upgrade.
    SettlePeriod,
    /// Room to stage the container.
    FreeSpace,
    /// The inactive slot reads and holds the platform image.
    InactiveSlot,
    /// The firmware plan, and the firmware's compatibility with the release a
    /// fallback would boot.
    Firmware,
    /// Every node of the cluster online (registered).
    NodesOnline,
    /// etcd keeps a quorum while the largest batch is down.
    EtcdQuorum,
    /// The restriper idle and no data at risk.
    DataProtection,
    /// The nodes' clocks agree.
    ClockSkew,
    /// Every node runs the same release.
    MixedReleases,
}

impl CheckName {
    /// Every check, in the order they are listed.
    pub const ALL: [CheckName; 11] = [
        CheckName::Bundle,
        CheckName::ReleaseRules,
        CheckName::SettlePeriod,
        CheckName::FreeSpace,
        CheckName::InactiveSlot,
        CheckName::Firmware,
        CheckName::NodesOnline,
        CheckName::EtcdQuorum,
        CheckName::DataProtection,
        CheckName::ClockSkew,
        CheckName::MixedReleases,
    ];

    /// Its name on the wire and in `--override`.
    pub fn name(self) -> &'static str {
        match self {
            CheckName::Bundle => "bundle",
            CheckName::ReleaseRules => "release_rules",
            CheckName::SettlePeriod => "settle_period",
            CheckName::FreeSpace => "free_space",
            CheckName::InactiveSlot => "inactive_slot",
            CheckName::Firmware => "firmware",
            CheckName::NodesOnline => "nodes_online",
            CheckName::EtcdQuorum => "etcd_quorum",
            CheckName::DataProtection => "data_protection",
            CheckName::ClockSkew => "clock_skew",
            CheckName::MixedReleases => "mixed_releases",
        }
    }

    /// The check named `s`.
    pub fn parse(s: &str) -> Result<CheckName, crate::Error> {
        CheckName::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = CheckName::ALL.iter().map(|c| c.name()).collect();
                crate::Error::UnknownCheck {
                    name: s.into(),
                    known: all.join(", "),
                }
            })
    }
}

/// A check's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Worth a look; does not stop a prepare.
    Warn,
    /// A prepare refuses unless the check is overridden by name.
    Fail,
}

/// One check on one node (or of the cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Which.
    pub name: CheckName,
    /// The node it ran on (`None`: the cluster's).
    pub node: Option<u32>,
    /// Its answer.
    pub result: Verdict,
    /// One sentence.
    pub message: String,
}

impl Check {
    /// A check's answer on `node`.
    pub fn new(
        name: CheckName,
        node: Option<u32>,
        result: Verdict,
        message: impl Into<String>,
    ) -> Check {
        Check {
            name,
            node,
            result,
            message: message.into(),
        }
    }
}

/// `POST /v1/qimg/upgrade/assess`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssessRequest {
    /// Path of the upgrade file in the cluster's namespace.
    pub image_path: String,
    /// Rolling reboots of this many nodes at a time (`null`: every node at
    /// once), for the quorum check.
    #[serde(default)]
    pub num_nodes_to_reboot: Option<u32>,
}

/// One node's own checks (`POST /v1/qimg/peer/upgrade/assess`, between the
/// cluster's nodes): what the bundle is as it reads it, and its clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAssessment {
    /// Its time when it answered (Unix ms), for the clock check.
    pub now_ms: u64,
    /// Instant or platform on this node (`None`: it could not read the bundle).
    pub mode: Option<PlanMode>,
    /// The release the bundle holds (`None`: not read).
    pub to_version: Option<String>,
    /// Its checks.
    pub checks: Vec<Check>,
}

/// What every node and the cluster say of an upgrade before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// [`ASSESSMENT_SCHEMA`].
    pub schema: String,
    /// The upgrade file.
    pub image_path: String,
    /// Instant or platform (`None`: the bundle could not be read here).
    pub mode: Option<PlanMode>,
    /// The release it goes to (`None`: the bundle could not be read here).
    pub to_version: Option<String>,
    /// Every check, node by node, then the cluster's.
    pub checks: Vec<Check>,
    /// The worst answer.
    pub result: Verdict,
}

impl Assessment {
    /// The checks that fail and are not in `overrides`, one of each name.
    pub fn refusals(&self, overrides: &[CheckName]) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.result == Verdict::Fail && !overrides.contains(&c.name))
            .collect()
    }
}

/// The worst of `checks` (pass when there are none).
pub fn worst(checks: &[Check]) -> Verdict {
    checks
        .iter()
        .map(|c| c.result)
        .max()
        .unwrap_or(Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_read_back_and_an_unknown_one_lists_them() {
        for c in CheckName::ALL {
            assert_eq!(CheckName::parse(c.name()).unwrap(), c);
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
        }
        let e = CheckName::parse("space").unwrap_err().to_string();
        assert!(
            e.contains("free_space") && e.contains("mixed_releases"),
            "{e}"
        );
    }

    #[test]
    fn the_worst_answer_and_what_refuses() {
        let a = Assessment {
            schema: ASSESSMENT_SCHEMA.into(),
            image_path: "/x".into(),
            mode: Some(PlanMode::Platform),
            to_version: Some("2.0.0".into()),
            checks: vec![
                Check::new(CheckName::Bundle, Some(1), Verdict::Pass, "ok"),
                Check::new(CheckName::FreeSpace, Some(2), Verdict::Fail, "full"),
                Check::new(CheckName::ClockSkew, None, Verdict::Warn, "2 s"),
            ],
            result: Verdict::Fail,
        };
        assert_eq!(worst(&a.checks), Verdict::Fail);
        assert_eq!(worst(&a.checks[..1]), Verdict::Pass);
        assert_eq!(worst(&[]), Verdict::Pass);
        assert_eq!(a.refusals(&[]).len(), 1);
        assert!(a.refusals(&[CheckName::FreeSpace]).is_empty());
        let back: Assessment = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}
