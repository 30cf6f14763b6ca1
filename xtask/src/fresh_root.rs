//! `cargo xtask fresh-root [--keep]`: the one list (`deps/list.rs`) proved
//! complete on a new machine. It makes a minimal Debian root with `mmdebstrap`
//! (bookworm, from the archive this machine's apt uses; only `build-essential` and
//! `ca-certificates` on top of the essential set), gives it the host's Rust
//! toolchain read-only, the checkout read-only and a copy of the host's cargo
//! registry (crates only: everything else is installed inside), and there, as a
//! new user would:
//!
//! 1. checks the base system has every program the list counts on it for;
//! 2. runs `cargo xtask demo` as a user who is not root, with a fresh target
//!    directory: it must stop, before building anything past xtask, with the one
//!    `apt-get install` line for the build and demo groups;
//! 3. runs `cargo xtask demo` as root in the same fresh target directory: it
//!    installs the build and demo groups, builds everything (so every build script
//!    runs in the new root) and must end on the cluster's new release;
//! 4. installs the test, bench and qemu groups (`cargo xtask deps --install`) and
//!    runs each of their tools (`--run`);
//! 5. checks that every program the code runs by name is on `PATH` there.
//!
//! It runs in its own mount and PID namespaces (everything it started dies with
//! it); the root is removed afterwards unless `--keep`. A failure names the step,
//! the end of its output, and for a missing program the Debian package this
//! machine has it from.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::deps::{self, Group, list};
use crate::{root, target_dir};

/// The user a person would be, not root.
const USER: &str = "newuser";
/// The demo's last line starts so.
const DEMO_DONE: &str = "xtask demo: the cluster upgraded from 1.0.0 to 2.0.0 with rolling reboots";
/// How long the steps in the root may take (240 s measured).
const LIMIT: std::time::Duration = std::time::Duration::from_secs(20 * 60);
/// A step's marker in the log.
const STEP: &str = "fresh-root: == ";

fn io(what: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

pub fn main(args: &[String]) -> Result<(), String> {
    let keep = match args {
        [] => false,
        [k] if k == "--keep" => true,
        _ => return Err("usage: cargo xtask fresh-root [--keep]".into()),
    };
    if !deps::is_root() {
        return Err("fresh-root: mmdebstrap --mode=root and chroot need root".into());
    }
    let start = Instant::now();
    let work = target_dir().join("fresh-root");
    let rootfs = work.join("root");
    remove(&work)?;
    crate::space::require("fresh-root", &work, crate::space::FRESH_ROOT_GIB)?;
    eprintln!(
        "xtask: fresh-root: a minimal Debian root with mmdebstrap (bookworm, from the \
         archive apt uses): essential + build-essential ca-certificates"
    );
    let t = Instant::now();
    let st = Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--mode=root",
            "--quiet",
            "--include=build-essential,ca-certificates",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "bookworm",
        ])
        .arg(&rootfs)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run mmdebstrap: {e}"))?;
    if !st.success() {
        return Err(format!("fresh-root: mmdebstrap failed ({st})"));
    }
    eprintln!(
        "xtask: fresh-root: root made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    prepare_root(&rootfs)?;
    let script = work.join("run.sh");
    std::fs::write(&script, script_text()).map_err(io(&script))?;
    let log = work.join("log.txt");
    eprintln!(
        "xtask: fresh-root: running the steps in the root (log: {})",
        log.display()
    );
    let result = run(&rootfs, &script, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let outcome = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(explain(&e, &text)),
    };
    if outcome.is_ok() && !keep {
        remove(&work)?;
    }
    eprintln!(
        "xtask: fresh-root: {} in {:.0} s",
        if outcome.is_ok() { "passed" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    outcome
}

/// Removes a directory that may hold another run's root (its mounts ended with
/// their namespace).
fn remove(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The user, the host's name resolution and apt settings (the same archive and
/// options apt uses here), the cargo registry, and the mount points.
fn prepare_root(r: &Path) -> Result<(), String> {
    let append = |rel: &str, line: &str| -> Result<(), String> {
        let p = r.join(rel);
        let mut text = std::fs::read_to_string(&p).map_err(io(&p))?;
        text.push_str(line);
        std::fs::write(&p, text).map_err(io(&p))
    };
    append(
        "etc/passwd",
        &format!("{USER}:x:1000:1000::/home/{USER}:/bin/bash\n"),
    )?;
    append("etc/group", &format!("{USER}:x:1000:\n"))?;
    let home = r.join("home").join(USER);
    for d in [home.clone(), r.join("opt/rust"), r.join("src")] {
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    let cp = |args: &[&str], from: &Path, to: &Path| -> Result<(), String> {
        let st = Command::new("cp")
            .args(args)
            .arg(from)
            .arg(to)
            .status()
            .map_err(|e| e.to_string())?;
        st.success()
            .then_some(())
            .ok_or_else(|| format!("cp {} {} failed", from.display(), to.display()))
    };
    cp(
        &["-L"],
        Path::new("/etc/resolv.conf"),
        &r.join("etc/resolv.conf"),
    )?;
    // The machine's network settings, which a new machine on the same network
    // has too: mmdebstrap wrote the host's archive into the root's sources.list;
    // apt's options (a snapshot's expired Valid-Until, say), the local CAs (a
    // proxy's, added to the root's store by the script) and pip's settings come
    // along.
    for d in ["etc/apt/apt.conf.d", "usr/local/share/ca-certificates"] {
        let from = Path::new("/").join(d);
        if from.is_dir() {
            cp(&["-rT"], &from, &r.join(d))?;
        }
    }
    if Path::new("/etc/pip.conf").is_file() {
        cp(&[], Path::new("/etc/pip.conf"), &r.join("etc/pip.conf"))?;
    }
    let host_home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let registry = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| host_home.join(".cargo"))
        .join("registry");
    let cargo_home = home.join(".cargo");
    std::fs::create_dir_all(&cargo_home).map_err(io(&cargo_home))?;
    cp(&["-a"], &registry, &cargo_home.join("registry"))?;
    let st = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(&home)
        .status()
        .map_err(|e| e.to_string())?;
    st.success().then_some(()).ok_or("chown failed".to_owned())
}

/// The host's Rust toolchain (its sysroot: cargo and rustc, no rustup).
fn toolchain() -> Result<PathBuf, String> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc --print sysroot: {e}"))?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.join("bin/cargo")
        .is_file()
        .then_some(p.clone())
        .ok_or_else(|| format!("no cargo in the toolchain at {}", p.display()))
}

/// Runs the script in the root inside new mount and PID namespaces, all output
/// to `log` (and to stderr, line by line).
fn run(rootfs: &Path, script: &Path, log: &Path) -> Result<(), String> {
    let sysroot = toolchain()?;
    let mounts = format!(
        "set -e; mount --make-rprivate /; R={r}; \
         mount -t proc proc $R/proc; mount --rbind /dev $R/dev; mount -t sysfs -o ro sys $R/sys; \
         mount --bind {tc} $R/opt/rust; mount -o remount,bind,ro $R/opt/rust; \
         mount --bind {src} $R/src; mount -o remount,bind,ro $R/src; \
         cp {script} $R/run.sh; \
         exec chroot $R /usr/bin/env -i PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         TERM=dumb LANG=C.UTF-8 /bin/bash /run.sh",
        r = sh_quote(rootfs),
        tc = sh_quote(&sysroot),
        src = sh_quote(&root()),
        script = sh_quote(script),
    );
    let out = std::fs::File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "bash",
            "-c",
            &mounts,
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    // Follow the log on stderr while it runs (what was added since the last
    // look), at most LIMIT: then the namespace's init is killed, and with it
    // everything the steps started.
    let mut follow = std::fs::File::open(log).map_err(io(log))?;
    let mut show = || {
        use std::io::Read;
        let mut more = Vec::new();
        let _ = follow.read_to_end(&mut more);
        eprint!("{}", String::from_utf8_lossy(&more));
    };
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        show();
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            show();
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the steps in the fresh root did not end within {} min",
                LIMIT.as_secs() / 60
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("the steps in the fresh root failed ({status})"))
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The steps, as a script run in the root (see the module's documentation).
fn script_text() -> String {
    let base = list::BASE_PROGRAMS.join(" ");
    let groups = [Group::Build, Group::Demo];
    let expected = deps::not_root_message(&groups, &list::packages(list::needs_of(&groups)));
    let expected_line = expected
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!(
        r#"set -uo pipefail
export HOME=/root CARGO_HOME=/home/{USER}/.cargo CARGO_TARGET_DIR=/home/{USER}/target CARGO_NET_OFFLINE=true
cd /src
fail() {{ echo "fresh-root: FAILED: $*"; exit 1; }}
step() {{ echo "fresh-root: ($SECONDS s)"; echo "{STEP}$*"; }}
update-ca-certificates >/dev/null || fail "update-ca-certificates"
step "1. the base system's programs: {base}"
for p in {base}; do command -v "$p" >/dev/null || fail "the base system has no $p (list.rs BASE_PROGRAMS)"; done
step "2. cargo xtask demo as {USER}, who is not root"
mkdir -p $CARGO_TARGET_DIR && chown {USER}: $CARGO_TARGET_DIR
setpriv --reuid=1000 --regid=1000 --clear-groups env HOME=/home/{USER} cargo xtask demo > /tmp/user.out 2>&1
rc=$?
tail -n 5 /tmp/user.out
[ $rc = 2 ] || fail "as {USER}, cargo xtask demo exited $rc, not 2"
grep -qF '{expected_line}' /tmp/user.out || fail "as {USER}, cargo xtask demo did not print: {expected_line}"
step "3. cargo xtask demo as root, fresh target directory"
cargo xtask demo > /tmp/demo.out || {{ cat /tmp/demo.out; fail "cargo xtask demo failed"; }}
cat /tmp/demo.out
last=$(grep -v '^$' /tmp/demo.out | tail -n 1)
case "$last" in "{DEMO_DONE}"*) ;; *) fail "the demo's last line is not the cluster on 2.0.0: $last";; esac
step "4. the test, bench and qemu groups: installed, each tool run"
cargo xtask deps --install --run test bench qemu || fail "cargo xtask deps --install --run test bench qemu"
step "5. every program the code runs by name is on PATH"
cargo xtask deps --programs || fail "a program the code runs is missing"
echo "fresh-root: all steps passed ($SECONDS s)"
"#
    )
}

/// The failure, with the step it happened in, the end of its output, and for a
/// missing program the package this machine has it from.
fn explain(e: &str, log: &str) -> String {
    let step = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(STEP))
        .unwrap_or("before the first step");
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    let mut why = String::new();
    for prog in log
        .lines()
        .filter_map(|l| l.strip_prefix(deps::MISSING_PROGRAM))
    {
        let prog = prog.split_whitespace().next().unwrap_or(prog);
        why.push_str(&format!("\n  {prog}: {}", host_package(prog)));
    }
    for l in log.lines().filter(|l| {
        l.contains("File not found") || l.contains("Could not find") || l.contains("not found:")
    }) {
        why.push_str(&format!("\n  {}", l.trim()));
    }
    format!("{e}, in step {step}{why}\n--- the end of its output:\n{tail}")
}

/// Which Debian package gives this machine a program (`dpkg -S`).
fn host_package(prog: &str) -> String {
    let Some(path) = deps::which(prog) else {
        return "not on this machine either".into();
    };
    // With /usr merged, dpkg knows many programs by their /bin or /sbin path.
    let real = std::fs::canonicalize(&path).unwrap_or(path.clone());
    let unmerged = PathBuf::from(path.display().to_string().replacen("/usr/", "/", 1));
    for p in [&path, &real, &unmerged] {
        if let Ok(o) = Command::new("dpkg").arg("-S").arg(p).output()
            && o.status.success()
        {
            let text = String::from_utf8_lossy(&o.stdout);
            if let Some(pkg) = text.split(':').next() {
                return format!(
                    "on this machine {} is from Debian package {pkg}: add it to xtask/src/deps/list.rs",
                    path.display()
                );
            }
        }
    }
    format!(
        "on this machine it is {}, from no Debian package",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_its_step_and_a_missing_programs_package() {
        let missing = deps::MISSING_PROGRAM;
        let log = format!("{STEP}1. base\n{STEP}5. programs\n{missing}tar (run at x.rs:1)\n");
        let e = explain("failed", &log);
        assert!(e.starts_with("failed, in step 5. programs"), "{e}");
        assert!(e.contains("  tar: on this machine"), "{e}");
        assert!(e.contains("from Debian package tar"), "{e}");
    }

    #[test]
    fn the_script_expects_the_install_line_for_build_and_demo() {
        let s = script_text();
        assert!(
            s.contains("protobuf-compiler libprotobuf-dev etcd-server"),
            "{s}"
        );
        assert!(s.contains(DEMO_DONE));
    }
}
