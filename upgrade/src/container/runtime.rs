//! What runs containers: [`Nspawn`] on a real node, [`Process`] in tests and
//! the demo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qimg::Version;
use serde::{Deserialize, Serialize};

use super::{cerr, write_atomic};
use crate::error::{ContainerFailure, Error, io_err};

/// How containers run on a node (`[runtime]` in node.toml).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RuntimeConfig {
    /// systemd-nspawn through a template unit.
    #[default]
    Nspawn,
    /// A child process (tests, demo).
    Process,
}

/// Runs containers.
pub trait Runtime: Send + Sync {
    /// Starts the staged container `version` (directory `dir`).
    fn start(&self, version: &Version, dir: &Path) -> Result<(), Error>;
    /// Stops whatever container runs (nothing running is fine).
    fn stop(&self) -> Result<(), Error>;
    /// Waits until container `version` is healthy, at most `timeout`.
    fn wait_healthy(&self, version: &Version, timeout: Duration) -> Result<(), Error>;
    /// The version running now, if any.
    fn running(&self) -> Result<Option<Version>, Error>;
}

/// The runtime a node is configured with; `run_dir` holds its runtime files.
pub fn runtime(config: &RuntimeConfig, run_dir: &Path) -> Box<dyn Runtime> {
    match config {
        RuntimeConfig::Nspawn => Box::new(Nspawn {
            systemctl: std::env::var_os("QIMG_SYSTEMCTL")
                .map(PathBuf::from)
                .unwrap_or_else(|| "systemctl".into()),
        }),
        RuntimeConfig::Process => Box::new(Process {
            run: run_dir.to_owned(),
        }),
    }
}

/// systemd-nspawn through the template unit `qimg-container@<version>.service`.
pub struct Nspawn {
    /// The systemctl binary (`QIMG_SYSTEMCTL` overrides, for tests).
    pub systemctl: PathBuf,
}

impl Nspawn {
    fn systemctl(&self, args: &[&str]) -> Result<std::process::Output, Error> {
        Command::new(&self.systemctl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running", &self.systemctl))
    }

    fn unit(version: &Version) -> String {
        format!("qimg-container@{version}.service")
    }
}

impl Runtime for Nspawn {
    fn start(&self, version: &Version, _dir: &Path) -> Result<(), Error> {
        let o = self.systemctl(&["start", &Nspawn::unit(version)])?;
        if !o.status.success() {
            return Err(cerr(version)(ContainerFailure::Systemctl {
                op: "start",
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            }));
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), Error> {
        let o = self.systemctl(&["stop", "qimg-container@*.service"])?;
        if !o.status.success() {
            return Err(cerr(&"*")(ContainerFailure::Systemctl {
                op: "stop",
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            }));
        }
        Ok(())
    }

    fn wait_healthy(&self, version: &Version, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.systemctl(&["is-active", &Nspawn::unit(version)])?;
            let state = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            match state.as_str() {
                "active" => return Ok(()),
                "failed" | "inactive" => {
                    return Err(cerr(version)(ContainerFailure::Unit(state)));
                }
                _ if Instant::now() >= deadline => {
                    return Err(cerr(version)(ContainerFailure::Timeout {
                        secs: timeout.as_secs_f64(),
                        what: format!("unit is {state}"),
                    }));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn running(&self) -> Result<Option<Version>, Error> {
        let o = self.systemctl(&[
            "list-units",
            "--plain",
            "--no-legend",
            "--state=active",
            "qimg-container@*.service",
        ])?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .and_then(|u| u.strip_prefix("qimg-container@"))
            .and_then(|u| u.strip_suffix(".service"))
            .and_then(|v| v.parse().ok()))
    }
}

/// The container's `/entry` run as a detached child process (its own session), so
/// it outlives `qq`. `run/container.json` records it.
pub struct Process {
    /// Runtime directory.
    pub run: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct ProcessRecord {
    pid: i32,
    version: Version,
    /// The process's start time (field 22 of /proc/PID/stat): a recycled pid has
    /// another one.
    start: u64,
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(") ")?;
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: i32) -> bool {
    // Reap it if it is our own child that exited.
    // SAFETY: waitpid with WNOHANG on a pid; harmless if it is not our child.
    unsafe {
        let mut status = 0;
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

impl Process {
    fn record_path(&self) -> PathBuf {
        self.run.join("container.json")
    }

    fn health_file(&self) -> PathBuf {
        self.run.join("health")
    }

    fn record(&self) -> Option<ProcessRecord> {
        let r: ProcessRecord =
            serde_json::from_slice(&std::fs::read(self.record_path()).ok()?).ok()?;
        // Only a live process with the recorded start time is ours.
        (alive(r.pid) && start_time(r.pid) == Some(r.start)).then_some(r)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.run.join("container.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Runtime for Process {
    fn start(&self, version: &Version, dir: &Path) -> Result<(), Error> {
        use std::os::unix::process::CommandExt;
        let e = cerr(version);
        std::fs::create_dir_all(&self.run).map_err(io_err("creating", &self.run))?;
        let rootfs = dir.join("rootfs");
        let entry = rootfs.join("entry");
        if !entry.is_file() {
            return Err(e(ContainerFailure::NoEntry(entry)));
        }
        let _ = std::fs::remove_file(self.health_file());
        let log = std::fs::File::create(self.run.join("container.log"))
            .map_err(io_err("creating", self.run.join("container.log")))?;
        let mut cmd = Command::new(&entry);
        cmd.current_dir(&rootfs)
            .env("QIMG_HEALTH_FILE", self.health_file())
            .env("QIMG_CONTAINER_VERSION", version.to_string())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(io_err("opening", "container.log"))?,
            )
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the child gets its own session so it
        // survives qq and a terminal's Ctrl-C.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io_err("starting", &entry))?;
        let pid = child.id() as i32;
        let rec = ProcessRecord {
            pid,
            version: version.clone(),
            start: start_time(pid).ok_or_else(|| {
                e(ContainerFailure::Exited {
                    log: "it exited at once".into(),
                })
            })?,
        };
        write_atomic(
            &self.record_path(),
            &serde_json::to_vec(&rec).expect("serializable"),
        )
    }

    fn stop(&self) -> Result<(), Error> {
        if let Some(r) = self.record() {
            // SAFETY: signalling the process group we created (setsid).
            unsafe {
                libc::kill(-r.pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(r.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if alive(r.pid) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-r.pid, libc::SIGKILL);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while alive(r.pid) {
                    if Instant::now() >= deadline {
                        return Err(cerr(&r.version)(ContainerFailure::Timeout {
                            secs: 15.0,
                            what: format!("pid {} survives SIGTERM and SIGKILL", r.pid),
                        }));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let _ = std::fs::remove_file(self.record_path());
        let _ = std::fs::remove_file(self.health_file());
        Ok(())
    }

    fn wait_healthy(&self, version: &Version, timeout: Duration) -> Result<(), Error> {
        let e = cerr(version);
        let deadline = Instant::now() + timeout;
        loop {
            let healthy =
                std::fs::read_to_string(self.health_file()).is_ok_and(|s| s.trim() == "ok");
            match self.record() {
                Some(r) if &r.version == version && healthy => return Ok(()),
                Some(r) if &r.version != version => {
                    return Err(e(ContainerFailure::Other(r.version.to_string())));
                }
                None => {
                    return Err(e(ContainerFailure::Exited {
                        log: self.log_tail(),
                    }));
                }
                _ if Instant::now() >= deadline => {
                    return Err(e(ContainerFailure::Timeout {
                        secs: timeout.as_secs_f64(),
                        what: "no `ok` in $QIMG_HEALTH_FILE".into(),
                    }));
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    fn running(&self) -> Result<Option<Version>, Error> {
        Ok(self.record().map(|r| r.version))
    }
}
