//! `GET /v1/qimg/overview` (a qimg extension): the Web UI's one request, each
//! part the body its own endpoint answers ([`crate::types`], [`crate::history`]).

use serde::{Deserialize, Serialize};

use crate::history::UpgradeHistory;
use crate::types::{
    Blocked, ClusterNode, ClusterUpgrade, ProtectionStatus, RebootStatus, RestriperStatus,
    UpgradeStatus, VersionInfo,
};

/// `GET /v1/qimg/overview` (a qimg extension): everything the Web UI shows, in
/// one body, so that it polls one request instead of eight. Each part is what
/// its own endpoint answers; a part its endpoint refuses (no cluster, no
/// upgrade yet, no restriper) is `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    /// `/v1/version`.
    pub version: VersionInfo,
    /// `/v3/upgrade/status`.
    pub status: UpgradeStatus,
    /// `/v2/upgrade/blocked`.
    pub blocked: Option<Blocked>,
    /// `/v1/cluster/nodes/`.
    pub nodes: Vec<ClusterNode>,
    /// `/v1/qimg/cluster/upgrade`.
    pub plan: Option<ClusterUpgrade>,
    /// `/v1/shutdown/reboot/status`.
    pub reboot: Option<RebootStatus>,
    /// `/v1/cluster/protection/restriper/status`.
    pub restriper: Option<RestriperStatus>,
    /// `/v1/cluster/protection/status`.
    pub protection: Option<ProtectionStatus>,
    /// `/v1/qimg/upgrade/history?limit=5`.
    #[serde(default)]
    pub history: Option<UpgradeHistory>,
}
