//! The assessment before an upgrade (`qapi::assess`): `POST
//! /v1/qimg/upgrade/assess` asks every node for its own checks (this one's
//! engine, the others over mutual TLS: `POST /v1/qimg/peer/upgrade/assess`, at
//! once) and adds the cluster's (nodes online, etcd's quorum through the largest
//! batch, data protection, clocks, mixed releases). The prepare runs the same
//! assessment (the payloads' digests left to the prepare itself) and refuses on
//! a failing check the request does not override by name. Nothing is written.

use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::{Extension, Json};
use qapi::assess::{
    ASSESSMENT_SCHEMA, AssessRequest, Assessment, Check, CheckName, NodeAssessment, Verdict, worst,
};

use super::body::JsonBody;
use super::cluster_upgrade::{planned_batches, store};
use super::error::ApiError;
use super::{Shared, blocking};
use crate::paths::{self, PathProblem};
use crate::peer::Peer;
use crate::restriper::Source;

/// The path a node asks another node's checks at.
pub const PEER_ASSESS: &str = "/v1/qimg/peer/upgrade/assess";

/// How long a node's checks may take (a full read of a large bundle).
pub const NODE_LIMIT: Duration = Duration::from_secs(120);

/// A clock this far from the asking node's is worth a look.
pub const SKEW_WARN_MS: u64 = 2_000;
/// This far, tokens, leases and settle periods go wrong: the check fails.
pub const SKEW_FAIL_MS: u64 = 60_000;

/// What a node asks another node (`full`: read every payload).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAssessRequest {
    /// The upgrade file.
    pub image_path: String,
    /// Read every payload and check its digest.
    pub full: bool,
}

/// `POST /v1/qimg/upgrade/assess`.
pub(super) async fn assess(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
    JsonBody(req): JsonBody<AssessRequest>,
) -> Result<Json<Assessment>, ApiError> {
    super::upgrade_api::no_overrides(q)?;
    Ok(Json(assessment(&app, &req, true).await?))
}

/// `POST /v1/qimg/peer/upgrade/assess`: this node's own checks, for another
/// node of the cluster (its certificate only).
pub(super) async fn peer_assess(
    State(app): State<Shared>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<PeerAssessRequest>,
) -> Result<Json<NodeAssessment>, ApiError> {
    super::images::peer_only(&peer, "ask for a node's checks")?;
    Ok(Json(own(&app, &req.image_path, req.full).await?))
}

/// This node's checks of `image_path` (a file this node lacks: a warning, as
/// a prepare fetches it from a node that has it).
async fn own(app: &Shared, image_path: &str, full: bool) -> Result<NodeAssessment, ApiError> {
    let me = app.node_id();
    let img = match paths::resolve(&app.config.upgrade_dir, image_path) {
        Ok(img) => img,
        Err(PathProblem::Missing(_)) => {
            return Ok(NodeAssessment {
                now_ms: qcluster::plan::now_ms(),
                mode: None,
                to_version: None,
                checks: vec![Check::new(
                    CheckName::Bundle,
                    Some(me),
                    Verdict::Warn,
                    format!(
                        "{image_path} is not on this node: its prepare fetches it from a node that has it (checked there)"
                    ),
                )],
            });
        }
        Err(e) => return Err(e.into()),
    };
    let agent = app.agent.clone();
    blocking(move || {
        let name = img.file.clone();
        Ok(upgrade::assess::assess(
            &agent,
            &name,
            img.source(),
            full,
            Some(me),
        ))
    })
    .await
}

/// Every node's checks and the cluster's, for `req` (`full`: each node reads
/// every payload).
pub(super) async fn assessment(
    app: &Shared,
    req: &AssessRequest,
    full: bool,
) -> Result<Assessment, ApiError> {
    // A path outside the upgrade directory is the caller's error, not a check.
    if let Err(e) = paths::resolve(&app.config.upgrade_dir, &req.image_path)
        && !matches!(e, PathProblem::Missing(_))
    {
        return Err(e.into());
    }
    let asked = PeerAssessRequest {
        image_path: req.image_path.clone(),
        full,
    };
    let (mine, theirs) = tokio::join!(own(app, &req.image_path, full), peers(app, &asked));
    let mine = mine?;
    let mut checks = mine.checks.clone();
    let (mut mode, mut to_version) = (mine.mode, mine.to_version.clone());
    let mut skews: Vec<(u32, i64, u64)> = vec![];
    for (id, answer) in theirs {
        match answer {
            Ok((a, skew, spread)) => {
                mode = mode.or(a.mode);
                to_version = to_version.or(a.to_version);
                checks.extend(a.checks);
                skews.push((id, skew, spread));
            }
            Err(why) => checks.push(Check::new(
                CheckName::NodesOnline,
                Some(id),
                Verdict::Fail,
                format!("node {id} did not answer for its checks: {why}"),
            )),
        }
    }
    if !checks
        .iter()
        .any(|c| c.name == CheckName::Bundle && c.result != Verdict::Warn)
    {
        checks.push(Check::new(
            CheckName::Bundle,
            None,
            Verdict::Fail,
            format!(
                "no node has {}: upload it first (qq upgrade_upload)",
                req.image_path
            ),
        ));
    }
    checks.extend(cluster_checks(app, req, &skews).await?);
    Ok(Assessment {
        schema: ASSESSMENT_SCHEMA.into(),
        image_path: req.image_path.clone(),
        mode,
        to_version,
        result: worst(&checks),
        checks,
    })
}

type PeerAnswer = Result<(NodeAssessment, i64, u64), String>;

/// The other nodes' checks, at once: each answer with its clock's offset from
/// this node's (ms) and the offset's uncertainty (half the round trip).
async fn peers(app: &Shared, asked: &PeerAssessRequest) -> Vec<(u32, PeerAnswer)> {
    let Some(dir) = app.cluster.dir.clone() else {
        return vec![];
    };
    let c = &app.cluster;
    let body = serde_json::to_vec(asked).unwrap_or_default();
    let mut tasks = vec![];
    for peer in crate::fetch::peers(&c.membership.spec.nodes, c.membership.node_id) {
        let (peer, dir, body) = (peer.clone(), dir.clone(), body.clone());
        tasks.push((
            peer.id,
            tokio::task::spawn_blocking(move || -> PeerAnswer {
                let t0 = qcluster::plan::now_ms();
                let started = Instant::now();
                let r = crate::fetch::client_for(&peer, &dir, NODE_LIMIT)
                    .and_then(|mut cl| cl.request("POST", PEER_ASSESS, Some(&body)))
                    .map_err(|e| qutil::chain(&e))?;
                let spread = started.elapsed().as_millis() as u64 / 2;
                if r.status != 200 {
                    return Err(format!(
                        "it answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
                let a: NodeAssessment =
                    serde_json::from_slice(&r.body).map_err(|e| format!("its answer: {e}"))?;
                let skew = a.now_ms as i64 - (t0 + spread) as i64;
                Ok((a, skew, spread))
            }),
        ));
    }
    let mut out = vec![];
    for (id, t) in tasks {
        out.push((id, t.await.unwrap_or_else(|e| Err(e.to_string()))));
    }
    out
}

/// The cluster's checks.
async fn cluster_checks(
    app: &Shared,
    req: &AssessRequest,
    skews: &[(u32, i64, u64)],
) -> Result<Vec<Check>, ApiError> {
    let spec = &app.cluster.membership.spec;
    let registered = store(app)?.nodes_seen().await?;
    let mut out = vec![];
    let online = |id: u32| registered.iter().any(|r| r.id == id);
    let offline: Vec<String> = spec
        .nodes
        .iter()
        .filter(|n| !online(n.id))
        .map(|n| format!("node {} ({})", n.id, n.name))
        .collect();
    out.push(if offline.is_empty() {
        Check::new(
            CheckName::NodesOnline,
            None,
            Verdict::Pass,
            format!("all {} nodes online", spec.nodes.len()),
        )
    } else {
        Check::new(
            CheckName::NodesOnline,
            None,
            Verdict::Fail,
            format!("offline: {}", offline.join(", ")),
        )
    });
    let up: Vec<u32> = registered.iter().map(|r| r.id).collect();
    out.push(quorum(app, req, &up).await?);
    out.push(data_protection(app).await);
    let worst_skew = skews
        .iter()
        .map(|(id, s, u)| (*id, s.unsigned_abs().saturating_sub(*u)))
        .max_by_key(|(_, s)| *s);
    out.push(match worst_skew {
        None => Check::new(CheckName::ClockSkew, None, Verdict::Pass, "one node answered: nothing to compare"),
        Some((id, s)) if s >= SKEW_FAIL_MS => Check::new(
            CheckName::ClockSkew,
            Some(id),
            Verdict::Fail,
            format!("node {id}'s clock is at least {s} ms from this node's: tokens, leases and settle periods depend on it"),
        ),
        Some((id, s)) if s >= SKEW_WARN_MS => Check::new(
            CheckName::ClockSkew,
            Some(id),
            Verdict::Warn,
            format!("node {id}'s clock is at least {s} ms from this node's"),
        ),
        Some((_, s)) => Check::new(
            CheckName::ClockSkew,
            None,
            Verdict::Pass,
            format!("the clocks agree within {} ms", s.max(1)),
        ),
    });
    let mut releases: Vec<String> = registered
        .iter()
        .map(|r| {
            r.installed
                .as_ref()
                .map_or_else(|| "?".into(), ToString::to_string)
        })
        .collect();
    releases.sort();
    releases.dedup();
    out.push(if releases.len() <= 1 {
        Check::new(
            CheckName::MixedReleases,
            None,
            Verdict::Pass,
            format!(
                "every online node runs {}",
                releases.first().map_or("?", String::as_str)
            ),
        )
    } else {
        let each: Vec<String> = registered
            .iter()
            .map(|r| {
                format!(
                    "node {}: {}",
                    r.id,
                    r.installed
                        .as_ref()
                        .map_or_else(|| "?".into(), ToString::to_string)
                )
            })
            .collect();
        Check::new(
            CheckName::MixedReleases,
            None,
            Verdict::Warn,
            format!(
                "the nodes run different releases ({}): an earlier upgrade stopped part way",
                each.join(", ")
            ),
        )
    });
    Ok(out)
}

/// etcd keeps a quorum of its voting members while the largest batch is down
/// (a complete reboot takes every member down: said, not failed).
async fn quorum(app: &Shared, req: &AssessRequest, online: &[u32]) -> Result<Check, ApiError> {
    let online = |id: u32| online.contains(&id);
    let spec = &app.cluster.membership.spec;
    if app.cluster.is_alone() {
        return Ok(Check::new(
            CheckName::EtcdQuorum,
            None,
            Verdict::Pass,
            "a node alone: its state is its own",
        ));
    }
    let voters: Vec<u32> = spec.voters().iter().map(|n| n.id).collect();
    let need = voters.len() / 2 + 1;
    let up = voters.iter().filter(|v| online(**v)).count();
    if up < need {
        return Ok(Check::new(
            CheckName::EtcdQuorum,
            None,
            Verdict::Fail,
            format!(
                "{up} of {} etcd members' nodes online, {need} make a quorum",
                voters.len()
            ),
        ));
    }
    let Some(k) = req.num_nodes_to_reboot else {
        return Ok(Check::new(
            CheckName::EtcdQuorum,
            None,
            Verdict::Pass,
            format!(
                "{up} of {} members up; a complete reboot takes them all down at once and the cluster waits for them",
                voters.len()
            ),
        ));
    };
    let batches = planned_batches(app, k).await?;
    let most = batches
        .iter()
        .map(|b| {
            b.iter()
                .filter(|id| voters.contains(id) && online(**id))
                .count()
        })
        .max()
        .unwrap_or(0);
    Ok(if up - most >= need {
        Check::new(
            CheckName::EtcdQuorum,
            None,
            Verdict::Pass,
            format!(
                "{up} of {} members up; with the largest batch down {} remain ({need} make a quorum)",
                voters.len(),
                up - most
            ),
        )
    } else {
        Check::new(
            CheckName::EtcdQuorum,
            None,
            Verdict::Fail,
            format!(
                "{up} of {} members up; a batch takes {most} down, leaving {} of the {need} a quorum needs",
                voters.len(),
                up - most
            ),
        )
    })
}

/// The restriper idle and no data at risk: data at risk fails (a node's
/// data is being rebuilt); a restriper running without risk, or one that could
/// not be asked, is a warning (the reboots' data-safety gate waits for it).
async fn data_protection(app: &Shared) -> Check {
    let check = |v, m: String| Check::new(CheckName::DataProtection, None, v, m);
    match &app.safety {
        Source::Probe(argv) => {
            let argv = argv.clone();
            let r = tokio::task::spawn_blocking(move || crate::restriper::probe(&argv)).await;
            match r {
                Ok(Ok(s)) if s.data_at_risk => check(
                    Verdict::Fail,
                    format!(
                        "data is at risk: the restriper is {} ({} % complete)",
                        s.state, s.percent_complete
                    ),
                ),
                Ok(Ok(s)) if s.state == "RUNNING" => check(
                    Verdict::Warn,
                    format!(
                        "the restriper is running ({} % complete), no data at risk: the reboots wait for it",
                        s.percent_complete
                    ),
                ),
                Ok(Ok(_)) => check(
                    Verdict::Pass,
                    "the restriper is idle and no data is at risk".into(),
                ),
                Ok(Err(e)) => check(
                    Verdict::Warn,
                    format!(
                        "the restriper could not be asked: {e}; the reboots wait until it answers"
                    ),
                ),
                Err(e) => check(Verdict::Warn, format!("the restriper probe: {e}")),
            }
        }
        Source::Simulated { .. } => check(Verdict::Pass, "a simulated restriper".into()),
        Source::Missing => check(
            Verdict::Warn,
            format!(
                "{}: rolling reboots are refused; a complete reboot still works",
                crate::restriper::MISSING
            ),
        ),
    }
}
