//! The data-safety gate's source ([`Source`]). On a real node the storage
//! software knows whether its data is safe again after a node came back: its
//! restriper. The agent asks it through a command named in the config
//! (`restriper_probe`, e.g. `curl -s https://…/v1/cluster/protection/restriper/status`
//! or a vendor tool) that prints Qumulo's restriper status JSON. Only a simulated
//! node has a simulated restriper (time in proportion to the nodes rebooted, the
//! plan's `gate_until_ms`); a real node without a probe has no source, and a
//! rolling reboot of its cluster is refused rather than gated on a timer.

use std::time::{Duration, Instant};

use qapi::types::RestriperStatus;

use crate::Error;

/// How long a probe may run.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Where this node's data-safety gate gets its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The storage software's restriper, asked through this command.
    Probe(Vec<String>),
    /// A simulated node's restriper: this long per rebooted node.
    Simulated {
        /// Time per node of the batch that rebooted.
        ms_per_node: u64,
    },
    /// A real node without a probe: nothing can say when the data is safe.
    Missing,
}

impl Source {
    /// The source of a node: its probe, else the simulated restriper on a
    /// simulated node (`sim`: its `[sim]` settings, see
    /// [`crate::config::Config::sim_of`]), else none.
    pub fn of(probe: Option<&[String]>, sim: Option<&crate::config::Sim>) -> Source {
        match (probe, sim) {
            (Some(argv), _) => Source::Probe(argv.to_vec()),
            (None, Some(s)) => Source::Simulated {
                ms_per_node: s.restripe_ms,
            },
            (None, None) => Source::Missing,
        }
    }

    /// The gate's answer before the restriper was asked: a probe is asked while
    /// a gate holds; the simulated restriper's time decides; no source cannot pass.
    pub fn initial(&self) -> DataSafety {
        match self {
            Source::Probe(_) => DataSafety::Safe,
            Source::Simulated { ms_per_node } => DataSafety::Timed {
                ms_per_node: *ms_per_node,
            },
            Source::Missing => DataSafety::NoSource(MISSING.into()),
        }
    }
}

/// Why a node without a source cannot gate a rolling reboot (names the setting).
pub const MISSING: &str = "this node has no data-safety source: it is not simulated and its qimgd.toml sets no restriper_probe (a command printing the restriper's status), so nothing can say when the data is safe between batches";

/// What the data-safety gate knows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSafety {
    /// A simulated node's restriper: its time decides, this long per node of
    /// the batch that rebooted.
    Timed {
        /// Time per rebooted node.
        ms_per_node: u64,
    },
    /// Nothing can answer (why, naming the setting): the gate never passes.
    NoSource(String),
    /// The restriper finished and no data is at risk.
    Safe,
    /// Data is at risk, or the probe could not say (why, in words).
    AtRisk(String),
}

/// Runs the probe `argv` (at most [`PROBE_LIMIT`]) and reads its answer: a JSON
/// object with at least `state` and `data_at_risk`, as Qumulo's
/// `/v1/cluster/protection/restriper/status` returns.
pub fn probe(argv: &[String]) -> Result<RestriperStatus, Error> {
    let fail = |problem: String| Error::Probe {
        program: argv.first().cloned().unwrap_or_default(),
        problem,
    };
    let out = qutil::process::run_until(argv, Instant::now() + PROBE_LIMIT)
        .map_err(|e| fail(qutil::chain(&e)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(fail(format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse(&text).map_err(|e| fail(format!("answered {:?}: {e}", text.trim())))
}

/// What is wrong with a restriper status.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadStatus(String);

/// Reads a restriper status; fields other than `state` and `data_at_risk` may be
/// missing.
pub fn parse(text: &str) -> Result<RestriperStatus, BadStatus> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| BadStatus(e.to_string()))?;
    let state = v["state"]
        .as_str()
        .ok_or_else(|| BadStatus("no \"state\" string".into()))?
        .to_owned();
    let data_at_risk = v["data_at_risk"]
        .as_bool()
        .ok_or_else(|| BadStatus("no \"data_at_risk\" boolean".into()))?;
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Ok(RestriperStatus {
        state,
        phase: text("phase"),
        blocked_reason: text("blocked_reason"),
        data_at_risk,
        elapsed_seconds: v["elapsed_seconds"].as_u64().unwrap_or(0),
        percent_complete: v["percent_complete"].as_u64().unwrap_or(0).min(100) as u8,
        coordinator_node: v["coordinator_node"].as_u64().unwrap_or(0) as u32,
    })
}

/// Runs the probe `argv` off the async threads: [`safety`] of its answer.
pub async fn ask(argv: &[String]) -> DataSafety {
    let argv = argv.to_vec();
    tokio::task::spawn_blocking(move || safety(probe(&argv)))
        .await
        .unwrap_or_else(|e| DataSafety::AtRisk(format!("the restriper probe: {e}")))
}

/// The gate's answer from the probe's: safe only when the restriper is not
/// running and no data is at risk.
pub fn safety(r: Result<RestriperStatus, Error>) -> DataSafety {
    match r {
        Ok(s) if !s.data_at_risk && s.state != "RUNNING" => DataSafety::Safe,
        Ok(s) => DataSafety::AtRisk(format!(
            "the restriper is {} ({} % complete{})",
            s.state,
            s.percent_complete,
            if s.data_at_risk { ", data at risk" } else { "" }
        )),
        Err(e) => DataSafety::AtRisk(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_simulated_node_has_the_simulated_restriper() {
        use crate::config::{Config, Sim};
        let probe = vec!["probe".to_string()];
        let sim = |restripe_ms| Sim {
            restripe_ms,
            ..Sim::default()
        };
        let config = |s: Option<Sim>| Config {
            sim: s,
            ..toml::from_str("node = \"n\"\nupgrade_dir = \"/u\"\n").unwrap()
        };
        // (probe, [sim], simulated) -> the source, or the refusal's words.
        type Row<'a> = (
            Option<&'a [String]>,
            Option<Sim>,
            bool,
            Result<Source, &'a str>,
        );
        let table: &[Row] = &[
            (Some(&probe), None, false, Ok(Source::Probe(probe.clone()))),
            (Some(&probe), None, true, Ok(Source::Probe(probe.clone()))),
            (
                None,
                None,
                true,
                Ok(Source::Simulated {
                    ms_per_node: Sim::default().restripe_ms,
                }),
            ),
            (
                None,
                Some(sim(300)),
                true,
                Ok(Source::Simulated { ms_per_node: 300 }),
            ),
            (None, None, false, Ok(Source::Missing)),
            (
                None,
                Some(sim(300)),
                false,
                Err("the [sim] table applies to simulated nodes only"),
            ),
            (
                Some(&probe),
                Some(Sim::default()),
                false,
                Err("[sim] table applies"),
            ),
        ];
        for (probe, s, simulated, want) in table {
            let got = config(s.clone())
                .sim_of(*simulated)
                .map(|s| Source::of(*probe, s.as_ref()));
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g),
                (Err(w), Err(g)) => {
                    assert_eq!(g.code(), "config");
                    assert!(g.to_string().contains(w), "{g}");
                }
                _ => panic!("{probe:?} {s:?} {simulated}: {got:?}"),
            }
        }
        assert_eq!(
            Source::Missing.initial(),
            DataSafety::NoSource(MISSING.into())
        );
        assert!(MISSING.contains("restriper_probe"));
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn safe_only_when_finished_and_nothing_at_risk() {
        let r = probe(&sh(
            r#"echo '{"state":"FINISHED","data_at_risk":false,"percent_complete":100}'"#,
        ));
        assert_eq!(safety(r), DataSafety::Safe);
        let r = probe(&sh(
            r#"echo '{"state":"RUNNING","phase":"REPROTECT","data_at_risk":true,"percent_complete":42}'"#,
        ));
        assert_eq!(r.as_ref().unwrap().phase, "REPROTECT");
        assert_eq!(
            safety(r),
            DataSafety::AtRisk("the restriper is RUNNING (42 % complete, data at risk)".into())
        );
    }

    #[test]
    fn a_probe_that_fails_or_says_nothing_useful_is_not_safe() {
        for (script, want) in [
            ("echo nope >&2; exit 3", "failed (exit status: 3): nope"),
            (
                "echo '{\"state\":\"FINISHED\"}'",
                "no \"data_at_risk\" boolean",
            ),
            ("echo not json", "answered \"not json\""),
        ] {
            match safety(probe(&sh(script))) {
                DataSafety::AtRisk(why) => assert!(why.contains(want), "{why}"),
                other => panic!("{script}: {other:?}"),
            }
        }
        let e = probe(&["/nonexistent/probe".into()]).unwrap_err();
        assert_eq!(e.code(), "probe");
        assert!(
            e.to_string().contains("cannot run /nonexistent/probe"),
            "{e}"
        );
        assert!(probe(&[]).is_err());
    }
}
