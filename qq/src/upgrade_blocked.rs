//! `qq upgrade_blocked`: whether an upgrade may start now, and why not. Exit 1
//! when blocked.

use std::process::ExitCode;

use anyhow::Result;
use qapi::types::Blocked;
use qutil::cli::{EXIT_NO, print_json};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<ExitCode> {
    let b = match ctx.remote()? {
        Some(remote) => match remote.client()?.get::<Blocked>("/v2/upgrade/blocked") {
            Ok(b) => b,
            Err(e) => return Ok(crate::remote::fail(&e)),
        },
        None => {
            let s = ctx.agent()?.status()?;
            Blocked {
                is_blocked: s.is_blocked,
                cluster_degraded: false,
                blocked_reason: s.blocked_reason,
            }
        }
    };
    print_json(&b)?;
    Ok(if b.is_blocked {
        ExitCode::from(EXIT_NO)
    } else {
        ExitCode::SUCCESS
    })
}
