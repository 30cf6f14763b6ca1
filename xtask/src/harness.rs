//! The benchmark harness every `cargo xtask bench` uses: options, per-process
//! wall/CPU time and peak memory (wait4), medians, release builds, settling the
//! page cache between runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{step, target_dir};

/// Wall time, CPU time and peak memory of one process.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub wall: f64,
    pub cpu: f64,
    pub max_rss_kib: u64,
    /// Bytes the process (and its waited-for children) caused to be written to
    /// storage: the kernel's I/O accounting (`ru_oublock`, 512-byte units, counted
    /// when pages are dirtied, so page-cache writes count before writeback).
    pub written: u64,
}

impl Usage {
    pub(crate) fn add(self, o: Usage) -> Usage {
        Usage {
            wall: self.wall + o.wall,
            cpu: self.cpu + o.cpu,
            max_rss_kib: self.max_rss_kib.max(o.max_rss_kib),
            written: self.written + o.written,
        }
    }
}

/// Runs a command to completion and measures it with wait4's rusage.
pub(crate) fn measure(cmd: &mut Command) -> Result<Usage, String> {
    let start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waiting for our own child pid with valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed().as_secs_f64();
    if rc != pid {
        return Err(format!("wait4 failed for {cmd:?}"));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("{cmd:?} failed (status {status})"));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
        written: ru.ru_oublock as u64 * 512,
    })
}

/// Writes back dirty pages (untimed) so one measurement does not pay for another's writes.
pub(crate) fn settle() {
    let _ = Command::new("sync").status();
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) struct Opts {
    pub size_mib: u64,
    pub level: i32,
    pub runs: usize,
    pub dir: PathBuf,
}

pub(crate) fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        size_mib: 1024,
        level: 3,
        runs: 3,
        dir: target_dir().join("bench"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--size" => o.size_mib = val("--size")?.parse().map_err(|_| "bad --size")?,
            "--level" => o.level = val("--level")?.parse().map_err(|_| "bad --level")?,
            "--runs" => o.runs = val("--runs")?.parse().map_err(|_| "bad --runs")?,
            "--dir" => o.dir = PathBuf::from(val("--dir")?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(o)
}

/// Builds `packages` in release mode.
pub(crate) fn release_build(packages: &[&str]) -> Result<(), String> {
    let mut c = crate::cargo();
    c.args(["build", "--release"]);
    for p in packages {
        c.args(["-p", p]);
    }
    step("release build", &mut c)
}

/// `imagebuild bundle` of `spec` signed with `key` (a `.key` file) into `out`.
pub(crate) fn bundle_cmd(exe: &Path, spec: &Path, key: &Path, out: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["bundle", "-q", "--spec"])
        .arg(spec)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out);
    c
}

/// `qimgd user add bench` with the benches' password, through `config`.
/// Logs `c` in as the user [`add_bench_user`] adds; returns the token.
pub(crate) fn bench_login(c: &mut qapi::Client) -> Result<String, String> {
    let r: qapi::types::LoginResponse = c
        .post_json(
            "/v1/session/login",
            &qapi::types::LoginRequest {
                username: "bench".into(),
                password: "bench-password".into(),
            },
        )
        .map_err(|e| e.to_string())?;
    Ok(r.bearer_token)
}

pub(crate) fn add_bench_user(qimgd: &Path, config: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut add = Command::new(qimgd)
        .arg("--config")
        .arg(config)
        .args(["user", "add", "bench", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    add.stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"bench-password\n")
        .map_err(|e| e.to_string())?;
    if !add.wait().map_err(|e| e.to_string())?.success() {
        return Err(format!("qimgd user add failed for {}", config.display()));
    }
    Ok(())
}

/// `'path'`, for a bash script.
pub(crate) fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// Bash lines (run in the work directory) that check a bundle's manifest
/// signature with minisign, as a release engineer's script does first.
pub(crate) fn sh_check_manifest(bundle: &Path, public: &Path) -> String {
    format!(
        "tar -xf {} manifest.json signatures\nminisign -Vq -p {} -m manifest.json -x signatures/*\n",
        sh_quote(bundle),
        sh_quote(public)
    )
}

/// Bash lines that stream one bundle member in a single pass: tar to a pipe,
/// OpenSSL's SHA-256 of the stored bytes, `zstd -dc` when `zst`, SHA-256 of the
/// content, into `sink`. The hashes read fifos, so the script waits for them and
/// their time is counted.
pub(crate) fn sh_stream_member(
    bundle: &Path,
    member: &str,
    zst: bool,
    name: &str,
    sink: &str,
) -> String {
    let head = format!(
        "rm -f s.fifo c.fifo; mkfifo s.fifo c.fifo\n\
         openssl dgst -sha256 < s.fifo > '{name}.stored.sha256' &\n\
         openssl dgst -sha256 < c.fifo > '{name}.sha256' &\n"
    );
    let b = sh_quote(bundle);
    let pipe = if zst {
        format!("tar -xOf {b} {member} | tee s.fifo | zstd -dc | tee c.fifo | {sink}\nwait\n")
    } else {
        format!("tar -xOf {b} {member} | tee s.fifo c.fifo | {sink}\nwait\n")
    };
    head + &pipe
}

/// The first line a tool prints (stdout, then stderr), for version lines.
pub(crate) fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| "?".into())
}

/// This machine: CPU, cores, memory and load.
pub(crate) fn host() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k / 1024 / 1024);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem} GiB; load {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
