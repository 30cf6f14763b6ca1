//! `qq upgrade_verify_image --path P`: what a prepare of the bundle would do, or
//! why it is refused; nothing changes. Exit 1 when refused.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use qapi::types::{UpgradeType, VerifyRequest, VerifyResponse};
use qutil::cli::print_json;

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle (a cluster path through the agent; a file in local mode).
    #[arg(long)]
    path: PathBuf,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let v = match ctx.remote()? {
        Some(remote) => {
            let mut c = remote.client()?;
            let req = VerifyRequest {
                image_path: a.path.to_string_lossy().into_owned(),
            };
            match c.post_json::<_, VerifyResponse>("/v2/upgrade/verify-image", &req) {
                Ok(v) => v,
                Err(e) => return Ok(crate::remote::fail(&e)),
            }
        }
        None => {
            let agent = ctx.agent()?;
            match agent.verify(&a.path) {
                Ok(v) => VerifyResponse {
                    target_version: v.plan.to.version.to_string(),
                    upgrade_type: UpgradeType::from(v.plan.mode),
                    error: v.blocked,
                },
                Err(e) => return crate::finish_error(&agent, &e),
            }
        }
    };
    print_json(&v)?;
    Ok(ExitCode::SUCCESS)
}
