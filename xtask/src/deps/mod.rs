//! What the project needs from the system, installed by the entry point that
//! needs it: [`ensure`] with the entry point's groups, before it builds anything.
//! As root it installs the missing packages with apt-get and prints them; as
//! anyone else it prints the one `apt-get install` line and stops. The list
//! itself is [`list`]; `cargo xtask deps` prints it.

use std::path::Path;
use std::process::{Command, Stdio};

pub mod list;
mod pip;
pub mod scan;

pub use list::{Check, Group};
pub use pip::{PIP_TOOLS, PipTool, QUMULO_API, ensure_moto, ensure_pip};

/// How `cargo xtask deps --programs` marks a missing program (which
/// `fresh-root` looks up on the host).
pub const MISSING_PROGRAM: &str = "missing program: ";

/// Where a program is on `PATH`.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether a program is on `PATH`.
pub fn on_path(tool: &str) -> bool {
    which(tool).is_some()
}

/// Whether a need is met (quietly).
pub fn present(check: Check) -> bool {
    match check {
        Check::Tool(t, _) => on_path(t),
        Check::File(p) => Path::new(p).is_file(),
        Check::Runs(argv) => Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

fn names(groups: &[Group]) -> String {
    groups
        .iter()
        .map(|g| g.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message for someone who is not root: the one line that installs them.
pub fn not_root_message(groups: &[Group], missing: &[&str]) -> String {
    let list = missing.join(" ");
    format!(
        "missing Debian packages (needed for {}): {list}\n  install them with: sudo apt-get install -y --no-install-recommends {list}",
        names(groups)
    )
}

/// Makes sure every need of `groups` is met: installs the missing packages with
/// apt-get when root (printing them), otherwise fails with the line to run.
/// Afterwards every check must pass; one that does not is named with its package.
pub fn ensure(groups: &[Group]) -> Result<(), String> {
    let missing = list::packages(list::needs_of(groups).filter(|n| !present(n.check)));
    if missing.is_empty() {
        eprintln!("xtask: system packages for {}: all present", names(groups));
        return Ok(());
    }
    if !is_root() {
        return Err(not_root_message(groups, &missing));
    }
    install(groups, &missing)?;
    let still: Vec<String> = list::needs_of(groups)
        .filter(|n| !present(n.check))
        .map(|n| format!("{} (from {})", n.check.what(), n.package))
        .collect();
    if !still.is_empty() {
        return Err(format!(
            "after installing, still missing: {}",
            still.join(", ")
        ));
    }
    Ok(())
}

/// Installs packages with apt-get, saying so.
fn install(groups: &[Group], missing: &[&str]) -> Result<(), String> {
    let list = missing.join(" ");
    eprintln!(
        "xtask: installing Debian packages (needed for {}): {list}",
        names(groups)
    );
    let run = |update: bool| -> bool {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // Package lists are missing on a fresh machine (update first) and may be stale
    // (update once on failure).
    let have_lists = std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    });
    if !run(!have_lists) && (!have_lists || !run(true)) {
        return Err(format!("apt-get install {list} failed"));
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo xtask deps [--install] [--run] [GROUP...]`: prints the list for the
/// groups (all by default), each need with its package, purpose and whether it
/// is present; `--install` installs the missing ones (and, for `test` and
/// `bench`, the pinned pip tools); `--run` then runs every tool of the groups
/// with its version arguments and fails naming the first that does not run.
/// `cargo xtask deps --programs` checks that every program the code runs by name
/// ([`scan`]) is on `PATH`, naming each that is not.
pub fn main(args: &[String]) -> Result<(), String> {
    let (mut do_install, mut do_run, mut groups) = (false, false, vec![]);
    for a in args {
        match a.as_str() {
            "--programs" => return programs_on_path(),
            "--install" => do_install = true,
            "--run" => do_run = true,
            g => groups.push(Group::parse(g).ok_or_else(|| {
                format!("deps: unknown group {g:?} (groups: {})", names(&Group::ALL))
            })?),
        }
    }
    if groups.is_empty() {
        groups = Group::ALL.to_vec();
    }
    for n in list::needs_of(&groups) {
        let gs: Vec<&str> = n.groups.iter().map(|g| g.name()).collect();
        println!(
            "{:<8} {:<18} {:<48} [{}] {}",
            if present(n.check) {
                "present"
            } else {
                "missing"
            },
            n.package,
            n.check.what(),
            gs.join(","),
            n.why
        );
    }
    let pips: Vec<&PipTool> = PIP_TOOLS
        .iter()
        .filter(|t| t.groups.iter().any(|g| groups.contains(g)))
        .collect();
    for t in &pips {
        println!(
            "{:<8} pip {}",
            if t.program().is_file() {
                "present"
            } else {
                "missing"
            },
            t.spec
        );
    }
    if do_install {
        ensure(&groups)?;
        for t in &pips {
            ensure_pip(t)?;
        }
    }
    if do_run {
        run_tools(&groups, &pips)?;
    }
    Ok(())
}

/// Every program the code runs by name, on `PATH`? Prints each missing one
/// (with where it is run and where the list says it comes from) and fails.
fn programs_on_path() -> Result<(), String> {
    let found = scan::programs(&crate::root());
    let mut missing = 0;
    for (prog, at) in &found {
        if !on_path(prog) {
            missing += 1;
            println!(
                "{}{prog} (run at {}; {})",
                MISSING_PROGRAM,
                at.join(", "),
                scan::source_of(prog).map_or("no entry of the list provides it".to_owned(), |s| {
                    format!("the list says it comes from {s}")
                })
            );
        }
    }
    eprintln!(
        "xtask: {} programs the code runs by name, {missing} not on PATH",
        found.len()
    );
    if missing == 0 {
        Ok(())
    } else {
        Err(format!("{missing} programs the code runs are not on PATH"))
    }
}

/// Runs every tool of `groups` with its version arguments (and each pip tool's
/// `--help`), so a program that is installed but cannot run is caught.
fn run_tools(groups: &[Group], pips: &[&PipTool]) -> Result<(), String> {
    let mut cmds: Vec<(String, Command)> = vec![];
    for n in list::needs_of(groups) {
        match n.check {
            Check::Tool(t, args) => {
                let mut c = Command::new(t);
                c.args(args);
                cmds.push((format!("{t} {} (from {})", args.join(" "), n.package), c));
            }
            Check::Runs(argv) => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                cmds.push((format!("{} (from {})", argv.join(" "), n.package), c));
            }
            Check::File(_) => {}
        }
    }
    for t in pips {
        let mut c = Command::new(t.program());
        c.arg("--help");
        cmds.push((format!("{} --help (pip {})", t.bin, t.spec), c));
    }
    for (what, mut c) in cmds {
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "xtask: ran {what}: {}",
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_needs_something_and_every_need_has_a_group() {
        for g in Group::ALL {
            assert!(list::needs_of(&[g]).next().is_some(), "{g:?} is empty");
            assert_eq!(Group::parse(g.name()), Some(g));
        }
        for n in list::NEEDS {
            assert!(!n.groups.is_empty(), "{} has no group", n.package);
            assert!(!n.why.is_empty(), "{} says not what it is for", n.package);
        }
    }

    #[test]
    fn building_needs_protoc_and_its_include_files() {
        let build: Vec<&str> = list::needs_of(&[Group::Build]).map(|n| n.package).collect();
        assert_eq!(build, ["protobuf-compiler", "libprotobuf-dev"]);
    }

    #[test]
    fn someone_not_root_gets_one_install_line() {
        let m = not_root_message(&[Group::Build, Group::Demo], &["a", "b"]);
        assert_eq!(
            m,
            "missing Debian packages (needed for build, demo): a b\n  install them with: sudo apt-get install -y --no-install-recommends a b"
        );
    }

    #[test]
    fn checks_tell_present_from_missing() {
        assert!(present(Check::Runs(&["true"])));
        assert!(!present(Check::Runs(&["false"])));
        assert!(present(Check::Tool("true", &[])));
        assert!(!present(Check::Tool("qimg-no-such-tool", &[])));
        assert!(present(Check::File("/proc/self/status")));
        assert!(!present(Check::File("/qimg/no/such/file")));
    }
}
