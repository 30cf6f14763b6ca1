//! The reboots of a machine whose power button is software
//! ([`upgrade::machine::Machine::power`]: a simulated node). When the engine
//! asked the machine to reboot, the node shuts down for `[sim] shutdown_ms`
//! (the API answers `REBOOTING`), the API goes away for `[sim] boot_ms`, the
//! firmware boots and the boot path runs ([`upgrade::Agent::run_boots`]), as
//! `qimg-boot-check.service` would on a node. With `[sim] reboot_exits` the
//! agent powers off instead, and its next start is the boot ([`boot_if_due`]).
//!
//! A real machine has no such button: [`run`] returns at once, and its firmware
//! and systemd do the rest.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::api::Shared;
use crate::jobs::JobKind;

/// How long the boot waits for the operation that asked for the reboot to
/// return before booting anyway.
pub const BOOT_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// How often a due reboot is looked for between jobs ending: the agent's own
/// jobs (every commit and revert) wake the loop when they end, so this only
/// bounds how late a reboot asked by another process (a local `qq`) is played.
/// (At 10 ms, 64 idle simulated nodes spent a measurable share of a core on it.)
const LATENCY: Duration = Duration::from_millis(250);

/// Plays this machine's reboots until dropped; returns at once on a machine
/// without a software power button.
pub async fn run(app: Shared) {
    if app.agent.machine().power().is_none() {
        return;
    }
    let sim = app.config.sim.clone().unwrap_or_default();
    loop {
        // When a job ends (a commit or a revert returns once it asked for the
        // reboot), else at the latency.
        tokio::select! {
            _ = tokio::time::sleep(LATENCY) => {}
            _ = app.jobs.ended.notified() => {}
        }
        if !app.agent.machine().reboot_pending() {
            continue;
        }
        crate::log("the simulated node shuts down");
        tokio::time::sleep(Duration::from_millis(sim.shutdown_ms)).await;
        app.down.store(true, Ordering::SeqCst);
        crate::log("the simulated node reboots");
        // The operation that asked for the reboot returns first (on a real node
        // the reboot would end it); then the boot holds the slot.
        let deadline = Instant::now() + BOOT_WAIT_LIMIT;
        let claim = loop {
            match app.jobs.claim(JobKind::Commit) {
                Ok(c) => break Some(c),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(k) => {
                    crate::log(&format!(
                        "{k} still runs {BOOT_WAIT_LIMIT:?} after the reboot was asked for; booting anyway"
                    ));
                    break None;
                }
            }
        };
        if sim.reboot_exits {
            crate::log("the simulated node powers off");
            drop(claim);
            app.power_off.notify_one();
            return;
        }
        tokio::time::sleep(Duration::from_millis(sim.boot_ms)).await;
        boot(&app).await;
        app.up_since_ms
            .store(qcluster::plan::now_ms(), Ordering::SeqCst);
        drop(claim);
        app.down.store(false, Ordering::SeqCst);
        app.changes.send_modify(|n| *n += 1);
    }
}

/// At the agent's start: a machine powered off for a reboot (`reboot_exits`)
/// boots now.
pub async fn boot_if_due(app: &Shared) {
    let m = app.agent.machine();
    if m.power().is_some() && m.reboot_pending() {
        crate::log("the simulated node boots");
        boot(app).await;
    }
}

/// The boot: the firmware boots and the boot path runs.
async fn boot(app: &Shared) {
    let a = app.clone();
    match tokio::task::spawn_blocking(move || a.agent.run_boots()).await {
        Ok(Ok(o)) => crate::log(&format!("booted; the boot decided {o:?}")),
        Ok(Err(e)) => crate::log(&format!(
            "the simulated boot failed: {}",
            upgrade::chain(&e)
        )),
        Err(e) => crate::log(&format!("the simulated boot failed: {e}")),
    }
}
