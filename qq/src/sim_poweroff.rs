//! `qq sim_poweroff`: a simulated node's container stops, as at power-off.

use std::process::ExitCode;

use anyhow::Result;

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    let agent = ctx.agent()?;
    anyhow::ensure!(agent.node().config.simulated, "not a simulated node");
    agent.runtime().stop()?;
    Ok(ExitCode::SUCCESS)
}
