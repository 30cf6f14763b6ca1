//! The commit phase, and what happens after the reboot of a platform upgrade.
//!
//! Instant: stop the old container, make the new one active, start it, wait until
//! it is healthy; an unhealthy one is stopped and the old one started again. The
//! downtime (stop of the old → new healthy) is measured and recorded.
//!
//! Platform: the staged entry becomes the new slot's entry with
//! [`bootctl::entries::DEFAULT_TRIES`] tries (one rename; if the loader's variables
//! would still pick another entry, `LoaderEntryOneShot` is set), the boot id is
//! recorded, and the node reboots through its hook. After the boot
//! ([`after_boot`], run by `qq boot_check` from a unit at boot, or right away on a
//! simulated node): in the new slot, the health gate (platform, then the new
//! container) decides: healthy → bless the entry, `UPGRADE_COMMITTED`; unhealthy →
//! mark the entry bad and reboot into the old slot. Back in the old slot, the
//! record says `UPGRADE_ERROR_ROLLED_BACK` with the reason.

use std::time::{Duration, Instant};

use bootctl::entries::{self, DEFAULT_TRIES, EntryState};
use bootctl::layout::Slot;
use bootctl::model::EfiVars;

use crate::container::{Containers, Runtime, runtime};
use crate::node::Node;
use crate::state::{ErrorState, LastCommit, Mode, Phase, Record, Store};
use crate::{Error, Observer, boot_err};

fn slot_of(c: char) -> Slot {
    if c == 'a' { Slot::A } else { Slot::B }
}

fn rt(node: &Node) -> Box<dyn Runtime> {
    runtime(&node.config.runtime, &node.config.state.join("run"))
}

fn health_timeout(node: &Node) -> Duration {
    Duration::from_secs(node.config.health_timeout_secs)
}

/// Commits the prepared upgrade. Returns the record after the commit: committed,
/// or (platform upgrade on a real node) waiting for the reboot.
pub fn commit(node: &Node, obs: &dyn Observer) -> Result<Record, Error> {
    let store = node.store()?;
    let lock = store.lock()?;
    let mut r = store.load()?;
    let was_committing = r.state == Phase::Committing;
    crate::prepare::recover(node, &store, &mut r, obs)?;
    if was_committing && r.state != Phase::Committing {
        // Recovery finished the interrupted commit: that is this commit's outcome.
        return Ok(r);
    }
    let resumable = r.state == Phase::Committing && r.mode == Some(Mode::Platform);
    if r.state != Phase::Prepared && !resumable {
        return Err(Error::WrongState {
            op: "commit",
            state: r.state.name().into(),
            hint: "nothing is prepared: run `qq upgrade_cluster prepare --path BUNDLE`".into(),
        });
    }
    match r.mode {
        Some(Mode::Instant) => {
            r.state = Phase::Committing;
            r.step = Some("swap".into());
            r.details = "swapping the container".into();
            store.put(&mut r)?;
            finish_instant(node, &store, &mut r, obs)?;
            Ok(r)
        }
        _ => {
            commit_platform(node, &store, &mut r, obs)?;
            drop(lock);
            reboot(node, obs)
        }
    }
}

/// Swaps the container (or, resuming, makes sure the new one runs) and records the
/// outcome.
fn finish_instant(
    node: &Node,
    store: &Store,
    r: &mut Record,
    obs: &dyn Observer,
) -> Result<(), Error> {
    let (from, to) = (
        r.from.clone().expect("set by prepare"),
        r.to.clone().expect("set by prepare"),
    );
    let containers = Containers::new(&node.config.state);
    let runtime = rt(node);
    let before = containers.installed()?;
    let restore_to = if before.active.as_deref() == Some(&to.version) {
        // Resuming after a crash between activation and the health check.
        crate::container::InstalledContainers {
            active: before.previous.clone(),
            previous: None,
        }
    } else {
        before.clone()
    };
    obs.step(&format!("stopping container {}", from.version));
    let t0 = Instant::now();
    runtime.stop()?;
    containers.activate(&to.version)?;
    obs.step(&format!("starting container {}", to.version));
    let started = runtime
        .start(&to.version, &containers.path(&to.version))
        .and_then(|()| runtime.wait_healthy(&to.version, health_timeout(node)));
    let downtime = t0.elapsed();
    r.downtime_ms = Some(downtime.as_millis() as u64);
    r.step = None;
    match started {
        Ok(()) => {
            obs.step(&format!(
                "container {} healthy: {:.1} ms of downtime",
                to.version,
                downtime.as_secs_f64() * 1e3
            ));
            r.state = Phase::Committed;
            r.details = format!(
                "instant upgrade from {} to {}: container swapped with {:.1} ms of downtime",
                from.version,
                to.version,
                downtime.as_secs_f64() * 1e3
            );
            r.last_commit = Some(LastCommit {
                at: crate::now(),
                from: from.version.clone(),
                to: to.version.clone(),
            });
            store.put(r)?;
            containers.prune()?;
            Ok(())
        }
        Err(e) => {
            obs.step(&format!("container {} unhealthy: rolling back", to.version));
            runtime.stop()?;
            containers.restore(&restore_to)?;
            let back = restore_to.active.clone().unwrap_or(from.version.clone());
            runtime
                .start(&back, &containers.path(&back))
                .and_then(|()| runtime.wait_healthy(&back, health_timeout(node)))?;
            r.state = Phase::Idle;
            r.error_state = ErrorState::CommitFailed;
            r.error_message = format!(
                "{}; rolled back to container {back} ({:.1} ms of downtime)",
                crate::prepare::chain(&e),
                t0.elapsed().as_secs_f64() * 1e3
            );
            r.details = "commit failed: the old container runs".into();
            store.put(r)?;
            Err(e)
        }
    }
}

/// Makes the new slot boot next and records the boot id to reboot from.
fn commit_platform(
    node: &Node,
    store: &Store,
    r: &mut Record,
    obs: &dyn Observer,
) -> Result<(), Error> {
    let to = r.to.clone().expect("set by prepare");
    let slot = slot_of(to.slot);
    r.state = Phase::Committing;
    r.step = Some("set-next".into());
    r.details = format!("making slot {} boot next", to.slot);
    store.put(r)?;
    obs.step(&format!("making slot {} boot next", to.slot));
    let product = node.product()?;
    let mut esp = node.esp()?;
    let staged = entries::staged(esp.as_mut(), &product, slot)
        .map_err(boot_err("reading staged entries"))?;
    if !staged.is_empty() {
        entries::activate_staged(esp.as_mut(), &product, slot, DEFAULT_TRIES)
            .map_err(boot_err("activating the new entry"))?;
    }
    let vars = node.vars();
    let efi = EfiVars {
        entry_oneshot: vars.get("LoaderEntryOneShot").ok().flatten(),
        entry_default: vars.get("LoaderEntryDefault").ok().flatten(),
        entry_last_booted: vars.get("LoaderEntryLastBooted").ok().flatten(),
    };
    let (found, sel) =
        entries::next(esp.as_mut(), &product, &efi).map_err(boot_err("reading boot entries"))?;
    let new = found
        .iter()
        .find(|e| e.slot == Some(slot) && !e.entry.is_bad())
        .ok_or_else(|| Error::Reboot {
            reason: format!("slot {} has no bootable entry to commit to", to.slot),
        })?;
    let chosen = sel.chosen.map(|i| &found[i]);
    if chosen.map(|c| &c.entry.file) != Some(&new.entry.file) {
        vars.set("LoaderEntryOneShot", &new.entry.id)
            .map_err(boot_err("setting LoaderEntryOneShot"))?;
    }
    r.boot_id = Some(node.boot_id()?);
    r.step = Some("reboot".into());
    r.details = format!(
        "rebooting into slot {} (platform {}), {DEFAULT_TRIES} tries",
        to.slot, to.platform_version
    );
    store.put(r)
}

/// Reboots through the node's hook: a simulated node boots right away and the
/// post-boot check runs; a real node's reboot command is run and the record is
/// returned as it stands (the unit running `qq boot_check` continues after boot).
pub fn reboot(node: &Node, obs: &dyn Observer) -> Result<Record, Error> {
    if node.config.simulated {
        obs.step("rebooting (simulated)");
        crate::sim::reboot(node)?;
        return after_boot(node, obs);
    }
    let (cmd, args) = node.config.reboot.split_first().expect("checked at load");
    let status = std::process::Command::new(cmd)
        .args(args)
        .status()
        .map_err(crate::io_err("running the reboot command", cmd))?;
    if !status.success() {
        return Err(Error::Reboot {
            reason: format!("{} exited with {status}", node.config.reboot.join(" ")),
        });
    }
    node.store()?.load()
}

/// Resumes an interrupted commit (the caller holds the lock).
pub fn resume(node: &Node, store: &Store, r: &mut Record, obs: &dyn Observer) -> Result<(), Error> {
    match r.mode {
        Some(Mode::Instant) => match finish_instant(node, store, r, obs) {
            // The outcome, failure included, is in the record now.
            Ok(()) | Err(Error::Container { .. }) => Ok(()),
            Err(e) => Err(e),
        },
        _ => {
            if rebooted(node, r) {
                check_boot(node, store, r, obs).map(|_| ())
            } else {
                // Not rebooted yet: `qq upgrade_cluster commit` continues from here.
                Ok(())
            }
        }
    }
}

/// True when the node booted since the record asked for a reboot.
fn rebooted(node: &Node, r: &Record) -> bool {
    r.boot_id
        .as_deref()
        .is_some_and(|b| b != node.boot_id().unwrap_or_default())
}

/// After a boot: finishes a platform commit (health gate, bless or fall back), or
/// on an ordinary boot makes sure the active container runs. `qq boot_check`.
pub fn after_boot(node: &Node, obs: &dyn Observer) -> Result<Record, Error> {
    let store = node.store()?;
    let lock = store.lock()?;
    let mut r = store.load()?;
    if r.state == Phase::Committing && r.mode == Some(Mode::Platform) && rebooted(node, &r) {
        if check_boot(node, &store, &mut r, obs)? {
            drop(lock);
            return reboot(node, obs);
        }
        return Ok(r);
    }
    crate::prepare::recover(node, &store, &mut r, obs)?;
    ensure_running(node)?;
    Ok(r)
}

/// Starts the active container if nothing runs.
fn ensure_running(node: &Node) -> Result<(), Error> {
    let containers = Containers::new(&node.config.state);
    let runtime = rt(node);
    if let Some(v) = containers.installed()?.active
        && runtime.running()?.is_none()
    {
        runtime.start(&v, &containers.path(&v))?;
        runtime.wait_healthy(&v, health_timeout(node))?;
    }
    Ok(())
}

/// The post-boot decision of a platform commit. Returns true when the node must
/// reboot again (into the old slot).
fn check_boot(
    node: &Node,
    store: &Store,
    r: &mut Record,
    obs: &dyn Observer,
) -> Result<bool, Error> {
    let (from, to) = (
        r.from.clone().expect("set by prepare"),
        r.to.clone().expect("set by prepare"),
    );
    let running = node.running()?;
    let containers = Containers::new(&node.config.state);
    if running.slot == slot_of(to.slot) {
        obs.step(&format!("booted slot {}: health check", to.slot));
        let gate = platform_health(node, running.slot).and_then(|()| {
            let runtime = rt(node);
            runtime.stop().map_err(|e| e.to_string())?;
            containers
                .activate(&to.version)
                .map_err(|e| e.to_string())?;
            runtime
                .start(&to.version, &containers.path(&to.version))
                .and_then(|()| runtime.wait_healthy(&to.version, health_timeout(node)))
                .map_err(|e| e.to_string())
        });
        match gate {
            Ok(()) => {
                let mut esp = node.esp()?;
                entries::bless(esp.as_mut(), &running.product, &running.entry)
                    .map_err(boot_err("blessing the new entry"))?;
                r.state = Phase::Committed;
                r.step = None;
                r.details = format!(
                    "platform upgrade from {} to {}: slot {} (platform {}) booted healthy and was blessed",
                    from.version, to.version, to.slot, to.platform_version
                );
                if let Some(fw) = firmware_results(node)? {
                    r.details.push_str(&format!("; firmware: {fw}"));
                }
                r.last_commit = Some(LastCommit {
                    at: crate::now(),
                    from: from.version,
                    to: to.version,
                });
                store.put(r)?;
                containers.prune()?;
                Ok(false)
            }
            Err(why) => {
                obs.step(&format!("slot {} unhealthy: falling back", to.slot));
                let runtime = rt(node);
                runtime.stop()?;
                containers.restore(&crate::container::InstalledContainers {
                    active: Some(from.version.clone()),
                    previous: None,
                })?;
                let mut esp = node.esp()?;
                entries::mark_bad(esp.as_mut(), &running.entry)
                    .map_err(boot_err("marking the new entry bad"))?;
                r.fallback_reason = Some(format!("health check failed: {why}"));
                r.boot_id = Some(node.boot_id()?);
                r.step = Some("fallback".into());
                store.put(r)?;
                Ok(true)
            }
        }
    } else {
        let reason = match &r.fallback_reason {
            Some(why) => why.clone(),
            None => {
                let mut esp = node.esp()?;
                let s = bootctl::status::status(esp.as_mut(), &running.product, None, None)
                    .map_err(boot_err("reading boot entries"))?;
                match s
                    .slots
                    .iter()
                    .find(|x| x.slot == to.slot)
                    .and_then(|x| x.state)
                {
                    Some(EntryState::Bad { done }) => format!("{done} tries exhausted"),
                    Some(EntryState::Trying { left, .. }) => {
                        format!("not booted ({left} tries left; the loader chose another entry)")
                    }
                    _ => "its entry is gone".into(),
                }
            }
        };
        ensure_running(node)?;
        r.state = Phase::Idle;
        r.step = None;
        r.error_state = ErrorState::RolledBack;
        r.error_message = format!(
            "slot {}: {reason}, booted slot {} {}",
            to.slot,
            running.slot.letter(),
            from.version
        );
        r.details = format!(
            "rolled back: the node runs {} on platform {}",
            from.version, running.platform_version
        );
        store.put(r)?;
        Ok(false)
    }
}

/// After a platform reboot: the outcome of firmware staged for activation at reboot
/// (UEFI capsules), from qfirmware's journal and the devices' versions now; staged
/// capsule files that reached a final state leave the ESP. `None` without firmware.
fn firmware_results(node: &Node) -> Result<Option<String>, Error> {
    let Some(fc) = &node.config.firmware else {
        return Ok(None);
    };
    let fwerr = |source| Error::Firmware { source };
    let journal_dir = node.config.state.join("firmware");
    if !journal_dir.exists() {
        return Ok(None);
    }
    let config = firmware::prepare::NodeConfig::load(&fc.devices).map_err(fwerr)?;
    let devices = firmware::inventory::inventory(&fc.sysroot, &config.probes()).map_err(fwerr)?;
    let journal = firmware::journal::Journal::open(&journal_dir).map_err(fwerr)?;
    let mut esp = node.esp()?;
    let results = firmware::flash::results(&journal, &devices, &fc.sysroot, Some(esp.as_mut()))
        .map_err(fwerr)?;
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

/// The platform health gate: the simulated node's check, or the configured command.
fn platform_health(node: &Node, slot: Slot) -> Result<(), String> {
    if node.config.simulated {
        return crate::sim::platform_health(node, slot);
    }
    let Some(cmd) = &node.config.platform_health else {
        return Ok(());
    };
    let (c, args) = cmd.split_first().ok_or("empty platform_health command")?;
    let o = std::process::Command::new(c)
        .args(args)
        .output()
        .map_err(|e| format!("running {c}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            cmd.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stdout).trim()
        ))
    }
}
