//! `qq upgrade_assess --path P [--num-nodes-to-reboot N] [--json]`: the checks
//! every node and the cluster make before an upgrade (`POST
//! /v1/qimg/upgrade/assess`, schema `qimg.upgrade_assessment/1`), each `pass`,
//! `warn` or `fail` with its node and a sentence. Exit 1 when a check fails
//! (a prepare would refuse unless it overrides that check by name).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Result, ensure};
use qapi::assess::{ASSESSMENT_SCHEMA, AssessRequest, Assessment, Verdict};
use qutil::cli::EXIT_NO;

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The .qimg bundle (its path in the cluster's upgrade directory).
    #[arg(long)]
    path: String,
    /// Assess rolling reboots of this many nodes at a time (etcd's quorum
    /// through the largest batch); without it, every node at once.
    #[arg(long)]
    num_nodes_to_reboot: Option<u32>,
    /// The agent's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let mut c = ctx.require_remote("upgrade_assess")?.client()?;
    let body = AssessRequest {
        image_path: a.path,
        num_nodes_to_reboot: a.num_nodes_to_reboot,
    };
    let r: Assessment = match c.post_json("/v1/qimg/upgrade/assess", &body) {
        Ok(r) => r,
        Err(e) => return Ok(crate::remote::fail(&e)),
    };
    ensure!(
        r.schema == ASSESSMENT_SCHEMA,
        "the agent answered the assessment in schema {:?}; this qq reads {ASSESSMENT_SCHEMA}",
        r.schema
    );
    if a.json {
        qutil::cli::print_json(&r)?;
    } else {
        qutil::cli::out(&text(&r))?;
    }
    Ok(if r.result == Verdict::Fail {
        ExitCode::from(EXIT_NO)
    } else {
        ExitCode::SUCCESS
    })
}

/// The assessment for people: a line per check, the failures first.
pub fn text(r: &Assessment) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {}{}",
        r.image_path,
        r.to_version.as_deref().unwrap_or("?"),
        r.mode
            .map(|m| format!(
                " ({})",
                if m == qapi::status::Mode::Instant {
                    "instant"
                } else {
                    "platform"
                }
            ))
            .unwrap_or_default()
    );
    let mut checks: Vec<_> = r.checks.iter().collect();
    checks.sort_by_key(|c| std::cmp::Reverse(c.result));
    for c in checks {
        let word = match c.result {
            Verdict::Pass => "pass",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        let on = c.node.map(|n| format!(" (node {n})")).unwrap_or_default();
        let _ = writeln!(s, "  {word} {}{on}: {}", c.name.name(), c.message);
    }
    let _ = writeln!(
        s,
        "{}",
        match r.result {
            Verdict::Pass => "every check passes",
            Verdict::Warn => "no check fails; look at the warnings",
            Verdict::Fail =>
                "a prepare refuses: fix what fails, or override a check by name (qq upgrade_cluster ... --override NAME)",
        }
    );
    s
}
