//! A node's own checks before an upgrade (`qapi::assess`), each answered on
//! its own so that one failing does not hide the others: the bundle as this
//! node reads it (its signature, and with `full` every payload's digest), the
//! release rules, the settle period, room to stage the container, the inactive
//! slot, the firmware plan. The same functions as the prepare's (`checks`,
//! `prepare::slot_image`, the firmware plan); nothing is written.

use std::io::BufReader;
use std::path::Path;

use qapi::assess::{Check, CheckName, NodeAssessment, Verdict};
use qimg::{BundleReader, ComponentKind, NoProgress};

use crate::Error;
use crate::agent::Agent;
use crate::checks::{self, NodeFacts};
use crate::prepare::BundleSource;

/// How much room beyond the container's size staging wants (a tenth).
const MARGIN_PERCENT: u64 = 10;

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// This node's checks of the bundle `source` reads, named `path` (`full`:
/// read every payload and check its digest, as an assessment does; a prepare
/// checks them as it writes). `id` names the node in each check.
pub fn assess(
    agent: &Agent,
    path: &Path,
    source: BundleSource,
    full: bool,
    id: Option<u32>,
) -> NodeAssessment {
    let mut out = NodeAssessment {
        now_ms: 0,
        mode: None,
        to_version: None,
        checks: vec![],
    };
    out.checks = checks(agent, path, source, full, id, &mut out);
    out.now_ms = qutil::now_ms();
    out
}

fn checks(
    agent: &Agent,
    path: &Path,
    source: BundleSource,
    full: bool,
    id: Option<u32>,
    seen: &mut NodeAssessment,
) -> Vec<Check> {
    let check = |name, result, message: String| Check::new(name, id, result, message);
    let node = agent.node();
    let opened = source.open(path, None).and_then(|(f, size)| {
        let keys = node.keys()?;
        let (r, _) = BundleReader::open_verified(BufReader::with_capacity(1 << 20, f), &keys)
            .map_err(|source| Error::Bundle {
                path: path.to_owned(),
                source,
            })?;
        Ok((r, size))
    });
    let (reader, size) = match opened {
        Ok(r) => r,
        Err(e) => {
            return vec![check(
                CheckName::Bundle,
                Verdict::Fail,
                format!("{}: nothing else was checked", crate::chain(&e)),
            )];
        }
    };
    let m = reader.manifest().clone();
    seen.to_version = Some(m.release.version.to_string());
    let mut out = vec![];
    if full {
        let n = m.components.len();
        out.push(match reader.finish(&NoProgress) {
            Ok(_) => check(
                CheckName::Bundle,
                Verdict::Pass,
                format!(
                    "signed by a trusted key; its {n} payloads match their digests ({} read)",
                    mb(size)
                ),
            ),
            Err(e) => check(
                CheckName::Bundle,
                Verdict::Fail,
                format!("{}: {}", path.display(), qutil::chain(&e)),
            ),
        });
    } else {
        out.push(check(
            CheckName::Bundle,
            Verdict::Pass,
            "signed by a trusted key (the payloads are checked as the prepare writes them)".into(),
        ));
    }
    let mut io = match node.open() {
        Ok(io) => io,
        Err(e) => {
            out.push(check(
                CheckName::InactiveSlot,
                Verdict::Fail,
                format!("the node's disk: {}", crate::chain(&e)),
            ));
            return out;
        }
    };
    let running = match node.running(&mut io) {
        Ok(r) => r,
        Err(e) => {
            out.push(check(
                CheckName::ReleaseRules,
                Verdict::Fail,
                format!("what the node runs: {}", crate::chain(&e)),
            ));
            return out;
        }
    };
    let facts = NodeFacts {
        product: running.product.clone(),
        model: node.config.model.clone(),
        target: node.config.target,
        installed: running.version.clone(),
    };
    out.push(match checks::check(&m, &facts) {
        Ok(()) => check(
            CheckName::ReleaseRules,
            Verdict::Pass,
            format!(
                "{} {} on a {} node: {} -> {}",
                m.release.product,
                checks::target_name(m.release.target),
                facts.model,
                facts
                    .installed
                    .as_ref()
                    .map_or_else(|| "?".into(), ToString::to_string),
                m.release.version
            ),
        ),
        Err(why) => check(CheckName::ReleaseRules, Verdict::Fail, why.to_string()),
    });
    let last = agent.state().ok().and_then(|s| s.last_commit);
    out.push(match checks::settle(&m, last.as_ref(), crate::now()) {
        Some((_, why)) => check(CheckName::SettlePeriod, Verdict::Fail, why),
        None => check(
            CheckName::SettlePeriod,
            Verdict::Pass,
            "no settle period holds it back".into(),
        ),
    });
    out.push(free_space(node, &m, id));
    let mode = checks::mode_on_node(&m, &running.platform_version).mode;
    seen.mode = Some(mode);
    if mode == crate::wire::Mode::Platform {
        let slot = running.slot.other();
        out.push(match crate::prepare::slot_image(&m) {
            None => check(
                CheckName::InactiveSlot,
                Verdict::Fail,
                "a platform upgrade needs a platform-root and boot-uki".into(),
            ),
            Some(img) => match bootctl::slot::check(&mut io.disk, slot, &img) {
                Ok(p) => check(
                    CheckName::InactiveSlot,
                    Verdict::Pass,
                    format!(
                        "slot {slot} reads and holds the image ({} + {} of {} + {})",
                        mb(img.hash_offset),
                        mb(img.size - img.hash_offset),
                        mb(p.root.2),
                        mb(p.verity.2)
                    ),
                ),
                Err(e) => check(
                    CheckName::InactiveSlot,
                    Verdict::Fail,
                    format!("slot {slot}: {}", qutil::chain(&e)),
                ),
            },
        });
    }
    out.push(
        match crate::prepare::firmware_plan(node, &m, &running.platform_version) {
            Ok(None) => check(
                CheckName::Firmware,
                Verdict::Pass,
                "nothing to flash on this node".into(),
            ),
            Ok(Some((plan, _))) => {
                let flash: Vec<&str> = plan
                    .iter()
                    .filter(|i| i.action == firmware::plan::Action::Flash)
                    .map(|i| i.component.as_str())
                    .collect();
                check(
                    CheckName::Firmware,
                    Verdict::Pass,
                    if flash.is_empty() {
                        "every device already runs the offered firmware".into()
                    } else {
                        format!(
                            "flashes {}, each compatible with {} (the release a fallback boots)",
                            flash.join(", "),
                            running.platform_version
                        )
                    },
                )
            }
            Err(e) => check(CheckName::Firmware, Verdict::Fail, crate::chain(&e)),
        },
    );
    out
}

/// Room on the file system of the node's state (where the container is staged)
/// for the bundle's container and a margin.
fn free_space(node: &crate::node::Node, m: &qimg::Manifest, id: Option<u32>) -> Check {
    let need: u64 = m
        .components
        .iter()
        .filter(|c| matches!(c.kind, ComponentKind::Container { .. }))
        .map(|c| c.size)
        .sum();
    let want = need + need * MARGIN_PERCENT / 100;
    let dir = &node.config.state;
    match qutil::fs::free_bytes(dir) {
        Ok(free) if free >= want => Check::new(
            CheckName::FreeSpace,
            id,
            Verdict::Pass,
            format!("{} free for a {} container", mb(free), mb(need)),
        ),
        Ok(free) => Check::new(
            CheckName::FreeSpace,
            id,
            Verdict::Fail,
            format!(
                "{} free on {}, the container needs {} and a {MARGIN_PERCENT} % margin",
                mb(free),
                dir.display(),
                mb(need)
            ),
        ),
        Err(e) => Check::new(
            CheckName::FreeSpace,
            id,
            Verdict::Fail,
            format!("the free space of {}: {e}", dir.display()),
        ),
    }
}
