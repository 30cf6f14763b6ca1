//! The commit phase, and the decision after the reboot of a platform upgrade. The
//! [`crate::agent::Agent`] takes the lock, loads the state and calls these.
//!
//! Instant: stop the old container, make the new one active, start it, wait until
//! it is healthy; an unhealthy one is stopped and the old one started again. The
//! downtime (stop of the old → new healthy) is measured and recorded.
//!
//! Platform: the staged entry becomes the new slot's entry with
//! [`bootctl::entries::DEFAULT_TRIES`] tries (one rename; if the loader's variables
//! would still pick another entry, `LoaderEntryOneShot` is set), the boot id is
//! recorded, and the machine is asked to reboot. After the boot ([`check_boot`]): in
//! the new slot, the health gate (platform, then the new container) decides:
//! healthy → bless the entry, `UPGRADE_COMMITTED`; unhealthy → mark the entry bad
//! and reboot into the old slot. Back in the old slot, the state says
//! `UPGRADE_ERROR_ROLLED_BACK` with the reason.
//!
//! Every path ends in one [`CommitOutcome`]; only [`CommitOutcome::Committed`] is done.

use std::time::{Duration, Instant};

use bootctl::entries::{self, DEFAULT_TRIES, EntryState};
use bootctl::model::EfiVars;
use qimg::Progress;
use serde::{Deserialize, Serialize};

use crate::container::{InstalledContainers, Runtime};
use crate::error::{Error, boot_err, chain};
use crate::machine::Machine;
use crate::node::{Node, Opened};
use crate::state::{BootId, CommitStep, ErrorState, Failure, LastCommit, NodeState, Plan, Stage};
use crate::store::Store;

/// How a commit ended, the same for every path and every kind of node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommitOutcome {
    /// The node runs the new release.
    Committed {
        /// The container swap's downtime (instant upgrades), in milliseconds.
        downtime_ms: Option<u64>,
    },
    /// The node was asked to reboot (in boot `boot_id`); the boot path decides.
    Rebooting {
        /// The boot the reboot was asked for in.
        boot_id: BootId,
    },
    /// The new platform was given up on; the node runs the old release.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The commit failed; the node runs the old release.
    Failed {
        /// Why.
        reason: String,
    },
}

impl CommitOutcome {
    /// Only a committed node is done.
    pub fn is_committed(&self) -> bool {
        matches!(self, CommitOutcome::Committed { .. })
    }

    /// The outcome a state records, if the commit has ended: `None` while it runs
    /// or waits for a reboot, and for states no commit produced.
    pub fn of(st: &NodeState) -> Option<CommitOutcome> {
        match (&st.stage, &st.failure) {
            (Stage::Committed(_), _) => Some(CommitOutcome::Committed {
                downtime_ms: st.downtime_ms,
            }),
            (Stage::Committing(_, s), _) => s
                .boot_id()
                .map(|b| CommitOutcome::Rebooting { boot_id: b.clone() }),
            (Stage::Idle { .. }, Some(f)) if f.kind == ErrorState::RolledBack => {
                Some(CommitOutcome::RolledBack {
                    reason: f.message.clone(),
                })
            }
            (Stage::Idle { .. }, Some(f)) if f.kind == ErrorState::CommitFailed => {
                Some(CommitOutcome::Failed {
                    reason: f.message.clone(),
                })
            }
            _ => None,
        }
    }
}

/// What the commit functions act with (one operation's worth).
pub(crate) struct Ctx<'a> {
    pub node: &'a Node,
    pub store: &'a Store,
    pub machine: &'a dyn Machine,
    pub runtime: &'a dyn Runtime,
    pub obs: &'a dyn Progress,
}

fn health_timeout(node: &Node) -> Duration {
    Duration::from_secs(node.config.health_timeout_secs)
}

fn committed(st: &mut NodeState, plan: &Plan, details: String) {
    st.details = details;
    st.last_commit = Some(LastCommit {
        at: crate::now(),
        from: plan.from.version.clone(),
        to: plan.to.version.clone(),
    });
    st.stage = Stage::Committed(plan.clone());
}

/// Swaps the container (or, resuming, makes sure the new one runs) and records the
/// outcome. The state is `Committing(plan, Swap)` on entry.
pub(crate) fn finish_instant(
    cx: &Ctx,
    st: &mut NodeState,
    plan: &Plan,
) -> Result<CommitOutcome, Error> {
    let (node, store, runtime, obs) = (cx.node, cx.store, cx.runtime, cx.obs);
    let (from, to) = (&plan.from.version, &plan.to.version);
    let containers = node.containers();
    let before = containers.installed()?;
    let restore_to = if before.active.as_ref() == Some(to) {
        // Resuming after a crash between activation and the health check.
        InstalledContainers {
            active: before.previous.clone(),
            previous: None,
        }
    } else {
        before.clone()
    };
    obs.step(&format!("stopping container {from}"));
    let t0 = Instant::now();
    runtime.stop()?;
    containers.activate(to)?;
    obs.step(&format!("starting container {to}"));
    let started = runtime
        .start(to, &containers.path(to))
        .and_then(|()| runtime.wait_healthy(to, health_timeout(node)));
    let downtime = t0.elapsed();
    let ms = downtime.as_secs_f64() * 1e3;
    st.downtime_ms = Some(downtime.as_millis() as u64);
    match started {
        Ok(()) => {
            obs.step(&format!("container {to} healthy: {ms:.1} ms of downtime"));
            committed(
                st,
                plan,
                format!(
                    "instant upgrade from {from} to {to}: container swapped with {ms:.1} ms of downtime"
                ),
            );
            store.put(st)?;
            containers.prune()?;
            Ok(CommitOutcome::Committed {
                downtime_ms: st.downtime_ms,
            })
        }
        Err(e) => {
            obs.step(&format!("container {to} unhealthy: rolling back"));
            runtime.stop()?;
            containers.restore(&restore_to)?;
            let back = restore_to.active.clone().unwrap_or_else(|| from.clone());
            runtime
                .start(&back, &containers.path(&back))
                .and_then(|()| runtime.wait_healthy(&back, health_timeout(node)))?;
            let reason = format!(
                "{}; rolled back to container {back} ({:.1} ms of downtime)",
                chain(&e),
                t0.elapsed().as_secs_f64() * 1e3
            );
            st.stage = Stage::Idle {
                last: Some(plan.clone()),
            };
            st.failure = Some(Failure {
                kind: ErrorState::CommitFailed,
                message: reason.clone(),
            });
            st.details = "commit failed: the old container runs".into();
            store.put(st)?;
            Ok(CommitOutcome::Failed { reason })
        }
    }
}

/// Makes the new slot boot next, records the boot id and asks the machine to
/// reboot. Idempotent: an interrupted set-next is simply run again.
pub(crate) fn set_next_and_reboot(
    cx: &Ctx,
    st: &mut NodeState,
    plan: &Plan,
    io: &mut Opened,
) -> Result<CommitOutcome, Error> {
    let (node, store, obs) = (cx.node, cx.store, cx.obs);
    let slot = plan.to.slot;
    st.stage = Stage::Committing(plan.clone(), CommitStep::SetNext);
    st.details = format!("making slot {slot} boot next");
    store.put(st)?;
    obs.step(&format!("making slot {slot} boot next"));
    let product = io.product.clone();
    let staged = entries::staged(io.esp.as_mut(), &product, slot)
        .map_err(boot_err("reading staged entries"))?;
    if !staged.is_empty() {
        entries::activate_staged(io.esp.as_mut(), &product, slot, DEFAULT_TRIES)
            .map_err(boot_err("activating the new entry"))?;
    }
    let vars = node.vars();
    let get = |n: &str| vars.get(n).map_err(boot_err("reading loader variables"));
    let efi = EfiVars {
        entry_oneshot: get("LoaderEntryOneShot")?,
        entry_default: get("LoaderEntryDefault")?,
        entry_last_booted: get("LoaderEntryLastBooted")?,
    };
    let (found, sel) =
        entries::next(io.esp.as_mut(), &product, &efi).map_err(boot_err("reading boot entries"))?;
    let new = found
        .iter()
        .find(|e| e.slot == Some(slot) && !e.entry.is_bad())
        .ok_or_else(|| Error::Booted {
            problem: format!("slot {slot} has no bootable entry to commit to"),
        })?;
    let chosen = sel.chosen.map(|i| &found[i]);
    if chosen.map(|c| &c.entry.file) != Some(&new.entry.file) {
        vars.set("LoaderEntryOneShot", &new.entry.id)
            .map_err(boot_err("setting LoaderEntryOneShot"))?;
    }
    let kept = Some(cx.machine.kept_logs());
    reboot(cx, st, plan, |boot_id| CommitStep::Reboot { boot_id, kept })
}

/// Rolls a committed platform upgrade back (a cluster-wide rollback: another node
/// failed): the previous slot must still have a good entry (checked before anything
/// changes); the running entry is marked bad so the loader boots the previous slot,
/// the previous container (kept since the commit) becomes the active one, and the
/// machine reboots, recorded as a fallback with `reason`. The boot in the previous
/// slot records the rollback ([`check_boot`]). The node serves until the reboot.
pub(crate) fn revert_platform(
    cx: &Ctx,
    st: &mut NodeState,
    plan: &Plan,
    io: &mut Opened,
    reason: &str,
) -> Result<CommitOutcome, Error> {
    let running = cx.node.running(io)?;
    if running.slot != plan.to.slot {
        return Err(Error::Booted {
            problem: format!(
                "the node runs slot {}, not slot {} of the upgrade to roll back",
                running.slot, plan.to.slot
            ),
        });
    }
    let found = entries::scan(io.esp.as_mut(), &running.product)
        .map_err(boot_err("reading boot entries"))?;
    if !found
        .iter()
        .any(|e| e.slot == Some(plan.from.slot) && !e.entry.is_bad())
    {
        return Err(Error::Booted {
            problem: format!(
                "slot {} has no bootable entry to go back to",
                plan.from.slot
            ),
        });
    }
    cx.obs.step(&format!(
        "going back to slot {} ({})",
        plan.from.slot, plan.from.version
    ));
    cx.node.containers().restore(&InstalledContainers {
        active: Some(plan.from.version.clone()),
        previous: Some(plan.to.version.clone()),
    })?;
    // The running entry was blessed (renamed) since the loader named it: every
    // good entry of the new slot is marked bad.
    for e in found
        .iter()
        .filter(|e| e.slot == Some(plan.to.slot) && !e.entry.is_bad())
    {
        entries::mark_bad(io.esp.as_mut(), &e.entry.file)
            .map_err(boot_err("marking the new entry bad"))?;
    }
    reboot(cx, st, plan, |boot_id| CommitStep::Fallback {
        boot_id,
        reason: format!("rolled back with the cluster: {reason}"),
    })
}

/// Records that the machine reboots from this boot (`step`) and asks it to.
fn reboot(
    cx: &Ctx,
    st: &mut NodeState,
    plan: &Plan,
    step: impl FnOnce(BootId) -> CommitStep,
) -> Result<CommitOutcome, Error> {
    let boot_id = cx.machine.boot_id()?;
    let step = step(boot_id.clone());
    st.details = match &step {
        CommitStep::Fallback { reason, .. } => {
            format!("rebooting back into slot {}: {reason}", plan.from.slot)
        }
        _ => format!(
            "rebooting into slot {} (platform {}), {DEFAULT_TRIES} tries",
            plan.to.slot, plan.to.platform_version
        ),
    };
    st.stage = Stage::Committing(plan.clone(), step);
    cx.store.put(st)?;
    cx.obs.step("asking the machine to reboot");
    cx.machine.reboot()?;
    Ok(CommitOutcome::Rebooting { boot_id })
}

/// Starts the active container if nothing runs.
pub(crate) fn ensure_running(node: &Node, runtime: &dyn Runtime) -> Result<(), Error> {
    let containers = node.containers();
    if let Some(v) = containers.installed()?.active
        && runtime.running()?.is_none()
    {
        runtime.start(&v, &containers.path(&v))?;
        runtime.wait_healthy(&v, health_timeout(node))?;
    }
    Ok(())
}

/// The post-boot decision of a platform commit (the node rebooted since it asked
/// to): bless, fall back (mark bad and reboot: `Rebooting`), or rolled back.
pub(crate) fn check_boot(
    cx: &Ctx,
    st: &mut NodeState,
    plan: &Plan,
    io: &mut Opened,
) -> Result<CommitOutcome, Error> {
    let (node, store, machine, runtime, obs) = (cx.node, cx.store, cx.machine, cx.runtime, cx.obs);
    let (from, to) = (&plan.from, &plan.to);
    let running = node.running(io)?;
    let containers = node.containers();
    if running.slot == to.slot {
        obs.step(&format!("booted slot {}: health check", to.slot));
        let version = &to.version;
        let gate = machine
            .platform_health(running.slot)
            .map_err(|source| Error::Unhealthy {
                slot: running.slot,
                source,
            })
            .and_then(|()| {
                runtime.stop()?;
                containers.activate(version)?;
                runtime
                    .start(version, &containers.path(version))
                    .and_then(|()| runtime.wait_healthy(version, health_timeout(node)))
            });
        match gate {
            Ok(()) => {
                entries::bless(io.esp.as_mut(), &running.product, &running.entry)
                    .map_err(boot_err("blessing the new entry"))?;
                let mut details = format!(
                    "platform upgrade from {} to {}: slot {} (platform {}) booted healthy and was blessed",
                    from.version, to.version, to.slot, to.platform_version
                );
                if let Some(fw) = firmware_results(node, io)? {
                    details.push_str(&format!("; firmware: {fw}"));
                }
                committed(st, plan, details);
                store.put(st)?;
                containers.prune()?;
                Ok(CommitOutcome::Committed { downtime_ms: None })
            }
            Err(why) => {
                obs.step(&format!("slot {} unhealthy: falling back", to.slot));
                runtime.stop()?;
                containers.restore(&InstalledContainers {
                    active: Some(from.version.clone()),
                    previous: None,
                })?;
                entries::mark_bad(io.esp.as_mut(), &running.entry)
                    .map_err(boot_err("marking the new entry bad"))?;
                let reason = match &why {
                    Error::Unhealthy { source, .. } => format!("health check failed: {source}"),
                    other => format!("health check failed: {}", chain(other)),
                };
                reboot(cx, st, plan, |boot_id| CommitStep::Fallback {
                    boot_id,
                    reason,
                })
            }
        }
    } else {
        let reason = match &st.stage {
            Stage::Committing(_, CommitStep::Fallback { reason, .. }) => reason.clone(),
            stage => {
                let kept = match stage {
                    Stage::Committing(_, CommitStep::Reboot { kept, .. }) => kept.as_ref(),
                    _ => None,
                };
                let s = bootctl::status::status(io.esp.as_mut(), &running.product, None, None)
                    .map_err(boot_err("reading boot entries"))?;
                match s
                    .slots
                    .iter()
                    .find(|x| x.slot == to.slot)
                    .and_then(|x| x.state)
                {
                    Some(EntryState::Bad { done }) => {
                        match kept.and_then(|k| machine.failed_boot_reason(k)) {
                            Some(why) => format!("{done} tries exhausted; {why}"),
                            None => format!("{done} tries exhausted"),
                        }
                    }
                    Some(EntryState::Trying { left, .. }) => {
                        format!("not booted ({left} tries left; the loader chose another entry)")
                    }
                    _ => "its entry is gone".into(),
                }
            }
        };
        ensure_running(node, runtime)?;
        let message = format!(
            "slot {}: {reason}, booted slot {} {}",
            to.slot, running.slot, from.version
        );
        st.stage = Stage::Idle {
            last: Some(plan.clone()),
        };
        st.failure = Some(Failure {
            kind: ErrorState::RolledBack,
            message: message.clone(),
        });
        st.details = format!(
            "rolled back: the node runs {} on platform {}",
            from.version, running.platform_version
        );
        store.put(st)?;
        Ok(CommitOutcome::RolledBack { reason: message })
    }
}

/// After a platform reboot: the outcome of firmware staged for activation at reboot
/// (UEFI capsules), from qfirmware's journal and the devices' versions now; staged
/// capsule files that reached a final state leave the ESP. `None` without firmware.
fn firmware_results(node: &Node, io: &mut Opened) -> Result<Option<String>, Error> {
    let Some(fc) = &node.config.firmware else {
        return Ok(None);
    };
    let journal_dir = node.config.state.join("firmware");
    if !journal_dir.exists() {
        return Ok(None);
    }
    let config = firmware::prepare::NodeConfig::load(&fc.devices).map_err(Error::Firmware)?;
    let devices =
        firmware::inventory::inventory(&fc.sysroot, &config.probes()).map_err(Error::Firmware)?;
    let journal = firmware::journal::Journal::open(&journal_dir).map_err(Error::Firmware)?;
    let results = firmware::flash::results(&journal, &devices, &fc.sysroot, Some(io.esp.as_mut()))
        .map_err(Error::Firmware)?;
    if results.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        results
            .iter()
            .map(|r| match &r.step {
                firmware::journal::Step::Failed { reason } => {
                    format!("{} failed: {reason}", r.component)
                }
                s => format!("{} {}", r.component, s.name()),
            })
            .collect::<Vec<_>>()
            .join(", "),
    ))
}
