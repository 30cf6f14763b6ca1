//! `qq boot_check`: the boot path (run by `qimg-boot-check.service` at every boot).
//!
//! A boot that finds a platform commit rolled back (the new slot's tries ran
//! out, or its health gate failed and the node fell back) records it, starts the
//! old release's container and succeeds: the boot path did its job, and the
//! rollback is the upgrade's outcome, in its status. Failing the unit would leave
//! every rolled-back node with a failed unit, and systemd stops what a failed
//! unit started.

use std::process::ExitCode;

use anyhow::Result;
use upgrade::CommitOutcome;

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    let agent = ctx.agent()?;
    let bars = ctx.bars();
    let r = agent.after_boot(&bars);
    drop(bars);
    match r {
        Ok(Some(CommitOutcome::RolledBack { reason })) => {
            eprintln!("qq: {reason}");
            crate::finish_outcome(&agent, None)
        }
        Ok(o) => crate::finish_outcome(&agent, o),
        Err(e) => crate::finish_error(&agent, &e),
    }
}
