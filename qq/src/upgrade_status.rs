//! `qq upgrade_status [--json]`: the upgrade's state as JSON (schema
//! `qq.upgrade_status/1`), from the agent's `/v1/upgrade/status` or, in local
//! mode, the node's record.

use std::process::ExitCode;

use anyhow::Result;

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// JSON (always; accepted as Qumulo's client spells it).
    #[arg(long, alias = "raw", alias = "no-monitor")]
    json: bool,
}

pub fn run(ctx: &Ctx, _a: Args) -> Result<ExitCode> {
    match ctx.remote()? {
        Some(remote) => {
            let mut c = remote.client()?;
            match c.get::<serde_json::Value>("/v1/upgrade/status") {
                Ok(v) => qutil::cli::print_json(&v)?,
                Err(e) => return Ok(crate::remote::fail(&e)),
            }
        }
        None => crate::print_status(&ctx.agent()?)?,
    }
    Ok(ExitCode::SUCCESS)
}
