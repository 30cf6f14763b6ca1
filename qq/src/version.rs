//! `qq version`: the agent's `/v1/version`.

use std::process::ExitCode;

use anyhow::Result;
use qapi::types::VersionInfo;

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    crate::remote::print_get::<VersionInfo>(ctx, "version", "/v1/version")
}
