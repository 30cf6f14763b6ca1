//! `qq upgrade_history [--json] [--limit N]`: the cluster's upgrades, newest
//! first (`GET /v1/qimg/upgrade/history`, schema `qimg.upgrade_history/1`): who
//! started each, from where and when, from → to, mode, each node's last step,
//! pauses, the result and its reason, how long it took.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Result, bail};
use qapi::history::{HISTORY_SCHEMA, UpgradeHistory, UpgradeRecord, took, utc};

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's answer as JSON.
    #[arg(long)]
    json: bool,
    /// The newest N upgrades only.
    #[arg(long)]
    limit: Option<usize>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let mut c = ctx.require_remote("upgrade_history")?.client()?;
    let path = match a.limit {
        Some(n) => format!("/v1/qimg/upgrade/history?limit={n}"),
        None => "/v1/qimg/upgrade/history".into(),
    };
    let h: UpgradeHistory = match c.get(&path) {
        Ok(h) => h,
        Err(e) => return Ok(crate::remote::fail(&e)),
    };
    if h.schema != HISTORY_SCHEMA {
        bail!(
            "the agent answered the history in schema {:?}; this qq reads {HISTORY_SCHEMA}",
            h.schema
        );
    }
    if a.json {
        qutil::cli::print_json(&h)?;
    } else {
        qutil::cli::out(&table(&h.upgrades, qutil::now_ms()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The history for people: a line per upgrade, then its nodes, pauses and reason.
pub fn table(upgrades: &[UpgradeRecord], now_ms: u64) -> String {
    if upgrades.is_empty() {
        return "no upgrade yet\n".into();
    }
    let mut s = String::new();
    for r in upgrades {
        let how = qapi::history::how(r.mode, r.rolling);
        let result = r.result.map_or("under way", |x| x.name());
        let _ = writeln!(
            s,
            "upgrade {}: {} -> {} ({how}): {result}, {}",
            r.generation,
            r.from_version.as_deref().unwrap_or("?"),
            r.to_version,
            took(r.elapsed_ms(now_ms))
        );
        match &r.started {
            Some(st) => {
                let _ = writeln!(
                    s,
                    "  started {} UTC by {} from {}",
                    utc(st.at_ms),
                    if st.by.is_empty() { "?" } else { &st.by },
                    if st.from.is_empty() { "?" } else { &st.from }
                );
            }
            None => {
                let _ = writeln!(s, "  started {} UTC", utc(r.started_ms()));
            }
        }
        let _ = writeln!(s, "  file {}", r.image_path);
        if !r.batches.is_empty() {
            let _ = writeln!(s, "  batches {:?}", r.batches);
        }
        for n in &r.nodes {
            let steps: Vec<&str> = n.steps.iter().map(|x| x.step.name()).collect();
            let _ = writeln!(
                s,
                "  node {}: {}{}",
                n.id,
                steps.join(" > "),
                n.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        for p in &r.pauses {
            let _ = writeln!(
                s,
                "  paused {} UTC{}{}",
                utc(p.at_ms),
                p.error
                    .as_deref()
                    .map_or(" by the operator".into(), |e| format!(": {e}")),
                p.resumed_ms
                    .map(|t| format!(", resumed {} UTC", utc(t)))
                    .unwrap_or_default()
            );
        }
        if let Some(d) = r.downtime_ms {
            let _ = writeln!(s, "  downtime {d} ms");
        }
        if !r.overrides.is_empty() {
            let names: Vec<&str> = r.overrides.iter().map(|c| c.name()).collect();
            let _ = writeln!(s, "  overridden checks: {}", names.join(", "));
        }
        if let Some(why) = &r.reason {
            let _ = writeln!(s, "  reason: {why}");
        }
    }
    s
}
