//! The cluster's upgrade history and its events (qimg extensions): one
//! [`UpgradeRecord`] per plan generation, kept in the cluster's store (it
//! survives reboots and coordinator changes), served by `GET
//! /v1/qimg/upgrade/history` ([`UpgradeHistory`], `qq upgrade_history`), and an
//! [`Event`] per transition: a journal entry with a stable `MESSAGE_ID` per
//! [`EventKind`], and the same JSON posted to a webhook when one is set.

use serde::{Deserialize, Serialize};

use crate::types::{NodeStep, OnFailure, PhaseEta, PlanMode, PlanPhase};

/// The schema of [`UpgradeHistory`].
pub const HISTORY_SCHEMA: &str = "qimg.upgrade_history/1";
/// The schema of [`Event`] (the webhook's body).
pub const EVENT_SCHEMA: &str = "qimg.upgrade_event/1";
/// The schema of [`Preview`].
pub const PREVIEW_SCHEMA: &str = "qimg.upgrade_preview/1";

pub use crate::who::Started;

/// A plan phase and when the cluster entered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseAt {
    /// The phase.
    pub phase: PlanPhase,
    /// Unix ms.
    pub at_ms: u64,
}

/// A node's step and when the node reached it (its own clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepAt {
    /// The step.
    pub step: NodeStep,
    /// Unix ms.
    pub at_ms: u64,
}

/// One node's part in an upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: u32,
    /// Each step it reported, in order.
    pub steps: Vec<StepAt>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl NodeRecord {
    /// Its last step.
    pub fn outcome(&self) -> Option<NodeStep> {
        self.steps.last().map(|s| s.step)
    }
}

/// A pause of the reboots: by the operator, or on an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Unix ms.
    pub at_ms: u64,
    /// Why, when it was not the operator (a batch not back in time).
    #[serde(default)]
    pub error: Option<String>,
    /// When the reboots went on (`None`: still paused, or the upgrade ended).
    #[serde(default)]
    pub resumed_ms: Option<u64>,
    /// The rollout waited on its canaries (not the operator, not an error).
    #[serde(default)]
    pub canary: bool,
}

/// How an upgrade ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeResult {
    /// Every node runs the new release.
    Upgraded,
    /// The nodes that had committed went back (a node failed its commit, or
    /// the operator asked): the cluster runs the release it ran before.
    RolledBack,
    /// Ended without committing (a prepare failed, or the rollout stopped).
    Failed,
}

impl UpgradeResult {
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            UpgradeResult::Upgraded => "upgraded",
            UpgradeResult::RolledBack => "rolled_back",
            UpgradeResult::Failed => "failed",
        }
    }
}

/// One upgrade of the cluster (a plan generation), from its request to its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// The plan generation.
    pub generation: u64,
    /// Who asked, from where, when (`None` for a plan written before this was kept).
    #[serde(default)]
    pub started: Option<Started>,
    /// The upgrade file.
    pub image_path: String,
    /// The release the cluster ran (`None`: not known).
    #[serde(default)]
    pub from_version: Option<String>,
    /// The release it went to.
    pub to_version: String,
    /// Instant or platform.
    pub mode: PlanMode,
    /// Rolling reboots.
    pub rolling: bool,
    /// The reboot batches (node ids), once a rolling commit started.
    #[serde(default)]
    pub batches: Vec<Vec<u32>>,
    /// What a failed commit did.
    pub on_failure: OnFailure,
    /// Checks the operator overrode, by name.
    #[serde(default)]
    pub overrides: Vec<crate::assess::CheckName>,
    /// Each phase the cluster went through, in order.
    pub phases: Vec<PhaseAt>,
    /// Each node's steps.
    pub nodes: Vec<NodeRecord>,
    /// The pauses of the reboots.
    #[serde(default)]
    pub pauses: Vec<Pause>,
    /// How it ended (`None`: under way).
    #[serde(default)]
    pub result: Option<UpgradeResult>,
    /// Why it did not upgrade (names the node).
    #[serde(default)]
    pub reason: Option<String>,
    /// When it ended (Unix ms).
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// The cluster's downtime of an instant commit, ms.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// The bundle's size in bytes (what a prepare's rate is measured over).
    #[serde(default)]
    pub bundle_size: Option<u64>,
    /// Who finalized it, when (`None`: not finalized, or before this was kept).
    #[serde(default)]
    pub finalized: Option<Started>,
    /// Who rolled it back after it committed, when.
    #[serde(default)]
    pub rollback: Option<Started>,
}

impl UpgradeRecord {
    /// When the cluster entered `phase` (its first time).
    pub fn entered(&self, phase: PlanPhase) -> Option<u64> {
        self.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.at_ms)
    }

    /// How long the cluster spent from entering `phase` to entering `next`.
    pub fn between(&self, phase: PlanPhase, next: PlanPhase) -> Option<u64> {
        Some(self.entered(next)?.saturating_sub(self.entered(phase)?))
    }

    /// When it started: the request's time, else its first phase's.
    pub fn started_ms(&self) -> u64 {
        self.started
            .as_ref()
            .map(|s| s.at_ms)
            .or_else(|| self.phases.first().map(|p| p.at_ms))
            .unwrap_or(0)
    }

    /// How long it took (so far, at `now_ms`, while under way).
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        self.ended_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_ms())
    }
}

/// `GET /v1/qimg/upgrade/history`: the cluster's upgrades, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeHistory {
    /// [`HISTORY_SCHEMA`].
    pub schema: String,
    /// Newest first.
    pub upgrades: Vec<UpgradeRecord>,
}

/// `POST /v1/qimg/upgrade/preview` (`qq upgrade_cluster … --dry-run`): what a
/// prepare with the same body would do, and how long it is expected to take,
/// with nothing written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    /// [`PREVIEW_SCHEMA`].
    pub schema: String,
    /// The upgrade file.
    pub image_path: String,
    /// Instant or platform.
    pub mode: PlanMode,
    /// The release the cluster runs (`None`: not known).
    pub from_version: Option<String>,
    /// The release it would go to.
    pub to_version: String,
    /// Rolling reboots.
    pub rolling: bool,
    /// The nodes that reboot together, in order (the coordinator's node last);
    /// one batch of every node for a complete reboot, none for an instant upgrade.
    pub batches: Vec<Vec<u32>>,
    /// Each phase's expected time.
    pub phases: Vec<PhaseEta>,
    /// All of them, ms.
    pub total_ms: u64,
}

/// What happened. Each kind has a stable journal `MESSAGE_ID`
/// ([`EventKind::message_id`]: `journalctl MESSAGE_ID=…` finds every such event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An upgrade was asked for.
    Started,
    /// The cluster entered a phase.
    Phase,
    /// A node reached a step.
    NodeStep,
    /// The reboots were paused (by the operator, or on an error).
    Paused,
    /// The reboots went on.
    Resumed,
    /// The upgrade ended (`result`).
    Finished,
    /// The committed upgrade was finalized: no rollback any more.
    Finalized,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 7] = [
        EventKind::Started,
        EventKind::Phase,
        EventKind::NodeStep,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::Finished,
        EventKind::Finalized,
    ];

    /// Its name on the wire and in the journal's `QIMG_EVENT`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Phase => "phase",
            EventKind::NodeStep => "node_step",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Finished => "finished",
            EventKind::Finalized => "finalized",
        }
    }

    /// Its journal `MESSAGE_ID` (128 bits, as `systemd-id128 new` makes them;
    /// never changed once released).
    pub fn message_id(self) -> &'static str {
        match self {
            EventKind::Started => "25c450d975f7482f89a525b1887fe641",
            EventKind::Phase => "ef9c5458904545f4bae29c4e836551a3",
            EventKind::NodeStep => "89f357d4ce404c099b0718d1761f7ca6",
            EventKind::Paused => "1b8401d84a914636813af712cfe0b922",
            EventKind::Resumed => "13a0cc8a5f9e4425aff201dac392e425",
            EventKind::Finished => "9f216528d2994a93841cb349026591c2",
            EventKind::Finalized => "c3d87a0e5b2f4f6c9e41d7a6f0b8e312",
        }
    }
}

/// One transition of an upgrade: a journal entry, and the webhook's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// [`EVENT_SCHEMA`].
    pub schema: String,
    /// What happened.
    pub kind: EventKind,
    /// The plan generation.
    pub generation: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The release the cluster ran.
    pub from_version: Option<String>,
    /// The release it goes to.
    pub to_version: String,
    /// The phase entered ([`EventKind::Phase`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PlanPhase>,
    /// The node ([`EventKind::NodeStep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// Its step ([`EventKind::NodeStep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<NodeStep>,
    /// How it ended ([`EventKind::Finished`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<UpgradeResult>,
    /// Something went wrong: the journal's priority is a warning.
    pub warning: bool,
    /// One sentence for people.
    pub message: String,
}

/// An upgrade's kind in words: `instant`, `platform, rolling reboots`,
/// `platform, every node at once` (`rolling` counts for a platform upgrade only).
pub fn how(mode: PlanMode, rolling: bool) -> &'static str {
    match (mode, rolling) {
        (PlanMode::Instant, _) => "instant",
        (PlanMode::Platform, true) => "platform, rolling reboots",
        (PlanMode::Platform, false) => "platform, every node at once",
    }
}

/// A duration as people say it: `1 h 2 min 3 s`, `4 min 5 s`, `6.7 s`.
pub fn took(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min {} s", s / 3600, s / 60 % 60, s % 60),
    }
}

/// Unix ms as `YYYY-MM-DD hh:mm:ss` UTC (the proleptic Gregorian calendar,
/// from the days since 1970 as in Howard Hinnant's `civil_from_days`).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(took(6_700), "6.7 s");
        assert_eq!(took(245_000), "4 min 5 s");
        assert_eq!(took(3_723_000), "1 h 2 min 3 s");
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        // `date -u -d @1700000000`: Tue Nov 14 22:13:20 UTC 2023.
        assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20");
        // A leap day, and the end of a century year that is not a leap year.
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28 23:59:59");
    }

    #[test]
    fn message_ids_are_distinct_128_bit_ids() {
        let mut seen = std::collections::HashSet::new();
        for k in EventKind::ALL {
            let id = k.message_id();
            assert_eq!(id.len(), 32, "{k:?}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(seen.insert(id), "{k:?} repeats an id");
            // The name is the serde spelling.
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn a_record_reads_back_and_tells_its_times() {
        let r = UpgradeRecord {
            generation: 4,
            started: Some(Started {
                at_ms: 1_000,
                by: "user \"admin\"".into(),
                from: "127.0.0.1".into(),
            }),
            image_path: "/upgrade/x.qimg".into(),
            from_version: Some("1.0.0".into()),
            to_version: "2.0.0".into(),
            mode: PlanMode::Platform,
            rolling: true,
            batches: vec![vec![2], vec![1]],
            on_failure: OnFailure::Rollback,
            overrides: vec![],
            phases: vec![PhaseAt {
                phase: PlanPhase::Preparing,
                at_ms: 1_200,
            }],
            nodes: vec![NodeRecord {
                id: 1,
                steps: vec![StepAt {
                    step: NodeStep::Prepared,
                    at_ms: 2_000,
                }],
                error: None,
            }],
            pauses: vec![],
            result: Some(UpgradeResult::Upgraded),
            reason: None,
            ended_ms: Some(61_000),
            downtime_ms: None,
            bundle_size: Some(1 << 20),
            finalized: Some(Started {
                at_ms: 70_000,
                by: "user \"admin\"".into(),
                from: "127.0.0.1".into(),
            }),
            rollback: None,
        };
        let back: UpgradeRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.started_ms(), 1_000);
        assert_eq!(r.elapsed_ms(99_000), 60_000, "ended: its end, not now");
        assert_eq!(r.nodes[0].outcome(), Some(NodeStep::Prepared));
        let unknown = UpgradeRecord {
            started: None,
            ended_ms: None,
            ..r
        };
        assert_eq!(unknown.started_ms(), 1_200, "the first phase's time");
        assert_eq!(unknown.elapsed_ms(3_200), 2_000);
    }
}
