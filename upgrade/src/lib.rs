//! The upgrade engine behind `qq` (and the node agent): prepare and commit of node
//! upgrades, instant (container swap) or platform (reboot into the other A/B slot),
//! with a persisted, crash-safe, typed state machine.
//!
//! - [`agent`]: the one public face, [`Agent`]: prepare, commit, status, cancel,
//!   after-boot, and the detached background run. Binaries are glue around it.
//! - [`state`]: the typed node state ([`state::Stage`], steps, slots, versions) and
//!   the `qq upgrade_status` report; [`wire`]: its form on disk; [`store`]: the
//!   record file and the node's lock.
//! - [`recovery`]: what to do with a state a dead process left (a pure table).
//! - [`prepare`], [`commit`]: the two phases, and the decision after a reboot; every
//!   commit path ends in one [`CommitOutcome`].
//! - [`machine`]: the [`Machine`] trait (boot id, reboot, platform health) and the
//!   real node's; [`container`]: staged containers and the [`container::Runtime`]s.
//! - [`node`]: a node's configuration (`node.toml`), its disk and ESP opened once
//!   per operation, what it runs now; [`checks`]: whether a bundle may be installed.
//! - [`sim`]: simulated nodes (a disk image made by `imagebuild disk` plus a state
//!   directory) with a simulated machine and systemd-boot, for tests and the demo.
//!   The engine's operations never name it: [`machine_for`] picks its
//!   machine for a node whose `node.toml` says `simulated`.
//!
//! The engine writes no format code of its own: bundles are read with `qimg`, slots
//! and boot entries changed with `bootctl`, firmware flashed with `firmware`.
#![deny(missing_docs)]

pub mod agent;
pub mod assess;
pub mod checks;
pub mod commit;
pub mod container;
pub mod error;
pub mod factory;
pub mod machine;
pub mod node;
pub mod prepare;
pub mod pstore;
pub mod recovery;
pub mod sim;
pub mod state;
pub mod store;
pub mod wire;

pub use agent::{Agent, PrepareRequest, Verified};
pub use commit::CommitOutcome;
pub use error::{Error, chain};
pub use machine::Machine;
pub use prepare::BundleSource;
pub use qimg::Cancel;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The machine `node.toml` describes: a real one ([`machine::LocalMachine`]), or,
/// for a node whose config says `simulated`, the simulator's
/// ([`sim::SimMachine`]). The one place a node's machine is chosen.
pub fn machine_for(node: &node::Node) -> Box<dyn machine::Machine> {
    if node.config.simulated {
        Box::new(sim::SimMachine::new(node))
    } else {
        Box::new(machine::LocalMachine::new(node))
    }
}
