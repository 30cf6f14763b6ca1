//! `qq reboot_status|reboot_pause|reboot_resume` and `qq nodes_list`: the
//! cluster's reboot manager and membership, through the agent.

use std::process::ExitCode;

use anyhow::Result;
use qapi::types::{ClusterNode, RebootStatus};

use crate::Ctx;

/// `reboot_status`: the rolling reboot's state and count.
pub fn status(ctx: &Ctx) -> Result<ExitCode> {
    let mut c = ctx.require_remote("reboot_status")?.client()?;
    match c.get::<RebootStatus>("/v1/shutdown/reboot/status") {
        Ok(s) => {
            qutil::cli::print_json(&s)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(crate::remote::fail(&e)),
    }
}

/// `reboot_pause` / `reboot_resume`.
pub fn pause(ctx: &Ctx, pause: bool) -> Result<ExitCode> {
    let what = if pause {
        "reboot_pause"
    } else {
        "reboot_resume"
    };
    let mut c = ctx.require_remote(what)?.client()?;
    let path = if pause {
        "/v1/shutdown/reboot/pause"
    } else {
        "/v1/shutdown/reboot/resume"
    };
    if let Err(e) = c.post_empty(path) {
        return Ok(crate::remote::fail(&e));
    }
    status(ctx)
}

/// `nodes_list`: every node of the cluster and whether it is online.
pub fn nodes(ctx: &Ctx) -> Result<ExitCode> {
    let mut c = ctx.require_remote("nodes_list")?.client()?;
    match c.get::<Vec<ClusterNode>>("/v1/cluster/nodes/") {
        Ok(n) => {
            qutil::cli::print_json(&n)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(crate::remote::fail(&e)),
    }
}
