//! The contract between the node agent (`qimgd`) and its clients (`qq`, the Web
//! UI's tests, benchmarks): the REST bodies ([`types`], spelled as Qumulo's
//! documented API; [`status`], the v1 status body and the engine's phases,
//! error states and modes; [`history`], the cluster's upgrade records and
//! events; [`overview`], the Web UI's one body; [`assess`], the checks before
//! an upgrade; [`rollback`], an upgrade's rollback on demand and its
//! finalize; [`who`], who asked for what the cluster records), a small blocking HTTPS/Unix-socket client ([`client`]) that
//! behaves as Qumulo's client does, and the credentials file ([`credentials`]).
//! It does not depend on the engine: clients link it without linking a node.
#![deny(missing_docs)]

pub mod assess;
pub mod client;
pub mod credentials;
pub mod error;
pub mod history;
pub mod overview;
pub mod rollback;
pub mod status;
pub mod types;
pub mod who;

pub use client::{Client, Options, Target};
pub use error::{Error, ErrorBody};
