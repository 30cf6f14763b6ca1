//! Pinned Python tools the tests and benches run, each in its own venv under the
//! user's cache. Their Python (`python3-venv`) is a need of the one list.

use std::process::Command;

use super::Group;

/// A pinned Python package in its own venv under the user's cache (so it
/// survives clean clones and empty target directories), and the program of it
/// the tests run.
pub struct PipTool {
    /// The pip requirement.
    pub spec: &'static str,
    /// The venv's directory name under `~/.cache/qimg`.
    pub dir: &'static str,
    /// The program in the venv's `bin/`.
    pub bin: &'static str,
    /// The entry points' groups that need it.
    pub groups: &'static [Group],
}

/// The AWS emulator the cloud tests run against (notes/aws-emulator.md).
pub const MOTO: PipTool = PipTool {
    spec: "moto[server,ec2,ebs,ssm]==5.2.5",
    dir: "moto-5.2.5",
    bin: "moto_server",
    groups: &[Group::Test, Group::Bench],
};

/// Qumulo's Python SDK and its `qq` CLI, the client the agent's tests drive it
/// with (notes/qumulo-rest.md).
pub const QUMULO_API: PipTool = PipTool {
    spec: "qumulo-api==7.10.2.1",
    dir: "qumulo-api-7.10.2.1",
    bin: "qq",
    groups: &[Group::Test],
};

/// Every pinned pip tool.
pub const PIP_TOOLS: &[PipTool] = &[MOTO, QUMULO_API];

impl PipTool {
    /// Where its venv lives.
    pub fn venv(&self) -> std::path::PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        std::path::Path::new(&home)
            .join(".cache/qimg")
            .join(self.dir)
    }

    /// Its program in the venv.
    pub fn program(&self) -> std::path::PathBuf {
        self.venv().join("bin").join(self.bin)
    }
}

/// The pinned moto server, installed if missing.
pub fn ensure_moto() -> Result<std::path::PathBuf, String> {
    ensure_pip(&MOTO)
}

/// Makes sure a pinned pip tool is installed in its venv and returns its
/// program. Python's venv comes from the one list (`python3-venv`, groups test and
/// bench), which the entry point has ensured. Prints what it installs.
pub fn ensure_pip(t: &PipTool) -> Result<std::path::PathBuf, String> {
    let (dir, program) = (t.venv(), t.program());
    if program.is_file() {
        eprintln!("xtask: {} present: {}", t.spec, program.display());
        return Ok(program);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let venv = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !venv {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "python3 -m venv {} failed (Debian package python3-venv: cargo xtask deps --install test)",
            dir.display()
        ));
    }
    eprintln!(
        "xtask: installing Python packages with pip: {} (into {})",
        t.spec,
        dir.display()
    );
    let ok = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", t.spec])
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !program.is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("pip install {} failed", t.spec));
    }
    Ok(program)
}
