//! One test node under QEMU: OVMF, the node's disk, user networking with the agent's
//! HTTPS and SSH ports forwarded to 127.0.0.1, the serial
//! console in a file. Reboots happen inside the same QEMU process, as on hardware;
//! power loss is killing it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::super::clean;

pub struct Vm {
    child: Option<Child>,
    pub serial: PathBuf,
}

/// A free TCP port on loopback (the kernel's choice, released for QEMU to bind).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Vm {
    /// Powers the node on; the agent's port and SSH are forwarded from `ports` on
    /// loopback (the same across power cycles, so a client keeps its address).
    pub fn start(
        accel: &str,
        disk: &Path,
        vars: &Path,
        serial: &Path,
        (port, ssh_port): (u16, u16),
    ) -> Result<Vm, String> {
        // Appended to across power cycles, so the log is the node's whole life.
        let log = File::options()
            .create(true)
            .append(true)
            .open(serial)
            .map_err(|e| format!("{}: {e}", serial.display()))?;
        let mut c = super::super::qemu_command(
            accel,
            &["-cpu", "max", "-m", "1024", "-smp", "2"],
            disk,
            vars,
        );
        c.arg("-nic")
            .arg(format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:8000,\
                 hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            ))
            .args(["-display", "none", "-vga", "none", "-monitor", "none"])
            .args(["-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = c
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        Ok(Vm {
            child: Some(child),
            serial: serial.to_owned(),
        })
    }

    /// The serial console so far, cleaned of escapes.
    pub fn console(&self) -> String {
        clean(&String::from_utf8_lossy(
            &std::fs::read(&self.serial).unwrap_or_default(),
        ))
    }

    /// Lines of the console containing `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.console()
            .lines()
            .filter(|l| l.contains(pattern))
            .count()
    }

    /// Waits until the console holds `count` lines containing `pattern`; returns
    /// the last of them. Fails if QEMU exits or after `limit`.
    pub fn wait_console(
        &mut self,
        pattern: &str,
        count: usize,
        limit: Duration,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let text = self.console();
            let hits: Vec<&str> = text.lines().filter(|l| l.contains(pattern)).collect();
            if hits.len() >= count {
                return Ok(hits[count - 1].to_owned());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!(
                    "QEMU exited ({st}) while waiting for {pattern:?} #{count} on the console ({})",
                    self.serial.display()
                ));
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "no {pattern:?} #{count} on the console after {limit:?} ({})",
                    self.serial.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
