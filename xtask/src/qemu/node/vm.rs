//! One test node under QEMU: OVMF, the node's disk, user networking with the agent's
//! HTTPS and SSH ports forwarded to 127.0.0.1 (restricted: the guest reaches
//! nothing through the host), the serial console in a file, and in a cluster a
//! second NIC on the cluster's private link (`switch.rs`). Reboots happen inside the
//! same QEMU process, as on hardware; power loss is killing it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::super::clean;

pub struct Vm {
    child: Option<Child>,
    pub serial: PathBuf,
}

/// A node's NIC on the cluster's link: the switch's socket it connects to, and
/// the MAC the node's image gives an address.
#[derive(Clone, Debug)]
pub struct Link {
    pub switch: PathBuf,
    pub mac: String,
}

/// What the machine has: memory (MiB) and CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub memory_mib: u32,
    pub cpus: u32,
}

/// A node alone: 1 GiB and two CPUs.
pub const ALONE: Shape = Shape {
    memory_mib: 1024,
    cpus: 2,
};

/// A free TCP port on loopback (the kernel's choice, released for QEMU to bind).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The serial console in `serial` so far, cleaned of escapes (none yet: empty):
/// its complete lines only, as QEMU may be in the middle of writing the last.
pub fn console_of(serial: &Path) -> String {
    let bytes = std::fs::read(serial).unwrap_or_default();
    clean(&String::from_utf8_lossy(complete_lines(&bytes)))
}

/// `bytes` up to and with its last newline: a line still being written is not
/// read as if it were whole (a boot report read as "QIMG-NODE-BOOT r").
fn complete_lines(bytes: &[u8]) -> &[u8] {
    match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[],
    }
}

/// Lines of `console` containing `pattern`.
pub fn count_in(console: &str, pattern: &str) -> usize {
    console.lines().filter(|l| l.contains(pattern)).count()
}

impl Vm {
    /// Powers the node on; the agent's port and SSH are forwarded from `ports` on
    /// loopback (the same across power cycles, so a client keeps its address).
    pub fn start(
        accel: &str,
        (disk, vars): (&Path, &Path),
        serial: &Path,
        (port, ssh_port): (u16, u16),
        shape: Shape,
        link: Option<&Link>,
        medium: Option<&Path>,
    ) -> Result<Vm, String> {
        // Appended to across power cycles, so the log is the node's whole life.
        let log = File::options()
            .create(true)
            .append(true)
            .open(serial)
            .map_err(|e| format!("{}: {e}", serial.display()))?;
        let (memory, cpus) = (shape.memory_mib.to_string(), shape.cpus.to_string());
        let mut c = super::super::qemu_command(
            accel,
            &["-cpu", "max", "-m", &memory, "-smp", &cpus],
            disk,
            vars,
        );
        c.arg("-nic").arg(format!(
            "user,model=virtio-net-pci,restrict=on,\
                 hostfwd=tcp:127.0.0.1:{port}-:8000,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        ));
        if let Some(m) = medium {
            // The installer's medium: a file as a read-only disk (/dev/vdb).
            c.arg("-drive").arg(format!(
                "if=virtio,format=raw,readonly=on,file={}",
                m.display()
            ));
        }
        if let Some(l) = link {
            // The switch's port: QEMU connects once at power-on; a QEMU killed
            // and started again connects anew.
            c.arg("-netdev")
                .arg(format!(
                    "stream,id=link,server=off,addr.type=unix,addr.path={}",
                    l.switch.display()
                ))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=link,mac={}", l.mac));
        }
        c.args(["-display", "none", "-vga", "none", "-monitor", "none"])
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
        console_of(&self.serial)
    }

    /// Lines of the console containing `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        count_in(&self.console(), pattern)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_still_being_written_is_not_read() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"", b""),
            (b"QIMG-NODE-BOOT r", b""),
            (b"a\nQIMG-NODE-BOOT r", b"a\n"),
            (
                b"a\nQIMG-NODE-BOOT release=1\r\n",
                b"a\nQIMG-NODE-BOOT release=1\r\n",
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                complete_lines(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let dir = std::env::temp_dir().join(format!("qimg-vm-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let serial = dir.join("serial");
        std::fs::write(
            &serial,
            b"boot\nQIMG-NODE-BOOT release=1.0.0\nQIMG-NODE-BOOT r",
        )
        .unwrap();
        assert_eq!(count_in(&console_of(&serial), "QIMG-NODE-BOOT"), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
