//! The REST API's bodies, spelled as Qumulo's documented API (field names, enum
//! spellings, `null`s). Both directions (serde): the agent sends them, clients and
//! tests parse them back. The agent shapes them from the engine's state
//! (`qimgd::api::shape`).

use serde::{Deserialize, Serialize};

/// `POST /v1/session/login`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// `Authorization: Bearer <this>` for later requests.
    pub bearer_token: String,
}

/// `POST /v2/upgrade/verify-image`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Path of the upgrade file in the cluster's namespace.
    pub image_path: String,
}

/// `POST /v2/upgrade/prepare`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// Path of the upgrade file in the cluster's namespace.
    pub image_path: String,
    /// Commit as soon as prepared.
    #[serde(default)]
    pub auto_commit: bool,
    /// Reboot a few nodes at a time at commit (platform upgrades).
    #[serde(default)]
    pub do_rolling_reboot: bool,
    /// Nodes per batch of a rolling reboot (`null`: the cluster's default).
    #[serde(default)]
    pub num_nodes_to_reboot: Option<u32>,
    /// What the cluster does when a node fails its commit (a qimg extension;
    /// absent: roll back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// Checks of the assessment a failure of which does not stop this
    /// prepare, by name (a qimg extension; kept in the upgrade's record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<crate::assess::CheckName>,
    /// A rolling platform commit's canaries: this many nodes (never the
    /// coordinator's) go first, then the rollout waits (a qimg extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// How long the rollout waits on the canaries before it goes on by itself,
    /// in seconds (absent: until `POST /v1/shutdown/reboot/resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_secs: Option<u64>,
    /// Finalize the upgrade by itself this long after it committed, in seconds
    /// (0: at once; absent: only `POST /v1/qimg/upgrade/finalize` does). Until
    /// then it may be rolled back (a qimg extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_finalize_after_secs: Option<u64>,
}

/// What a cluster does when a node fails its commit (falls back to its old slot,
/// or fails its health gate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The nodes already on the new release go back to their previous one, batch
    /// by batch under the same gates: the cluster ends on one release.
    #[default]
    Rollback,
    /// The rollout stops where it is (mixed releases stay until an operator acts).
    Stop,
}

/// `SOFTWARE_ONLY` (instant) or `SOFTWARE_AND_PLATFORM` (reboot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeType {
    /// Instant: the container restarts.
    #[serde(rename = "SOFTWARE_ONLY")]
    SoftwareOnly,
    /// Platform: the node reboots into the other slot.
    #[serde(rename = "SOFTWARE_AND_PLATFORM")]
    SoftwareAndPlatform,
}

impl UpgradeType {
    /// Platform (the node reboots) or not.
    pub fn from_platform(platform: bool) -> UpgradeType {
        if platform {
            UpgradeType::SoftwareAndPlatform
        } else {
            UpgradeType::SoftwareOnly
        }
    }
}

/// Qumulo's spelling of an upgrade mode: the one mapping, for the engine's
/// verify, the plan's status and `qq`'s local verify.
impl From<crate::status::Mode> for UpgradeType {
    fn from(m: crate::status::Mode) -> UpgradeType {
        UpgradeType::from_platform(m == crate::status::Mode::Platform)
    }
}

/// `POST /v2/upgrade/verify-image`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResponse {
    /// The bundle's release.
    pub target_version: String,
    /// What kind of upgrade it would be.
    pub upgrade_type: UpgradeType,
    /// Why it cannot be prepared now (a settle period), or `null`.
    pub error: Option<String>,
}

/// `PUT /v1/qimg/images/{name}`'s answer (qimg extension): the bundle now in
/// the upgrade directory, verified whole as it arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Its name in the upgrade directory.
    pub name: String,
    /// The path to give a prepare (`/upgrade/<name>`).
    pub image_path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The bundle's product.
    pub product: String,
    /// The release it installs.
    pub version: String,
    /// Its platform version.
    pub platform_version: String,
    /// SHA-256 of its signed manifest (hex): what a cluster's plan pins.
    pub manifest_sha256: String,
    /// True when it replaced a file of the same name.
    pub replaced: bool,
}

/// The upgrade state of `/v3/upgrade/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeState {
    /// Nothing in progress.
    #[serde(rename = "UPGRADE_STATE_IDLE")]
    Idle,
    /// Writing the slot, container and firmware.
    #[serde(rename = "UPGRADE_STATE_PREPARING")]
    Preparing,
    /// Ready to commit.
    #[serde(rename = "UPGRADE_STATE_PREPARED")]
    Prepared,
    /// Swapping the container, or choosing the slot to reboot into.
    #[serde(rename = "UPGRADE_STATE_COMMITTING")]
    Committing,
    /// The new release runs.
    #[serde(rename = "UPGRADE_STATE_COMMITTED")]
    Committed,
    /// Rebooting into the new slot (or back).
    #[serde(rename = "UPGRADE_STATE_REBOOTING")]
    Rebooting,
}

/// `settings` of `/v3/upgrade/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeSettings {
    /// The upgrade file, as the operator named it.
    pub install_path: String,
    /// The release being installed (empty until known).
    pub target_version: String,
    /// Instant or platform (`null` until known).
    pub upgrade_type: Option<UpgradeType>,
    /// Commit as soon as prepared.
    pub auto_commit: bool,
    /// Rolling reboots.
    pub do_rolling_reboot: bool,
    /// Nodes per batch.
    pub num_nodes_to_reboot: Option<u32>,
}

/// `GET /v3/upgrade/status` (and `/v2/upgrade/status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// Where the upgrade is.
    pub state: UpgradeState,
    /// 0–100 within a prepare, never decreasing; 100 once prepared; `null` when
    /// no upgrade is known.
    pub progress: Option<u8>,
    /// What was asked for; `null` when no upgrade is known.
    pub settings: Option<UpgradeSettings>,
    /// The cause of the last failure or rollback, or `null`.
    pub error_info: Option<String>,
}

/// `GET /v2/upgrade/blocked`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// True while an upgrade may not start.
    pub is_blocked: bool,
    /// True while the cluster is degraded.
    pub cluster_degraded: bool,
    /// Why, in words (empty when not blocked).
    pub blocked_reason: String,
}

/// `GET /v1/version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// `<product> <release>`: the last word is the installed release.
    pub revision_id: String,
    /// The release.
    pub build_id: String,
    /// `release`.
    pub flavor: String,
    /// Empty: bundles carry no build date.
    pub build_date: String,
}

/// `GET /v1/node/state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStateInfo {
    /// This node's id.
    pub node_id: u32,
    /// `ACTIVE` when its container runs, `STOPPED` otherwise.
    pub state: String,
    /// The cluster's id.
    pub cluster_id: String,
}

/// One entry of `GET /v1/cluster/nodes/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: u32,
    /// `online` or `offline`.
    pub node_status: String,
    /// Name.
    pub node_name: String,
    /// Node UUID.
    pub uuid: String,
    /// Label (empty).
    pub label: String,
    /// Hardware model.
    pub model_number: String,
    /// Serial number (empty when unknown).
    pub serial_number: String,
    /// MAC address (empty when unknown).
    pub mac_address: String,
    /// The release the node runs (a qimg extension: mixed releases during a
    /// rolling upgrade are visible per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    /// The A/B slot the node booted (a qimg extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_slot: Option<String>,
    /// `host:port` of the node's HTTPS API (a qimg extension: a client, or the
    /// Web UI, carries on from another node while this one reboots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<String>,
}

/// `GET /v1/shutdown/reboot/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootStatus {
    /// Where the reboots are.
    pub state: RebootState,
    /// Rolling.
    pub rolling: bool,
    /// Started by an upgrade.
    pub upgrade_initiated: bool,
    /// Nodes in the cluster.
    pub total_node_count: u32,
    /// Nodes rebooted so far in this cycle.
    pub rebooted_node_count: u32,
    /// Why the cycle paused (empty).
    pub error_message: String,
}

/// The stable `error_class` of an error answer, as Qumulo spells its own: what
/// the agent sends, one enum (a client reads any class as a string,
/// [`crate::ErrorBody`], since other servers send others).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The agent is stopping (its node shuts down or reboots): ask again once
    /// it is back.
    #[serde(rename = "agent_stopping_error")]
    AgentStopping,
    /// The user name or password is wrong.
    #[serde(rename = "auth_invalid_credentials_error")]
    AuthInvalidCredentials,
    /// Too many failed logins from this address: wait.
    #[serde(rename = "auth_login_throttled_error")]
    AuthLoginThrottled,
    /// The cluster's state in etcd is damaged.
    #[serde(rename = "cluster_state_damaged_error")]
    ClusterStateDamaged,
    /// The cluster's etcd cannot be reached (yet).
    #[serde(rename = "cluster_unavailable_error")]
    ClusterUnavailable,
    /// A file of that name exists (an upload without `?replace=true`).
    #[serde(rename = "fs_entry_exists_error")]
    FsEntryExists,
    /// The upgrade directory has no room for the file.
    #[serde(rename = "fs_no_space_error")]
    FsNoSpace,
    /// The upgrade file does not exist.
    #[serde(rename = "fs_no_such_entry_error")]
    FsNoSuchEntry,
    /// Only another node of the cluster may ask this (mutual TLS).
    #[serde(rename = "http_forbidden_error")]
    HttpForbidden,
    /// The endpoint does not take this method.
    #[serde(rename = "http_method_not_allowed_error")]
    HttpMethodNotAllowed,
    /// No such endpoint or resource.
    #[serde(rename = "http_not_found_error")]
    HttpNotFound,
    /// The body is over the limit.
    #[serde(rename = "http_payload_too_large_error")]
    HttpPayloadTooLarge,
    /// The client stopped sending the request's body.
    #[serde(rename = "http_request_timeout_error")]
    HttpRequestTimeout,
    /// No valid token (or local-root connection).
    #[serde(rename = "http_unauthorized_error")]
    HttpUnauthorized,
    /// Something failed inside the agent.
    #[serde(rename = "internal_error")]
    Internal,
    /// The request's body, path or query is not what the endpoint takes.
    #[serde(rename = "invalid_request_error")]
    InvalidRequest,
    /// No rolling reboot is in progress to pause or resume.
    #[serde(rename = "reboot_not_in_progress_error")]
    RebootNotInProgress,
    /// This node has no data-safety source to ask.
    #[serde(rename = "restriper_unavailable_error")]
    RestriperUnavailable,
    /// An upgrade may not start now (one in progress, a settle period, a job running).
    #[serde(rename = "upgrade_blocked_error")]
    UpgradeBlocked,
    /// The operation was cancelled.
    #[serde(rename = "upgrade_cancelled_error")]
    UpgradeCancelled,
    /// The upgrade engine failed.
    #[serde(rename = "upgrade_engine_error")]
    UpgradeEngine,
    /// The bundle is damaged (a digest or the signature does not match).
    #[serde(rename = "upgrade_image_damaged_error")]
    UpgradeImageDamaged,
    /// The bundle may not be installed on this node (product, model, version).
    #[serde(rename = "upgrade_image_refused_error")]
    UpgradeImageRefused,
    /// The upgrade file cannot be read as a bundle.
    #[serde(rename = "upgrade_image_unreadable_error")]
    UpgradeImageUnreadable,
    /// The image path leaves the upgrade directory or is not a path.
    #[serde(rename = "upgrade_invalid_image_path_error")]
    UpgradeInvalidImagePath,
    /// The node's upgrade record is damaged.
    #[serde(rename = "upgrade_state_damaged_error")]
    UpgradeStateDamaged,
    /// The upgrade is not in a state that allows this step.
    #[serde(rename = "upgrade_wrong_state_error")]
    UpgradeWrongState,
    /// The node takes no more uploads now (too many at once, or one of that
    /// name runs).
    #[serde(rename = "upload_busy_error")]
    UploadBusy,
}

impl ErrorClass {
    /// Every class, for tests.
    pub const ALL: &'static [ErrorClass] = &[
        ErrorClass::AgentStopping,
        ErrorClass::AuthInvalidCredentials,
        ErrorClass::AuthLoginThrottled,
        ErrorClass::ClusterStateDamaged,
        ErrorClass::ClusterUnavailable,
        ErrorClass::FsEntryExists,
        ErrorClass::FsNoSpace,
        ErrorClass::FsNoSuchEntry,
        ErrorClass::HttpForbidden,
        ErrorClass::HttpMethodNotAllowed,
        ErrorClass::HttpNotFound,
        ErrorClass::HttpPayloadTooLarge,
        ErrorClass::HttpRequestTimeout,
        ErrorClass::HttpUnauthorized,
        ErrorClass::Internal,
        ErrorClass::InvalidRequest,
        ErrorClass::RebootNotInProgress,
        ErrorClass::RestriperUnavailable,
        ErrorClass::UpgradeBlocked,
        ErrorClass::UpgradeCancelled,
        ErrorClass::UpgradeEngine,
        ErrorClass::UpgradeImageDamaged,
        ErrorClass::UpgradeImageRefused,
        ErrorClass::UpgradeImageUnreadable,
        ErrorClass::UpgradeInvalidImagePath,
        ErrorClass::UpgradeStateDamaged,
        ErrorClass::UpgradeWrongState,
        ErrorClass::UploadBusy,
    ];

    /// The class as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::AgentStopping => "agent_stopping_error",
            ErrorClass::AuthInvalidCredentials => "auth_invalid_credentials_error",
            ErrorClass::AuthLoginThrottled => "auth_login_throttled_error",
            ErrorClass::ClusterStateDamaged => "cluster_state_damaged_error",
            ErrorClass::ClusterUnavailable => "cluster_unavailable_error",
            ErrorClass::FsEntryExists => "fs_entry_exists_error",
            ErrorClass::FsNoSpace => "fs_no_space_error",
            ErrorClass::FsNoSuchEntry => "fs_no_such_entry_error",
            ErrorClass::HttpForbidden => "http_forbidden_error",
            ErrorClass::HttpMethodNotAllowed => "http_method_not_allowed_error",
            ErrorClass::HttpNotFound => "http_not_found_error",
            ErrorClass::HttpPayloadTooLarge => "http_payload_too_large_error",
            ErrorClass::HttpRequestTimeout => "http_request_timeout_error",
            ErrorClass::HttpUnauthorized => "http_unauthorized_error",
            ErrorClass::Internal => "internal_error",
            ErrorClass::InvalidRequest => "invalid_request_error",
            ErrorClass::RebootNotInProgress => "reboot_not_in_progress_error",
            ErrorClass::RestriperUnavailable => "restriper_unavailable_error",
            ErrorClass::UpgradeBlocked => "upgrade_blocked_error",
            ErrorClass::UpgradeCancelled => "upgrade_cancelled_error",
            ErrorClass::UpgradeEngine => "upgrade_engine_error",
            ErrorClass::UpgradeImageDamaged => "upgrade_image_damaged_error",
            ErrorClass::UpgradeImageRefused => "upgrade_image_refused_error",
            ErrorClass::UpgradeImageUnreadable => "upgrade_image_unreadable_error",
            ErrorClass::UpgradeInvalidImagePath => "upgrade_invalid_image_path_error",
            ErrorClass::UpgradeStateDamaged => "upgrade_state_damaged_error",
            ErrorClass::UpgradeWrongState => "upgrade_wrong_state_error",
            ErrorClass::UploadBusy => "upload_busy_error",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reboot manager's state, as Qumulo spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebootState {
    /// No reboots in progress.
    #[serde(rename = "REBOOT_IDLE")]
    Idle,
    /// Nodes reboot (a platform commit or its rollback).
    #[serde(rename = "REBOOT_IN_PROGRESS")]
    InProgress,
    /// The operator paused the reboots.
    #[serde(rename = "REBOOT_PAUSED")]
    Paused,
    /// The reboots stopped on an error (a node not back in time, the data not safe).
    #[serde(rename = "REBOOT_PAUSED_DUE_TO_ERROR")]
    PausedDueToError,
}

/// `GET /v1/cluster/protection/restriper/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestriperStatus {
    /// `NOT_STARTED`, `RUNNING` or `FINISHED`.
    pub state: String,
    /// `REPROTECT` while it runs.
    pub phase: String,
    /// Why it cannot run (empty).
    pub blocked_reason: String,
    /// True while data is not fully protected.
    pub data_at_risk: bool,
    /// Seconds it has run.
    pub elapsed_seconds: u64,
    /// 0–100.
    pub percent_complete: u8,
    /// The node that runs it (the coordinator).
    pub coordinator_node: u32,
}

/// `GET /v1/cluster/protection/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionStatus {
    /// `PROTECTION_SYSTEM_TYPE_EC`.
    pub protection_system_type: String,
    /// Node failures the data protection tolerates.
    pub max_node_failures: u32,
    /// Of those, how many more may fail now (nodes offline count against it).
    pub remaining_node_failures: u32,
}

/// Where the cluster's upgrade is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanPhase {
    /// Every node prepares.
    Preparing,
    /// Every node prepared; waiting for commit.
    Prepared,
    /// Nodes commit.
    Committing,
    /// Every node runs the new release.
    Committed,
    /// A node failed: every node discards what it prepared.
    Discarding,
    /// The nodes that committed go back: a node failed its commit, or the
    /// operator rolled the committed upgrade back.
    RollingBack,
    /// Ended without committing (`error` says why).
    Failed,
    /// The operator rolled the committed upgrade back: every node runs the
    /// release it ran before.
    RolledBack,
}

impl PlanPhase {
    /// Its name on the wire (`preparing`, `rolling_back`, …).
    pub fn name(self) -> &'static str {
        match self {
            PlanPhase::Preparing => "preparing",
            PlanPhase::Prepared => "prepared",
            PlanPhase::Committing => "committing",
            PlanPhase::Committed => "committed",
            PlanPhase::Discarding => "discarding",
            PlanPhase::RollingBack => "rolling_back",
            PlanPhase::Failed => "failed",
            PlanPhase::RolledBack => "rolled_back",
        }
    }

    /// True while the plan is under way (a new one may not start).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            PlanPhase::Preparing
                | PlanPhase::Prepared
                | PlanPhase::Committing
                | PlanPhase::Discarding
                | PlanPhase::RollingBack
        )
    }
}

/// Instant or platform: the engine's mode (one enum, `crate::status::Mode`).
pub use crate::status::PlanMode;

/// What a node did for a plan generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStep {
    /// Preparing.
    Preparing,
    /// Prepared.
    Prepared,
    /// Committing.
    Committing,
    /// Committed.
    Committed,
    /// Discarded what it prepared (or had nothing).
    Discarded,
    /// Going back to the release it ran before the plan (rebooting into its
    /// previous slot).
    RollingBack,
    /// Went back to the release it ran before the plan.
    RolledBack,
    /// Failed (`error` says why).
    Failed,
}

impl NodeStep {
    /// Back on the release it ran before the plan (or it never left it): what
    /// a rollback waits for on every node it sends back.
    pub fn is_back(self) -> bool {
        matches!(
            self,
            NodeStep::RolledBack | NodeStep::Failed | NodeStep::Discarded
        )
    }

    /// Its name on the wire (`preparing`, `committed`, …).
    pub fn name(self) -> &'static str {
        match self {
            NodeStep::Preparing => "preparing",
            NodeStep::Prepared => "prepared",
            NodeStep::Committing => "committing",
            NodeStep::Committed => "committed",
            NodeStep::Discarded => "discarded",
            NodeStep::RollingBack => "rolling_back",
            NodeStep::RolledBack => "rolled_back",
            NodeStep::Failed => "failed",
        }
    }
}

/// One node's part in the cluster's upgrade (`GET /v1/qimg/cluster/upgrade`, a
/// qimg extension).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// Node id.
    pub id: u32,
    /// Node name.
    pub name: String,
    /// Registered (its lease is alive).
    pub online: bool,
    /// What it did for this plan (`null`: nothing yet).
    pub step: Option<NodeStep>,
    /// Its prepare's progress, 0–100.
    pub progress: u8,
    /// Why it failed.
    pub error: Option<String>,
    /// The release it runs.
    pub installed: Option<String>,
}

/// A phase's expected time: from this cluster's measured history, or a stated
/// default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEta {
    /// The phase (`preparing`, `committing`).
    pub phase: PlanPhase,
    /// How long it is expected to take, ms.
    pub expected_ms: u64,
    /// How long it has run (`null`: not started).
    pub elapsed_ms: Option<u64>,
    /// Where `expected_ms` comes from, in words.
    pub basis: String,
}

/// The time an upgrade is expected to take, phase by phase, and what is left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eta {
    /// The phases still to run or running.
    pub phases: Vec<PhaseEta>,
    /// Left: the running phase's expected time less what it ran (at least 0),
    /// plus the phases after it, ms. An operator's wait (a prepared upgrade
    /// without auto-commit, a pause) is not counted.
    pub remaining_ms: u64,
}

/// The cluster's upgrade, node by node (`GET /v1/qimg/cluster/upgrade`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterUpgrade {
    /// The plan's generation.
    pub generation: u64,
    /// Where it is.
    pub phase: PlanPhase,
    /// Rolling reboots.
    pub rolling: bool,
    /// The batches of a rolling commit (node ids).
    pub batches: Vec<Vec<u32>>,
    /// The batch rebooting now.
    pub batch: usize,
    /// The data-safety gate holds the next batch back.
    pub restriping: bool,
    /// Why it holds: the restriper probe's last answer (`null` when no probed
    /// gate holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_safety_wait: Option<String>,
    /// Every node.
    pub nodes: Vec<NodeProgress>,
    /// Instant or platform (`null` from an agent that did not say).
    #[serde(default)]
    pub mode: Option<PlanMode>,
    /// The release the cluster ran before (`null`: not known).
    #[serde(default)]
    pub from_version: Option<String>,
    /// The release it goes to.
    #[serde(default)]
    pub target_version: String,
    /// The cluster's downtime of an instant commit (the longest node's), ms.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Time expected and left while it runs (`null` once it ended).
    #[serde(default)]
    pub eta: Option<Eta>,
    /// Its canaries (`null`: none): the first batch.
    #[serde(default)]
    pub canary: Option<u32>,
    /// The rollout waits on its canaries.
    #[serde(default)]
    pub soaking: bool,
    /// Until when (Unix ms; 0: until resumed).
    #[serde(default)]
    pub soak_until_ms: u64,
    /// Whether the committed upgrade may still be rolled back, who finalized
    /// it, who rolled it back (`null` from an agent that did not say).
    #[serde(default)]
    pub finality: Option<crate::rollback::Finality>,
}

#[cfg(test)]
mod tests;
