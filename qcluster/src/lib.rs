//! The cluster: what an operator declares once ([`spec`]), what creating it makes
//! ([`create`]: the CA, each node's certificate and directory, via [`pki`]), the
//! etcd members the voting nodes run ([`etcd`]), and the state those members
//! hold ([`store`]: each node's session lease, its registration and the
//! coordinator's key under it, the upgrade plan and the nodes' reports of
//! [`plan`], and the upgrade records of [`history`], from which [`eta`]
//! expects an upgrade's time), and what this process saw
//! of them through etcd's watch ([`mirror`]). The engine (consensus) is etcd's;
//! this crate only names keys and checks values; [`access`] sets etcd's own
//! access control for them (a role per node).
#![deny(missing_docs)]

pub mod access;
pub mod create;
pub mod error;
pub mod eta;
pub mod etcd;
pub mod history;
pub mod mirror;
pub mod pki;
pub mod plan;
pub mod spec;
pub mod store;

pub use create::{Membership, NodeDir, Reissued, create, reissue};
pub use error::Error;
pub use plan::{ClusterPlan, NodeReport, NodeStep, PlanMode, PlanPhase};
pub use spec::{ClusterSpec, NodeSpec};
pub use store::{Local, NodeInfo, Session, Store};
