//! Container images and the runtimes that run them.
//!
//! A staged container is a directory `containers/<version>/` in the state directory:
//! `image.raw` (the squashfs), `image.verity` (its dm-verity hash tree) and
//! `image.roothash` — the names `systemd-nspawn --image=…/image.raw` finds on its
//! own — and, for the process runtime, `rootfs/` (the image's files). It is written
//! under `containers/.partial-<version>/` and renamed into place once the bundle
//! reader verified the component's digest. `installed.json` names the active
//! container and the one before it.
//!
//! Runtimes ([`Runtime`]):
//! - [`Nspawn`] (real nodes): `systemctl start qimg-container@<version>.service`, a
//!   template unit running `systemd-nspawn --image=/var/lib/qimg/containers/%i/image.raw`
//!   (docs/qq.md has the unit);
//! - [`Process`] (tests, demo): the image's `/entry` program run as a detached child
//!   process; it reports health by writing `ok` to `$QIMG_HEALTH_FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{ContainerFailure, Error, io_err};

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    qutil::fs::write_atomic(path, bytes).map_err(io_err("writing", path))
}

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

/// Which containers are installed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledContainers {
    /// The container that runs (the installed release).
    pub active: Option<String>,
    /// The one before it (kept for rollback).
    pub previous: Option<String>,
}

/// The container store in a state directory.
#[derive(Clone, Debug)]
pub struct Containers {
    dir: PathBuf,
}

fn cerr(version: &str) -> impl Fn(ContainerFailure) -> Error + '_ {
    move |failure| Error::Container {
        version: version.to_owned(),
        failure,
    }
}

impl Containers {
    /// The store under state directory `state`.
    pub fn new(state: &Path) -> Containers {
        Containers {
            dir: state.join("containers"),
        }
    }

    /// Directory of a staged container.
    pub fn path(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    fn partial(&self, version: &str) -> PathBuf {
        self.dir.join(format!(".partial-{version}"))
    }

    /// What is installed.
    pub fn installed(&self) -> Result<InstalledContainers, Error> {
        let p = self.dir.join("installed.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::StateDamaged {
                path: p,
                field: ".".into(),
                source: crate::error::Damage::Syntax(e.to_string()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(InstalledContainers::default())
            }
            Err(e) => Err(io_err("reading", p)(e)),
        }
    }

    /// Makes `version` the active container (atomically), the old one previous.
    pub fn activate(&self, version: &str) -> Result<InstalledContainers, Error> {
        let mut i = self.installed()?;
        if i.active.as_deref() != Some(version) {
            i.previous = i.active.take();
            i.active = Some(version.to_owned());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let p = self.dir.join("installed.json");
        qutil::fs::write_json(&p, &i).map_err(io_err("writing", &p))?;
        Ok(i)
    }

    /// Puts `active` back as the active container and `previous` as previous.
    pub fn restore(&self, to: &InstalledContainers) -> Result<(), Error> {
        let p = self.dir.join("installed.json");
        qutil::fs::write_json(&p, to).map_err(io_err("writing", &p))
    }

    /// Starts staging `version`: a fresh partial directory and a sink for the
    /// component's bytes (data area, then hash area at `hash_offset`).
    pub fn begin(&self, version: &str, hash_offset: u64) -> Result<StagingSink, Error> {
        let dir = self.partial(version);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let open = |name: &str| {
            let p = dir.join(name);
            std::fs::File::create(&p).map_err(io_err("creating", p))
        };
        Ok(StagingSink {
            data: std::io::BufWriter::with_capacity(1 << 20, open("image.raw")?),
            hash: std::io::BufWriter::new(open("image.verity")?),
            hash_offset,
            pos: 0,
        })
    }

    /// Finishes staging after the reader verified the component: writes the root
    /// hash, extracts the files when `extract` (process runtime), and renames the
    /// directory into place.
    pub fn finish(
        &self,
        version: &str,
        sink: StagingSink,
        root_hash: &[u8; 32],
        extract: bool,
    ) -> Result<PathBuf, Error> {
        let dir = self.partial(version);
        let e = cerr(version);
        for mut w in [sink.data, sink.hash] {
            w.flush().map_err(io_err("writing", &dir))?;
        }
        std::fs::write(dir.join("image.roothash"), hex::encode(root_hash))
            .map_err(io_err("writing", dir.join("image.roothash")))?;
        if extract {
            extract_squashfs(&dir.join("image.raw"), &dir.join("rootfs")).map_err(&e)?;
        }
        // The image, its hash tree, the root hash and the extracted files reach the
        // disk before the directory is renamed into place, and the rename before
        // the record names it: after a power cut, a recorded container is whole
        // (the test node once came back with an empty `/entry`).
        qutil::fs::sync_fs(&dir).map_err(io_err("syncing", &dir))?;
        let to = self.path(version);
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(io_err("removing", &to))?;
        }
        std::fs::rename(&dir, &to).map_err(io_err("renaming into place", &to))?;
        qutil::fs::sync_dir(&self.dir).map_err(io_err("syncing", &self.dir))?;
        Ok(to)
    }

    /// Removes a partial or staged container that is not installed.
    pub fn discard(&self, version: &str) -> Result<(), Error> {
        let i = self.installed()?;
        for d in [self.partial(version), self.path(version)] {
            let installed = [&i.active, &i.previous]
                .iter()
                .any(|v| v.as_deref() == Some(version))
                && d == self.path(version);
            if d.exists() && !installed {
                std::fs::remove_dir_all(&d).map_err(io_err("removing", &d))?;
            }
        }
        Ok(())
    }

    /// Removes every staged container other than the active and previous ones.
    pub fn prune(&self) -> Result<Vec<String>, Error> {
        let i = self.installed()?;
        let mut gone = vec![];
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(gone);
        };
        for d in rd.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let keep = name == "installed.json"
                || [&i.active, &i.previous]
                    .iter()
                    .any(|v| v.as_deref() == Some(&name));
            if !keep && d.path().is_dir() {
                std::fs::remove_dir_all(d.path()).map_err(io_err("removing", d.path()))?;
                gone.push(name);
            }
        }
        Ok(gone)
    }
}

/// Receives a container component's bytes: the data area into `image.raw`, the
/// hash tree into `image.verity`.
pub struct StagingSink {
    data: std::io::BufWriter<std::fs::File>,
    hash: std::io::BufWriter<std::fs::File>,
    hash_offset: u64,
    pos: u64,
}

impl Write for StagingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = if self.pos < self.hash_offset {
            let n = (buf.len() as u64).min(self.hash_offset - self.pos) as usize;
            self.data.write_all(&buf[..n])?;
            n
        } else {
            self.hash.write_all(buf)?;
            buf.len()
        };
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.data.flush()?;
        self.hash.flush()
    }
}

/// Extracts a squashfs image's files into `to` (backhand's reader): regular files
/// with their modes, directories, symlinks.
pub fn extract_squashfs(image: &Path, to: &Path) -> Result<(), ContainerFailure> {
    extract(image, to).map_err(ContainerFailure::Extract)
}

fn extract(image: &Path, to: &Path) -> Result<(), String> {
    use backhand::{FilesystemReader, InnerNode};
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let fs = FilesystemReader::from_reader(std::io::BufReader::new(f))
        .map_err(|e| format!("not a squashfs image: {e}"))?;
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for node in fs.files() {
        let rel = node.fullpath.strip_prefix("/").unwrap_or(&node.fullpath);
        if rel.as_os_str().is_empty() {
            continue;
        }
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("unsafe path in image: {}", node.fullpath.display()));
        }
        let dst = to.join(rel);
        let mode = u32::from(node.header.permissions) & 0o7777;
        let fail = |e: std::io::Error| format!("{}: {e}", dst.display());
        match &node.inner {
            InnerNode::Dir(_) => std::fs::create_dir_all(&dst).map_err(fail)?,
            InnerNode::File(file) => {
                let mut out = std::fs::File::create(&dst).map_err(fail)?;
                let mut r = fs.file(file).reader();
                std::io::copy(&mut r, &mut out).map_err(fail)?;
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(fail)?;
            }
            InnerNode::Symlink(l) => std::os::unix::fs::symlink(&l.link, &dst).map_err(fail)?,
            // Device nodes, fifos and sockets are the runtime's business, not files.
            _ => {}
        }
    }
    Ok(())
}

/// Runs containers.
pub trait Runtime: Send + Sync {
    /// Starts the staged container `version` (directory `dir`).
    fn start(&self, version: &str, dir: &Path) -> Result<(), Error>;
    /// Stops whatever container runs (nothing running is fine).
    fn stop(&self) -> Result<(), Error>;
    /// Waits until container `version` is healthy, at most `timeout`.
    fn wait_healthy(&self, version: &str, timeout: Duration) -> Result<(), Error>;
    /// The version running now, if any.
    fn running(&self) -> Result<Option<String>, Error>;
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

    fn unit(version: &str) -> String {
        format!("qimg-container@{version}.service")
    }
}

impl Runtime for Nspawn {
    fn start(&self, version: &str, _dir: &Path) -> Result<(), Error> {
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
            return Err(cerr("*")(ContainerFailure::Systemctl {
                op: "stop",
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            }));
        }
        Ok(())
    }

    fn wait_healthy(&self, version: &str, timeout: Duration) -> Result<(), Error> {
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

    fn running(&self) -> Result<Option<String>, Error> {
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
            .map(str::to_owned))
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
    version: String,
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
    fn start(&self, version: &str, dir: &Path) -> Result<(), Error> {
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
            .env("QIMG_CONTAINER_VERSION", version)
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
            version: version.to_owned(),
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

    fn wait_healthy(&self, version: &str, timeout: Duration) -> Result<(), Error> {
        let e = cerr(version);
        let deadline = Instant::now() + timeout;
        loop {
            let healthy =
                std::fs::read_to_string(self.health_file()).is_ok_and(|s| s.trim() == "ok");
            match self.record() {
                Some(r) if r.version == version && healthy => return Ok(()),
                Some(r) if r.version != version => {
                    return Err(e(ContainerFailure::Other(r.version)));
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

    fn running(&self) -> Result<Option<String>, Error> {
        Ok(self.record().map(|r| r.version))
    }
}
