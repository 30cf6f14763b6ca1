//! The data-safety gate's source. On a real node the storage software knows
//! whether its data is safe again after a node came back: its restriper. The
//! agent asks it through a command named in the config (`restriper_probe`, e.g.
//! `curl -s https://…/v1/cluster/protection/restriper/status` or a vendor tool)
//! that prints Qumulo's restriper status JSON. Without a probe, a simulated node's
//! restriper answers: it needs time in proportion to the nodes rebooted (the
//! plan's `gate_until_ms`).

use std::time::{Duration, Instant};

use qapi::types::RestriperStatus;

use crate::Error;

/// How long a probe may run.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// What the data-safety gate knows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSafety {
    /// No probe: the simulated restriper's time decides.
    Timed,
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
