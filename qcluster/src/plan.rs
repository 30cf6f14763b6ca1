//! The cluster's upgrade plan and each node's report, as etcd holds them. The
//! plan is written with compare-and-swap (its `generation` only grows); a node
//! acts only on the current generation and reports with it, so a command or a
//! report of an older plan is never mistaken for the current one.

pub use qapi::types::{NodeStep, OnFailure, PlanMode, PlanPhase};
use serde::{Deserialize, Serialize};

/// The cluster's upgrade. Unknown fields are ignored, as in [`NodeReport`]: an
/// agent of the older release reads the plan a newer one wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// Grows by one with every new plan.
    pub generation: u64,
    /// The upgrade file, as the operator named it (a cluster path).
    pub image_path: String,
    /// The release being installed.
    pub target_version: qimg::Version,
    /// Instant or platform.
    pub mode: PlanMode,
    /// Commit when every node prepared.
    pub auto_commit: bool,
    /// Rolling reboots.
    pub rolling: bool,
    /// Nodes per batch.
    pub nodes_per_batch: Option<u32>,
    /// Where it is.
    pub phase: PlanPhase,
    /// Why it failed (names the node).
    pub error: Option<String>,
    /// The cluster's downtime of an instant commit (the longest node's).
    pub downtime_ms: Option<u64>,
    /// The reboot batches of a rolling commit (node ids), set when it starts.
    #[serde(default)]
    pub batches: Vec<Vec<u32>>,
    /// The batch rebooting now.
    #[serde(default)]
    pub batch: usize,
    /// When the current batch started (Unix ms), for its time limit.
    #[serde(default)]
    pub batch_started_ms: u64,
    /// Until when the data-safety gate (the restriper) holds the next batch back
    /// (Unix ms); 0 while the batch reboots.
    #[serde(default)]
    pub gate_until_ms: u64,
    /// The operator paused the reboots (`POST /v1/shutdown/reboot/pause`).
    #[serde(default)]
    pub paused: bool,
    /// The reboots stopped on an error (a node not back within the limit), with why.
    #[serde(default)]
    pub paused_error: Option<String>,
    /// Why the data-safety gate holds the next batch back: the restriper
    /// probe's last answer (its state, or why it could not be asked); `None`
    /// while no probed gate holds. Written when it changes.
    #[serde(default)]
    pub gate_why: Option<String>,
    /// What happens when a node fails its commit.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The release the node that accepted the request ran, if known (written
    /// as `""` when not, as before this field was typed).
    #[serde(default, with = "version_or_empty")]
    pub from_version: Option<qimg::Version>,
    /// The bundle every node must prepare: a node whose file under
    /// `image_path` is another bundle refuses, naming both (`None` in a plan
    /// written before bundles were pinned).
    #[serde(default)]
    pub bundle: Option<qimg::BundlePin>,
    /// Who asked for it, from where, when (`None` in a plan written before
    /// this was kept): the history's first line.
    #[serde(default)]
    pub started: Option<qapi::history::Started>,
    /// The assessment's checks the request overrode (their failures did not
    /// stop it).
    #[serde(default)]
    pub overrides: Vec<qapi::assess::CheckName>,
    /// A rolling commit's canaries: the first batch, this many nodes (never
    /// the coordinator's), after which the rollout waits (`None`: no canary).
    #[serde(default)]
    pub canary: Option<u32>,
    /// How long the rollout waits on the canaries before it goes on by itself
    /// (0: until the operator resumes it).
    #[serde(default)]
    pub soak_ms: u64,
    /// Until when the canaries soak (Unix ms; 0: they do not, or not yet).
    #[serde(default)]
    pub soak_until_ms: u64,
    /// The rollout waits on its canaries (a pause that is not an error).
    #[serde(default)]
    pub soaking: bool,
    /// When every node had committed (Unix ms; 0: not yet).
    #[serde(default)]
    pub committed_ms: u64,
    /// How long after `committed_ms` the upgrade finalizes by itself (`None`:
    /// only when asked; `Some(0)`: at once).
    #[serde(default)]
    pub auto_finalize_ms: Option<u64>,
    /// Who finalized it (the previous release may then be overwritten: no
    /// rollback any more, a new prepare may start).
    #[serde(default)]
    pub finalized: Option<qapi::history::Started>,
    /// Who rolled the committed upgrade back (the phase is then `RollingBack`,
    /// then `RolledBack`); `None`: nobody asked (a rollback after a node's
    /// failure is the plan's own).
    #[serde(default)]
    pub rollback: Option<qapi::history::Started>,
}

impl ClusterPlan {
    /// A new plan, preparing, with nothing asked beyond what it installs.
    pub fn new(
        generation: u64,
        image_path: &str,
        target_version: qimg::Version,
        mode: PlanMode,
    ) -> Self {
        ClusterPlan {
            generation,
            image_path: image_path.into(),
            target_version,
            mode,
            auto_commit: false,
            rolling: false,
            nodes_per_batch: None,
            phase: PlanPhase::Preparing,
            error: None,
            downtime_ms: None,
            batches: vec![],
            batch: 0,
            batch_started_ms: 0,
            gate_until_ms: 0,
            paused: false,
            paused_error: None,
            gate_why: None,
            on_failure: OnFailure::Rollback,
            from_version: None,
            bundle: None,
            started: None,
            overrides: vec![],
            canary: None,
            soak_ms: 0,
            soak_until_ms: 0,
            soaking: false,
            committed_ms: 0,
            auto_finalize_ms: None,
            finalized: None,
            rollback: None,
        }
    }

    /// Every node committed and nobody finalized it: it may be rolled back,
    /// and no new upgrade may be prepared.
    pub fn finalizable(&self) -> bool {
        self.phase == PlanPhase::Committed && self.finalized.is_none()
    }

    /// When it finalizes by itself (Unix ms), if it will.
    pub fn auto_finalize_at_ms(&self) -> Option<u64> {
        let after = self.auto_finalize_ms?;
        (self.finalizable() && self.committed_ms != 0)
            .then(|| self.committed_ms.saturating_add(after))
    }

    /// Sends the nodes that committed back (a node failed its commit, or the
    /// operator asked): `batches` in order (empty: every node at once), from
    /// `now_ms`, with the forward rollout's batch, gate, pauses and soak
    /// cleared — the one way a plan enters `RollingBack`.
    pub fn roll_back(&mut self, batches: Vec<Vec<u32>>, now_ms: u64) {
        self.phase = PlanPhase::RollingBack;
        self.batches = batches;
        self.batch = 0;
        self.batch_started_ms = now_ms;
        self.gate_until_ms = 0;
        self.gate_why = None;
        self.paused = false;
        self.paused_error = None;
        self.soaking = false;
        self.soak_until_ms = 0;
    }

    /// Why the nodes go back: the operator's request, or the node that failed.
    pub fn rollback_reason(&self) -> String {
        match (&self.rollback, &self.error) {
            (Some(s), _) => format!("rolled back on request by {} from {}", s.by, s.from),
            (None, Some(e)) => e.clone(),
            (None, None) => "another node failed its commit".into(),
        }
    }

    /// What the API says of its rollback window.
    pub fn finality(&self) -> qapi::rollback::Finality {
        qapi::rollback::Finality {
            finalizable: self.finalizable(),
            finalized: self.finalized.clone(),
            auto_finalize_at_ms: self.auto_finalize_at_ms(),
            rollback: self.rollback.clone(),
        }
    }

    /// True when node `id` may commit now: every node for an instant or complete
    /// commit; in a rolling one, the nodes of the current batch.
    pub fn may_commit(&self, id: u32) -> bool {
        if !self.in_batches() {
            return true;
        }
        self.batches
            .get(self.batch)
            .is_some_and(|b| b.contains(&id))
    }

    /// True for a rolling platform plan: its nodes reboot batch by batch.
    pub fn in_batches(&self) -> bool {
        self.rolling && self.mode == PlanMode::Platform
    }

    /// True while a data-safety gate holds the next batch back: from when the
    /// batch is back until the next batch starts, or, for the simulated
    /// restriper (`timed`), until `gate_until_ms`.
    pub fn gating(&self, now_ms: u64, timed: bool) -> bool {
        matches!(self.phase, PlanPhase::Committing | PlanPhase::RollingBack)
            && self.gate_until_ms != 0
            && (!timed || self.gate_until_ms > now_ms)
    }
}

impl ClusterPlan {
    /// True when node `id` (whose report for this plan says `step`) is about to
    /// reboot or is rebooting for this plan: its batch of a platform commit, or
    /// of the rollback of one. Such a node does not coordinate (it steps down, and
    /// another node finishes the rollout).
    pub fn reboots_ahead(&self, id: u32, step: Option<NodeStep>) -> bool {
        if self.mode != PlanMode::Platform || !self.may_commit(id) {
            return false;
        }
        match self.phase {
            PlanPhase::Committing => {
                matches!(step, None | Some(NodeStep::Prepared | NodeStep::Committing))
            }
            PlanPhase::RollingBack => {
                matches!(step, Some(NodeStep::Committed | NodeStep::RollingBack))
            }
            _ => false,
        }
    }
}

/// An optional version as the plan has always spelled it: `""` for none.
mod version_or_empty {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<qimg::Version>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<qimg::Version>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Now, in Unix milliseconds (the plan's times).
pub use qutil::now_ms;

/// The batches of a rolling reboot: `k` nodes at a time (at least 1), never more
/// than a minority of the etcd voters in one batch, the coordinator's node in the
/// last batch.
pub fn batches(nodes: &[u32], voters: &[u32], coordinator: Option<u32>, k: usize) -> Vec<Vec<u32>> {
    let k = k.max(1);
    // A batch may take down at most this many voters and keep a quorum.
    let max_voters = voters.len().saturating_sub(1) / 2;
    let mut order: Vec<u32> = nodes
        .iter()
        .copied()
        .filter(|n| Some(*n) != coordinator)
        .collect();
    if let Some(c) = coordinator.filter(|c| nodes.contains(c)) {
        order.push(c);
    }
    let mut out: Vec<Vec<u32>> = vec![];
    let mut pending: Vec<u32> = order;
    while !pending.is_empty() {
        let mut batch = vec![];
        let mut v = 0;
        let mut rest = vec![];
        for n in pending {
            let is_voter = voters.contains(&n);
            let is_coordinator = Some(n) == coordinator;
            // The coordinator goes alone at the end unless it fits the last batch.
            let fits = batch.len() < k && (!is_voter || v < max_voters.max(1));
            let alone_last = is_coordinator && !rest.is_empty();
            if fits && !alone_last {
                v += usize::from(is_voter);
                batch.push(n);
            } else {
                rest.push(n);
            }
        }
        out.push(batch);
        pending = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_typed_and_read_as_older_agents_wrote_them() {
        // A plan as an agent before typed versions wrote it: no from_version
        // known, spelled "".
        let old = r#"{"generation":3,"image_path":"/x","target_version":"7.1","mode":"platform",
            "auto_commit":false,"rolling":false,"nodes_per_batch":null,"phase":"preparing",
            "error":null,"downtime_ms":null,"from_version":""}"#;
        let p: ClusterPlan = serde_json::from_str(old).unwrap();
        assert_eq!(p.target_version, "7.1.0".parse::<qimg::Version>().unwrap());
        assert_eq!(p.from_version, None);
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(r#""from_version":"""#), "{text}");
        let known = ClusterPlan {
            from_version: Some("7.0.2".parse().unwrap()),
            ..p
        };
        let back: ClusterPlan =
            serde_json::from_str(&serde_json::to_string(&known).unwrap()).unwrap();
        assert_eq!(back, known);
        // Not a version: refused with the field named by serde.
        let bad = old.replace(r#""target_version":"7.1""#, r#""target_version":"seven""#);
        assert!(serde_json::from_str::<ClusterPlan>(&bad).is_err());
    }

    #[test]
    fn a_node_reboots_ahead_only_in_its_batch_of_a_platform_commit_or_rollback() {
        let mut p = ClusterPlan {
            rolling: true,
            phase: PlanPhase::Committing,
            batches: vec![vec![2], vec![1]],
            ..ClusterPlan::new(1, "/x", "7.1.0".parse().unwrap(), PlanMode::Platform)
        };
        assert!(p.reboots_ahead(2, Some(NodeStep::Prepared)));
        assert!(p.reboots_ahead(2, Some(NodeStep::Committing)));
        assert!(!p.reboots_ahead(2, Some(NodeStep::Committed)), "done");
        assert!(
            !p.reboots_ahead(1, Some(NodeStep::Prepared)),
            "not its batch"
        );
        p.phase = PlanPhase::RollingBack;
        assert!(p.reboots_ahead(2, Some(NodeStep::Committed)));
        assert!(!p.reboots_ahead(2, Some(NodeStep::RolledBack)));
        p.phase = PlanPhase::Committing;
        p.mode = PlanMode::Instant;
        assert!(!p.reboots_ahead(2, Some(NodeStep::Prepared)), "no reboot");
    }

    #[test]
    fn batches_keep_quorum_and_put_the_coordinator_last() {
        let nodes = [1, 2, 3, 4, 5];
        let voters = [1, 2, 3];
        assert_eq!(
            batches(&nodes, &voters, Some(1), 1),
            vec![vec![2], vec![3], vec![4], vec![5], vec![1]]
        );
        // Two at a time, but never two of the three voters together.
        let b = batches(&nodes, &voters, Some(2), 2);
        assert_eq!(b.concat().len(), 5);
        assert_eq!(b.last().unwrap(), &vec![2]);
        for batch in &b {
            assert!(batch.len() <= 2);
            assert!(
                batch.iter().filter(|n| voters.contains(n)).count() <= 1,
                "{b:?}"
            );
        }
        assert_eq!(b, vec![vec![1, 4], vec![3, 5], vec![2]]);
        // No coordinator known: plain order.
        assert_eq!(batches(&[1, 2], &[1, 2], None, 5), vec![vec![1], vec![2]]);
    }
}

/// A node's report for a plan generation. Unknown fields are ignored (not
/// refused): during a rolling upgrade of the agent itself, a coordinator of the
/// older release reads the reports of nodes already on the newer one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The plan generation this is about.
    pub generation: u64,
    /// What the node did.
    pub step: NodeStep,
    /// The prepare's progress, 0–100.
    pub progress: u8,
    /// Why it failed.
    pub error: Option<String>,
    /// Its downtime of an instant commit.
    pub downtime_ms: Option<u64>,
    /// When the node reached `step` (Unix ms, its own clock; 0: not said). A
    /// rebooted node's restriping starts when it is back, not when the
    /// coordinator reads that it is.
    #[serde(default)]
    pub at_ms: u64,
}
