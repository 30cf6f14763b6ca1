//! `qq upgrade_cluster [prepare|commit|rollback|finalize]`: prepare then
//! commit, or one phase. Through the agent (`POST /v2/upgrade/prepare|commit`,
//! then the monitor), or in local mode on a simulated node (`--node`), where
//! `--no-monitor` runs the work in a detached process. Rollback and finalize
//! (`crate::upgrade_rollback`) need an agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use qapi::assess::CheckName;
use qapi::types::OnFailure;
use upgrade::{Cancel, PrepareRequest};

use crate::Ctx;
use crate::remote::{self, Remote, Until};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    phase: Option<Phase>,
    /// The .qimg bundle.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Reboot nodes one batch at a time.
    #[arg(long)]
    rolling: bool,
    /// Nodes per batch of a rolling reboot (needs --rolling).
    #[arg(long, requires = "rolling")]
    num_nodes_to_reboot: Option<u32>,
    #[command(flatten)]
    cluster: ClusterOpts,
    #[command(flatten)]
    run: Monitor,
    #[command(flatten)]
    preview: DryRun,
}

/// What the cluster does beyond the node's engine.
#[derive(clap::Args, Default)]
struct ClusterOpts {
    /// When a node fails its commit: roll every node back (the default), or stop.
    #[arg(long, value_name = "rollback|stop", value_parser = on_failure)]
    on_failure: Option<OnFailure>,
    /// A check of the assessment (`qq upgrade_assess`) whose failure does not
    /// stop this upgrade, by name; repeatable; kept in the upgrade's history.
    #[arg(long = "override", value_name = "CHECK", value_parser = CheckName::parse)]
    overrides: Vec<CheckName>,
    /// Canaries: this many nodes (never the coordinator's) reboot first, then
    /// the rollout waits (`qq reboot_resume`, or --soak); a failing canary rolls
    /// the canaries back and stops it.
    #[arg(long, requires = "rolling", value_name = "N")]
    canary: Option<u32>,
    /// How long the rollout waits on the canaries before it goes on by itself.
    #[arg(long, requires = "canary", value_name = "SECONDS")]
    soak: Option<u64>,
    /// Finalize the upgrade by itself this long after it committed (0: at
    /// once); without it, the upgrade may be rolled back until `qq
    /// upgrade_cluster finalize`.
    #[arg(long, value_name = "SECONDS")]
    auto_finalize_after: Option<u64>,
}

/// Show the plan instead of starting it.
#[derive(clap::Args)]
struct DryRun {
    /// Show what the upgrade would do (mode, versions, batches in order) and the
    /// time each phase is expected to take; start nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: the agent's answer as JSON (schema qimg.upgrade_preview/1).
    #[arg(long, requires = "dry_run")]
    json: bool,
}

fn on_failure(s: &str) -> Result<OnFailure, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: expected rollback or stop"))
}

/// How the work runs: monitored here, or in a detached process.
#[derive(clap::Args)]
struct Monitor {
    /// Return at once; the work goes on in the background and cannot be cancelled.
    #[arg(long)]
    no_monitor: bool,
    #[arg(long, hide = true)]
    detached: bool,
}

#[derive(Subcommand)]
enum Phase {
    /// Verify the bundle and stage everything; no client impact.
    Prepare {
        /// The .qimg bundle.
        #[arg(long)]
        path: PathBuf,
        /// Reboot nodes one batch at a time at commit.
        #[arg(long)]
        rolling: bool,
        /// Nodes per batch of a rolling reboot (needs --rolling).
        #[arg(long, requires = "rolling")]
        num_nodes_to_reboot: Option<u32>,
        #[command(flatten)]
        cluster: ClusterOpts,
        /// Commit as soon as prepared.
        #[arg(long)]
        auto_commit: bool,
        #[command(flatten)]
        run: Monitor,
        #[command(flatten)]
        preview: DryRun,
    },
    /// Swap the container or reboot into the new slot.
    Commit {
        #[command(flatten)]
        run: Monitor,
    },
    /// Return the whole cluster to the release it ran before the committed
    /// upgrade (until it is finalized).
    Rollback {
        #[command(flatten)]
        how: crate::upgrade_rollback::How,
        #[command(flatten)]
        run: Monitor,
    },
    /// Keep the committed upgrade: no rollback any more, and a new upgrade may
    /// then be prepared.
    Finalize,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let (request, cluster, run, preview) = match a.phase {
        None => {
            let path = a.path.context("--path is required without a subcommand")?;
            let mut r = PrepareRequest::new(path);
            r.rolling = a.rolling;
            r.nodes_per_batch = a.num_nodes_to_reboot;
            r.auto_commit = true;
            (Some(r), a.cluster, a.run, a.preview)
        }
        Some(Phase::Prepare {
            path,
            rolling,
            num_nodes_to_reboot,
            cluster,
            auto_commit,
            run,
            preview,
        }) => {
            let mut r = PrepareRequest::new(path);
            r.rolling = rolling;
            r.nodes_per_batch = num_nodes_to_reboot;
            r.auto_commit = auto_commit;
            (Some(r), cluster, run, preview)
        }
        Some(Phase::Rollback { how, run }) => {
            return crate::upgrade_rollback::rollback(ctx, &how, run.no_monitor);
        }
        Some(Phase::Finalize) => return crate::upgrade_rollback::finalize(ctx),
        Some(Phase::Commit { run }) => (
            None,
            ClusterOpts::default(),
            run,
            DryRun {
                dry_run: false,
                json: false,
            },
        ),
    };
    if preview.dry_run {
        let r = request.context("--dry-run previews an upgrade: give --path")?;
        let remote = ctx.require_remote("upgrade_cluster --dry-run")?;
        return dry_run(&remote, &wire(&r, &cluster), preview.json);
    }
    match ctx.remote()? {
        Some(remote) => run_remote(ctx, &remote, request, &cluster, run.no_monitor),
        None if cluster.on_failure.is_some()
            || !cluster.overrides.is_empty()
            || cluster.canary.is_some()
            || cluster.auto_finalize_after.is_some() =>
        {
            anyhow::bail!(
                "--on-failure, --override, --canary and --auto-finalize-after apply to a cluster: run qq against an agent (--host)"
            )
        }
        None => run_local(ctx, request, run),
    }
}

/// Through the agent. The path is the cluster path, sent as given.
fn run_remote(
    ctx: &Ctx,
    remote: &Remote,
    request: Option<PrepareRequest>,
    cluster: &ClusterOpts,
    no_monitor: bool,
) -> Result<ExitCode> {
    let mut c = remote.client()?;
    let sent = match &request {
        Some(r) => c.post("/v2/upgrade/prepare", &wire(r, cluster)),
        None => c.post_empty("/v2/upgrade/commit"),
    };
    if let Err(e) = sent {
        return Ok(remote::fail(&e));
    }
    let until = match &request {
        Some(r) if !r.auto_commit => Until::Prepared,
        _ => Until::Committed,
    };
    remote::follow(ctx, &mut c, until, no_monitor)
}

/// On a simulated node, in this process (or a detached one).
fn run_local(ctx: &Ctx, request: Option<PrepareRequest>, run: Monitor) -> Result<ExitCode> {
    let agent = ctx.agent()?;
    let Monitor {
        no_monitor,
        detached,
    } = run;
    if no_monitor {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.retain(|a| a != "--no-monitor");
        args.push("--detached".into());
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(&args);
        let (child, log) = agent.detach(cmd)?;
        eprintln!(
            "qq: running in the background (pid {}, log {}); `qq upgrade_status` follows it; it cannot be cancelled",
            child.id(),
            log.display()
        );
        crate::print_status(&agent)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = Cancel::new();
    if !detached {
        let c = cancel.clone();
        let committing = request.is_none();
        ctrlc::set_handler(move || {
            if committing {
                eprintln!("qq: a commit cannot be cancelled; it continues");
            } else {
                eprintln!("qq: cancelling: undoing the prepare");
                c.cancel();
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let bars = ctx.bars();
    let result = match &request {
        Some(r) => agent.upgrade(r, &bars, &cancel),
        None => agent.commit(&bars).map(Some),
    };
    let result = match result {
        Ok(Some(o)) => crate::play_boots(&agent, o).map(Some),
        other => other,
    };
    drop(bars);
    match result {
        Ok(o) => crate::finish_outcome(&agent, o),
        Err(e) => crate::finish_error(&agent, &e),
    }
}

/// The prepare's body on the wire (the path is the cluster path, as given).
fn wire(r: &PrepareRequest, cluster: &ClusterOpts) -> qapi::types::PrepareRequest {
    qapi::types::PrepareRequest {
        image_path: r.path.to_string_lossy().into_owned(),
        auto_commit: r.auto_commit,
        do_rolling_reboot: r.rolling,
        num_nodes_to_reboot: r.nodes_per_batch,
        on_failure: cluster.on_failure,
        overrides: cluster.overrides.clone(),
        canary: cluster.canary,
        soak_secs: cluster.soak,
        auto_finalize_after_secs: cluster.auto_finalize_after,
    }
}

/// `--dry-run`: the agent's preview of `body`, in words or as JSON.
fn dry_run(remote: &Remote, body: &qapi::types::PrepareRequest, json: bool) -> Result<ExitCode> {
    use qapi::history::{PREVIEW_SCHEMA, Preview};
    let mut c = remote.client()?;
    let p: Preview = match c.post_json("/v1/qimg/upgrade/preview", body) {
        Ok(p) => p,
        Err(e) => return Ok(remote::fail(&e)),
    };
    anyhow::ensure!(
        p.schema == PREVIEW_SCHEMA,
        "the agent answered the preview in schema {:?}; this qq reads {PREVIEW_SCHEMA}",
        p.schema
    );
    if json {
        qutil::cli::print_json(&p)?;
        return Ok(ExitCode::SUCCESS);
    }
    qutil::cli::out(&preview_text(&p))?;
    Ok(ExitCode::SUCCESS)
}

/// A preview for people.
fn preview_text(p: &qapi::history::Preview) -> String {
    use qapi::history::took;
    use std::fmt::Write as _;
    let how = qapi::history::how(p.mode, p.rolling);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "upgrade {} -> {} ({how}): {}",
        p.from_version.as_deref().unwrap_or("?"),
        p.to_version,
        p.image_path
    );
    if !p.batches.is_empty() {
        let order: Vec<String> = p.batches.iter().map(|b| format!("{b:?}")).collect();
        let _ = writeln!(s, "  reboots: {}", order.join(" then "));
    }
    for ph in &p.phases {
        let _ = writeln!(
            s,
            "  {}: about {} ({})",
            ph.phase.name(),
            took(ph.expected_ms),
            ph.basis
        );
    }
    let _ = writeln!(s, "  in all: about {}", took(p.total_ms));
    let _ = writeln!(
        s,
        "nothing was started: the same command without --dry-run starts it"
    );
    s
}
