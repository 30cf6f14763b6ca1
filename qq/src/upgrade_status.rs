//! `qq upgrade_status`: the state as JSON (schema `qq.upgrade_status/1`).

use std::process::ExitCode;

use anyhow::Result;

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    crate::print_status(&ctx.agent()?)?;
    Ok(ExitCode::SUCCESS)
}
