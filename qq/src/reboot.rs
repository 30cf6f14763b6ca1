//! `qq reboot_status|reboot_pause|reboot_resume` and `qq nodes_list`: the
//! cluster's reboot manager and membership, through the agent.

use std::process::ExitCode;

use anyhow::Result;
use qapi::types::{ClusterNode, RebootStatus};

use crate::Ctx;

/// `reboot_status`: the rolling reboot's state and count.
pub fn status(ctx: &Ctx) -> Result<ExitCode> {
    crate::remote::print_get::<RebootStatus>(ctx, "reboot_status", "/v1/shutdown/reboot/status")
}

/// `reboot_pause` / `reboot_resume`.
pub fn pause(ctx: &Ctx, pause: bool) -> Result<ExitCode> {
    let (what, path) = if pause {
        ("reboot_pause", "/v1/shutdown/reboot/pause")
    } else {
        ("reboot_resume", "/v1/shutdown/reboot/resume")
    };
    let mut c = ctx.require_remote(what)?.client()?;
    if let Err(e) = c.post_empty(path) {
        return Ok(crate::remote::fail(&e));
    }
    status(ctx)
}

/// `nodes_list`: every node of the cluster and whether it is online.
pub fn nodes(ctx: &Ctx) -> Result<ExitCode> {
    crate::remote::print_get::<Vec<ClusterNode>>(ctx, "nodes_list", "/v1/cluster/nodes/")
}
