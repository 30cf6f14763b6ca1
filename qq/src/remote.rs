//! `qq` as a client of the agent's REST API: where the agent is, the kept token,
//! the exit code of an answer, and the monitor of an upgrade that follows the
//! server's `progress` and waits through a node's reboot.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use qapi::types::{NodeStep, PlanPhase, UpgradeState, UpgradeStatus};
use qapi::{Client, Target};
use qutil::cli::{EXIT_ERROR, EXIT_NO, print_json};

/// How long the monitor follows an upgrade before it leaves it to the agent.
pub const MONITOR_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// How often the monitor polls.
pub const POLL: Duration = Duration::from_millis(500);

/// Where the agent is and how to reach it (the global flags).
pub struct Remote {
    /// The agent.
    pub target: Target,
    /// The credentials file.
    pub store: std::path::PathBuf,
    /// Client options.
    pub options: qapi::Options,
}

impl Remote {
    /// A client with the kept token, if any.
    pub fn client(&self) -> Result<Client> {
        let mut c = Client::new(self.target.clone(), self.options.clone())?;
        c.set_token(qapi::credentials::load(&self.store)?);
        Ok(c)
    }
}

/// Prints an error answer and maps it to an exit code: 1 for a refusal the
/// operator can act on (4xx), 2 for faults (5xx, unreachable, garbage).
pub fn fail(e: &qapi::Error) -> ExitCode {
    match e.status() {
        Some(401) if e.class() == Some("http_unauthorized_error") => {
            qutil::cli::error("qq", &format!("{e}: run `qq login -u USER` first"));
            ExitCode::from(EXIT_ERROR)
        }
        Some(s) if (400..500).contains(&s) => {
            eprintln!("qq: {e}");
            ExitCode::from(EXIT_NO)
        }
        _ => {
            qutil::cli::error("qq", &upgrade::chain(e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Prints the node's report (`/v1/upgrade/status`, the shape `qq upgrade_status`
/// prints in local mode) when the agent answers.
pub fn print_report(c: &mut Client) -> Result<()> {
    match c.get::<serde_json::Value>("/v1/upgrade/status") {
        Ok(v) => print_json(&v),
        Err(e) => {
            eprintln!("qq: the node's report is not available: {e}");
            Ok(())
        }
    }
}

/// `qq <what>`: GETs `path` from the agent and prints the answer as JSON.
pub fn print_get<T: serde::de::DeserializeOwned + serde::Serialize>(
    ctx: &crate::Ctx,
    what: &str,
    path: &str,
) -> Result<ExitCode> {
    let mut c = ctx.require_remote(what)?.client()?;
    match c.get::<T>(path) {
        Ok(v) => {
            qutil::cli::print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(&e)),
    }
}

/// The cluster's upgrade node by node (`/v1/qimg/cluster/upgrade`), reported as
/// one line per change: each node's step, the batch, the data-safety gate.
#[derive(Default)]
struct ClusterView {
    /// False once the agent said it is in no cluster.
    off: bool,
    last: std::collections::HashMap<u32, (Option<NodeStep>, u8)>,
    batch: Option<usize>,
    /// While the data-safety gate holds: why, if the plan says (`None`: it
    /// does not hold).
    waiting: Option<Option<String>>,
    /// The rollout waits on its canaries.
    soaking: bool,
}

impl ClusterView {
    fn poll(&mut self, c: &mut Client, bars: &qutil::cli::Bars) {
        use qimg::Progress;
        if self.off {
            return;
        }
        let u = match c.get::<qapi::types::ClusterUpgrade>("/v1/qimg/cluster/upgrade") {
            Ok(u) => u,
            Err(e) => {
                self.off = e.status() == Some(404);
                return;
            }
        };
        for n in &u.nodes {
            // A line when the step changes, and every 25 % of a prepare.
            let bucket = n.progress / 25;
            let now = (n.step, bucket);
            if self.last.get(&n.id) != Some(&now) {
                let what = match n.step {
                    None => "waiting".to_owned(),
                    Some(NodeStep::Preparing) => format!("preparing {}%", n.progress),
                    Some(NodeStep::Failed) => {
                        format!("failed: {}", n.error.as_deref().unwrap_or("?"))
                    }
                    Some(s) => s.name().replace('_', " "),
                };
                let state = if n.online { "" } else { " (offline)" };
                bars.step(&format!("{}: {what}{state}", n.name));
                self.last.insert(n.id, now);
            }
        }
        if u.rolling && !u.batches.is_empty() && self.batch != Some(u.batch) {
            let names: Vec<String> = u.batches[u.batch.min(u.batches.len() - 1)]
                .iter()
                .map(|id| {
                    u.nodes
                        .iter()
                        .find(|n| n.id == *id)
                        .map_or(id.to_string(), |n| n.name.clone())
                })
                .collect();
            bars.step(&format!(
                "rolling reboot: batch {}/{} ({})",
                u.batch + 1,
                u.batches.len(),
                names.join(", ")
            ));
            self.batch = Some(u.batch);
        }
        let waiting = u.restriping.then(|| u.data_safety_wait.clone());
        if waiting != self.waiting {
            match &waiting {
                Some(why) => bars.step(&format!(
                    "waiting for the restriper (data protection) before the next batch{}",
                    why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
                )),
                None => bars.step("data fully protected"),
            }
            self.waiting = waiting;
        }
        if u.soaking != self.soaking {
            bars.step(&if !u.soaking {
                "the rollout goes on after its canaries".to_owned()
            } else if u.soak_until_ms == 0 {
                "the canaries run the new release; the rollout waits: `qq reboot_resume` lets it go on".to_owned()
            } else {
                format!(
                    "the canaries run the new release; the rollout goes on at {} UTC (or at `qq reboot_resume`)",
                    qapi::history::utc(u.soak_until_ms)
                )
            });
            self.soaking = u.soaking;
        }
    }
}

/// What the monitor waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The prepare ends (`PREPARED`).
    Prepared,
    /// The commit ends (`COMMITTED`), through a reboot if there is one.
    Committed,
    /// A rollback on demand ends: the cluster runs its previous release.
    RolledBack,
}

/// How a monitored upgrade ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// What was waited for happened.
    Done(UpgradeStatus),
    /// The upgrade failed, was refused or rolled back: `error_info`.
    Failed(String),
}

/// How the upgrade an agent shows `IDLE` again ended: the cluster's plan
/// (`/v1/qimg/cluster/upgrade`), or on a node in no cluster the engine's
/// record (`/v1/upgrade/status`: committed or not).
fn finished_as(c: &mut Client) -> Result<Option<PlanPhase>> {
    match c.get::<qapi::types::ClusterUpgrade>("/v1/qimg/cluster/upgrade") {
        Ok(u) => Ok(Some(u.phase)),
        Err(e) if e.status() == Some(404) => {
            let s: qapi::status::Status = c.get("/v1/upgrade/status")?;
            Ok((s.state == upgrade::state::Phase::Committed).then_some(PlanPhase::Committed))
        }
        Err(e) => Err(e.into()),
    }
}

/// Follows `/v3/upgrade/status` until `until`, a failure, or `limit`. The
/// progress bar follows the server's `progress`. Once a commit may be under way
/// (`commit_started`), an agent away (unreachable, or answering 503 while it
/// stops or starts) is a node rebooting: the monitor waits for it to come back.
pub fn monitor(
    c: &mut Client,
    until: Until,
    commit_started: bool,
    limit: Duration,
    bars: &qutil::cli::Bars,
) -> Result<Ended> {
    use qimg::Progress;
    let deadline = Instant::now() + limit;
    let task = bars.begin("preparing (the agent's progress, %)", Some(100));
    let mut shown = 0u64;
    let mut away_since: Option<Instant> = None;
    // Said once per state: a rolling reboot is REBOOTING for all its batches.
    let mut last: Option<UpgradeState> = None;
    let mut cluster = ClusterView::default();
    loop {
        cluster.poll(c, bars);
        match c.get::<UpgradeStatus>("/v3/upgrade/status") {
            Ok(s) => {
                if let Some(t) = away_since.take() {
                    bars.step(&format!(
                        "the node is back after {:.1} s",
                        t.elapsed().as_secs_f64()
                    ));
                }
                if let Some(info) = &s.error_info {
                    return Ok(Ended::Failed(info.clone()));
                }
                if s.state == UpgradeState::Preparing
                    && let Some(p) = s.progress
                    && u64::from(p) > shown
                {
                    task.advance(u64::from(p) - shown);
                    shown = u64::from(p);
                }
                match (s.state, until) {
                    (UpgradeState::Prepared, Until::Prepared)
                    | (UpgradeState::Committed, Until::Committed) => {
                        task.advance(100 - shown.min(100));
                        return Ok(Ended::Done(s));
                    }
                    // Qumulo's lifecycle: a finished upgrade is IDLE again. Whether
                    // it finished committed, the plan or the node's record says.
                    (UpgradeState::Idle, Until::Committed)
                        if finished_as(c)? == Some(PlanPhase::Committed) =>
                    {
                        task.advance(100 - shown.min(100));
                        return Ok(Ended::Done(s));
                    }
                    (UpgradeState::Idle, Until::RolledBack) => {
                        return Ok(match finished_as(c)? {
                            Some(PlanPhase::RolledBack) => Ended::Done(s),
                            Some(p) => Ended::Failed(format!(
                                "the rollback ended with the cluster's upgrade {}",
                                p.name()
                            )),
                            None => Ended::Failed("the rollback ended unseen".into()),
                        });
                    }
                    (UpgradeState::Idle, _) => {
                        return Ok(Ended::Failed(
                            "the upgrade ended without being committed (it was discarded)".into(),
                        ));
                    }
                    (UpgradeState::Rebooting, _) if last != Some(UpgradeState::Rebooting) => {
                        bars.step("the node reboots into the new release");
                    }
                    _ => {}
                }
                last = Some(s.state);
            }
            Err(e) if e.is_away() && (commit_started || until != Until::Prepared) => {
                if away_since.is_none() {
                    bars.step("the node is rebooting; waiting for it to come back");
                    away_since = Some(Instant::now());
                }
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "waited {} s for the upgrade to be {}; it goes on without this client (`qq upgrade_status` follows it)",
                limit.as_secs(),
                match until {
                    Until::Prepared => "prepared",
                    Until::Committed => "committed",
                    Until::RolledBack => "rolled back",
                }
            );
        }
        std::thread::sleep(POLL);
    }
}

/// After the agent accepted a request: follows it `until` (unless
/// `no_monitor`), then prints the node's report. Exit 1 when it failed.
pub fn follow(
    ctx: &crate::Ctx,
    c: &mut Client,
    until: Until,
    no_monitor: bool,
) -> Result<ExitCode> {
    if no_monitor {
        eprintln!(
            "qq: the agent accepted the request and goes on alone; `qq upgrade_status` follows it"
        );
        print_report(c)?;
        return Ok(ExitCode::SUCCESS);
    }
    let bars = ctx.bars();
    let ended = monitor(c, until, until != Until::Prepared, MONITOR_LIMIT, &bars);
    drop(bars);
    let code = match ended {
        Ok(Ended::Done(_)) => ExitCode::SUCCESS,
        Ok(Ended::Failed(why)) => {
            eprintln!("qq: {why}");
            ExitCode::from(EXIT_NO)
        }
        Err(e) => {
            qutil::cli::error("qq", &format!("{e:#}"));
            ExitCode::from(qutil::cli::EXIT_ERROR)
        }
    };
    print_report(c)?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An agent on a Unix socket that answers `/v3/upgrade/status` with
    /// `answers` in turn (a status line and a body, or `None`: the connection
    /// closed unanswered) and 404 to anything else.
    fn agent(
        answers: Vec<Option<(&'static str, String)>>,
    ) -> (tempfile::TempDir, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let t = std::thread::spawn(move || {
            let mut answers = answers.into_iter().peekable();
            for conn in l.incoming() {
                if answers.peek().is_none() {
                    return;
                }
                let mut conn = conn.unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut b).unwrap() == 1 {
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let (status, body) = if head.starts_with("GET /v3/upgrade/status ") {
                    match answers.next() {
                        Some(Some(a)) => a,
                        _ => continue,
                    }
                } else {
                    let e = r#"{"module":"qimgd","error_class":"http_not_found_error","description":"no","user_visible":true,"stack":[]}"#;
                    ("404 Not Found", e.to_owned())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (dir, t)
    }

    /// A Qumulo-shaped 503 from an agent that stops.
    fn stopping() -> Option<(&'static str, String)> {
        let body = r#"{"module":"qimgd","error_class":"agent_stopping_error","description":"the agent is stopping","user_visible":true,"stack":[]}"#;
        Some(("503 Service Unavailable", body.to_owned()))
    }

    /// A client of the agent in `dir`, and the progress bars `monitor` takes.
    fn client(dir: &tempfile::TempDir) -> (Client, qutil::cli::Bars) {
        let options = qapi::Options {
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let c = Client::new(Target::Unix(dir.path().join("s")), options).unwrap();
        (c, qutil::cli::Bars::new("qq", true))
    }

    fn status(state: UpgradeState) -> Option<(&'static str, String)> {
        let s = UpgradeStatus {
            state,
            progress: None,
            settings: None,
            error_info: None,
        };
        Some(("200 OK", serde_json::to_string(&s).unwrap()))
    }

    #[test]
    fn a_commit_is_followed_through_an_agent_that_answers_503_while_it_stops() {
        let (dir, t) = agent(vec![
            status(UpgradeState::Rebooting),
            stopping(),
            None,
            status(UpgradeState::Committed),
        ]);
        let (mut c, bars) = client(&dir);
        let ended = monitor(
            &mut c,
            Until::Committed,
            true,
            Duration::from_secs(30),
            &bars,
        )
        .expect("the 503 is a node going away, not a failure");
        match ended {
            Ended::Done(s) => assert_eq!(s.state, UpgradeState::Committed),
            Ended::Failed(why) => panic!("the commit was followed to a failure: {why}"),
        }
        // Every answer was asked for: the agent ends after its last.
        drop(c);
        let _ = std::os::unix::net::UnixStream::connect(dir.path().join("s"));
        t.join().unwrap();
    }

    #[test]
    fn before_a_commit_a_503_is_an_error() {
        let (dir, _t) = agent(vec![stopping()]);
        let (mut c, bars) = client(&dir);
        let e = monitor(
            &mut c,
            Until::Prepared,
            false,
            Duration::from_secs(30),
            &bars,
        )
        .map(|_| ())
        .expect_err("a prepare's monitor does not wait through a 503");
        assert!(format!("{e:#}").contains("agent_stopping_error"), "{e:#}");
    }
}
