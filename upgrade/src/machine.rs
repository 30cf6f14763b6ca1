//! The machine a node's engine runs on: its boot id, its reboot, its platform
//! health. Beside [`crate::container::Runtime`] (what runs the container), this is
//! the engine's other seam: a real node ([`LocalMachine`]) and a simulated one
//! (`crate::sim::SimMachine`) answer the same calls with the same meaning, so code
//! tested against simulated nodes runs the production protocol. `reboot` returns
//! once the reboot was asked for; the boot path then runs
//! [`crate::agent::Agent::after_boot`] (`qq boot_check` from a unit on a real node).

use std::process::Command;

use bootctl::layout::Slot;

use crate::error::{Error, Unhealthy, io_err};
use crate::node::Node;
use crate::pstore::KeptLogs;
use crate::state::BootId;

/// A node's machine.
pub trait Machine: Send + Sync {
    /// The current boot's id: it changes at every boot.
    fn boot_id(&self) -> Result<BootId, Error>;
    /// Asks for a reboot and returns; the node goes down some time later.
    fn reboot(&self) -> Result<(), Error>;
    /// True from when a reboot was asked for until the machine went down: what
    /// this boot still does is cut off by it, so nothing new is started.
    fn reboot_pending(&self) -> bool;
    /// The platform health gate for the booted `slot`.
    fn platform_health(&self, slot: Slot) -> Result<(), Unhealthy>;
    /// The kernel logs the platform keeps now, noted when a reboot into a new slot
    /// is asked for ([`crate::pstore`]).
    fn kept_logs(&self) -> KeptLogs;
    /// Why the boots since `before` was noted died, if the platform kept it (the
    /// kernel's panic, from [`crate::pstore`]). Diagnostics only: `None` when
    /// nothing was kept or it cannot be read.
    fn failed_boot_reason(&self, before: &KeptLogs) -> Option<String>;
    /// The power button, where software presses it (a simulated machine): a
    /// real machine has none, its firmware boots it after the reboot.
    fn power(&self) -> Option<&dyn Power> {
        None
    }
}

/// Boots a machine whose boots software plays tries before it gives up (a real
/// machine's firmware would loop).
pub const MAX_BOOTS: usize = 12;

/// A machine whose boots software plays ([`Machine::power`]).
pub trait Power: Send + Sync {
    /// Boots the firmware once the reboot asked for is due: it picks the entry
    /// as systemd-boot would (boot counting included), the boot id changes, and
    /// the reboot is no longer pending. The boot path
    /// ([`crate::agent::Agent::after_boot`]) is the caller's to run.
    fn boot(&self) -> Result<(), Error>;
}

/// A real node: the kernel's boot id, the configured reboot and health commands.
#[derive(Debug)]
pub struct LocalMachine {
    boot_id: std::path::PathBuf,
    reboot: Vec<String>,
    health: Option<Vec<String>>,
    pstore: std::path::PathBuf,
    /// A reboot was asked for in this process (this boot: the process ends with it).
    rebooting: std::sync::atomic::AtomicBool,
}

impl LocalMachine {
    /// The machine `node.toml` describes.
    pub fn new(node: &Node) -> LocalMachine {
        LocalMachine {
            boot_id: node.config.boot_id.clone(),
            reboot: node.config.reboot.clone(),
            health: node.config.platform_health.clone(),
            pstore: node.config.pstore.clone(),
            rebooting: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Reads a boot id file (`/proc/sys/kernel/random/boot_id` on a real node).
pub fn read_boot_id(path: &std::path::Path) -> Result<BootId, Error> {
    Ok(BootId(
        std::fs::read_to_string(path)
            .map_err(io_err("reading boot id", path))?
            .trim()
            .to_owned(),
    ))
}

/// Whether a reboot command's exit says the reboot is under way: it succeeded,
/// or the shutdown it started stopped the agent's service and SIGTERMed it with
/// the service's other processes before it could exit (systemd signals the whole
/// cgroup, and even `systemctl reboot --no-block` can still be running then).
fn reboot_under_way(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.success() || status.signal() == Some(libc::SIGTERM)
}

impl Machine for LocalMachine {
    fn boot_id(&self) -> Result<BootId, Error> {
        read_boot_id(&self.boot_id)
    }

    fn reboot(&self) -> Result<(), Error> {
        let command = self.reboot.join(" ");
        let (cmd, args) = self.reboot.split_first().ok_or_else(|| Error::Reboot {
            command: command.clone(),
            source: std::io::Error::other("empty command"),
        })?;
        let status = Command::new(cmd)
            .args(args)
            .status()
            .map_err(|source| Error::Reboot {
                command: command.clone(),
                source,
            })?;
        if !reboot_under_way(status) {
            return Err(Error::Reboot {
                command,
                source: std::io::Error::other(format!("exited with {status}")),
            });
        }
        self.rebooting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn reboot_pending(&self) -> bool {
        self.rebooting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn kept_logs(&self) -> KeptLogs {
        crate::pstore::kept(&self.pstore)
    }

    fn failed_boot_reason(&self, before: &KeptLogs) -> Option<String> {
        crate::pstore::new_panic(&self.pstore, before)
    }

    fn platform_health(&self, _slot: Slot) -> Result<(), Unhealthy> {
        let Some(cmd) = &self.health else {
            return Ok(());
        };
        let (c, args) = cmd
            .split_first()
            .ok_or_else(|| Unhealthy("empty platform_health command".into()))?;
        let o = Command::new(c)
            .args(args)
            .output()
            .map_err(|e| Unhealthy(format!("running {c}: {e}")))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(Unhealthy(format!(
                "{} exited with {}: {}",
                cmd.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stdout).trim()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_reboot_command_killed_by_the_shutdown_it_started_asked_for_it() {
        // Raw wait statuses: exit code << 8, or the signal number.
        let cases = [
            (0, true, "exit 0"),
            (libc::SIGTERM, true, "SIGTERMed by the shutdown"),
            (1 << 8, false, "exit 1: refused"),
            (libc::SIGKILL, false, "SIGKILL: killed, not stopped"),
            (libc::SIGSEGV, false, "crashed"),
        ];
        for (raw, under_way, what) in cases {
            assert_eq!(
                reboot_under_way(std::process::ExitStatus::from_raw(raw)),
                under_way,
                "{what}"
            );
        }
    }
}
