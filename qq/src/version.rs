//! `qq version`: the agent's `/v1/version`.

use std::process::ExitCode;

use anyhow::Result;
use qapi::types::VersionInfo;

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    let mut c = ctx.require_remote("version")?.client()?;
    match c.get::<VersionInfo>("/v1/version") {
        Ok(v) => {
            qutil::cli::print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(crate::remote::fail(&e)),
    }
}
