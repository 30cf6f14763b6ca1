//! `qq upgrade_cluster rollback` and `qq upgrade_cluster finalize`: the
//! committed upgrade's rollback on demand (`POST /v1/qimg/upgrade/rollback`,
//! then followed as a commit is, through the nodes' reboots) and its finalize
//! (`POST /v1/qimg/upgrade/finalize`: no rollback any more; a new upgrade may
//! then be prepared). Both are qimg extensions: they need an agent.

use std::process::ExitCode;

use anyhow::Result;
use qapi::rollback::{Finality, RollbackRequest};

use crate::Ctx;
use crate::remote::{self, Until};

/// How the nodes go back (each absent: as the upgrade committed).
#[derive(clap::Args)]
pub struct How {
    /// A few nodes at a time, each batch held by the data-safety gate.
    #[arg(long, conflicts_with = "all_at_once")]
    rolling: bool,
    /// Every node at once.
    #[arg(long)]
    all_at_once: bool,
    /// Nodes per batch (needs --rolling).
    #[arg(long, requires = "rolling")]
    num_nodes_to_reboot: Option<u32>,
}

impl How {
    /// The request's body.
    fn body(&self) -> RollbackRequest {
        RollbackRequest {
            do_rolling_reboot: match (self.rolling, self.all_at_once) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            num_nodes_to_reboot: self.num_nodes_to_reboot,
        }
    }
}

/// `qq upgrade_cluster rollback`: asks, then follows the rollback to its end
/// (unless `no_monitor`).
pub fn rollback(ctx: &Ctx, how: &How, no_monitor: bool) -> Result<ExitCode> {
    let remote = ctx.require_remote("upgrade_cluster rollback")?;
    let mut c = remote.client()?;
    if let Err(e) = c.post("/v1/qimg/upgrade/rollback", &how.body()) {
        return Ok(remote::fail(&e));
    }
    remote::follow(ctx, &mut c, Until::RolledBack, no_monitor)
}

/// `qq upgrade_cluster finalize`: prints where the upgrade stands then.
pub fn finalize(ctx: &Ctx) -> Result<ExitCode> {
    let remote = ctx.require_remote("upgrade_cluster finalize")?;
    let mut c = remote.client()?;
    match c.post_empty("/v1/qimg/upgrade/finalize") {
        Ok(body) => {
            let f: Finality = serde_json::from_slice(&body)
                .map_err(|e| anyhow::anyhow!("the agent's answer to finalize: {e}"))?;
            qutil::cli::print_json(&f)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(remote::fail(&e)),
    }
}
