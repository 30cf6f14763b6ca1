//! `qq boot_check`: the boot path (run by `qimg-boot-check.service` at every boot).

use std::process::ExitCode;

use anyhow::Result;

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    let agent = ctx.agent()?;
    let bars = ctx.bars();
    let r = agent.after_boot(&bars);
    drop(bars);
    match r {
        Ok(o) => crate::finish_outcome(&agent, o),
        Err(e) => crate::finish_error(&agent, &e),
    }
}
