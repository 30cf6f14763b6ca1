//! Debian packages the tests and benchmarks need: installed with apt when running
//! as root, otherwise listed so a person can install them.

use std::process::Command;

/// What the test suite needs, with the tools it checks for.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("squashfs-tools", "unsquashfs"),
    ("cryptsetup-bin", "veritysetup"),
    ("minisign", "minisign"),
    ("zstd", "zstd"),
    ("tar", "tar"),
    ("gdisk", "sgdisk"),
    ("binutils", "objdump"),
    ("dosfstools", "fsck.vfat"),
    ("mtools", "mdir"),
    // The cluster: etcd members in the tests, protoc to build etcd-client.
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    ("protobuf-compiler", "protoc"),
    ("openssl", "openssl"),
    // The Web UI's tests: headless Chromium driven over WebDriver.
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
];

/// Files the tests need, with the Debian package that provides each.
pub const TEST_FILES: &[(&str, &str)] = &[(
    "systemd-boot-efi",
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
)];

/// What `cargo xtask bench` additionally needs.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("squashfs-tools", "mksquashfs"),
    ("cryptsetup-bin", "veritysetup"),
    ("zstd", "zstd"),
    ("coreutils", "sha256sum"),
    ("openssl", "openssl"),
    ("tar", "tar"),
    ("minisign", "minisign"),
];

/// Installs the packages of missing files (see [`ensure`]).
pub fn ensure_files(files: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<(&str, &str)> = files
        .iter()
        .filter(|(_, path)| !std::path::Path::new(path).is_file())
        .map(|(pkg, path)| (*pkg, *path))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Install the packages that provide them.
    install(&missing.iter().map(|(p, _)| *p).collect::<Vec<_>>())?;
    for (_, path) in files {
        if !std::path::Path::new(path).is_file() {
            return Err(format!("after installing, still missing: {path}"));
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Installs `missing` packages with apt-get when root; otherwise fails with the list.
fn install(missing: &[&str]) -> Result<(), String> {
    let list = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "missing Debian packages: {list}\n  install them with: sudo apt-get install -y {list}"
        ));
    }
    eprintln!("xtask: installing Debian packages: {list}");
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
    // Package lists may be missing or stale on a fresh machine: update once on failure.
    if !run(false) && !run(true) {
        return Err(format!("apt-get install {list} failed"));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure every package's tool is on PATH, installing the missing packages with
/// apt-get when root. Prints exactly what it installs.
pub fn ensure(packages: &[(&str, &str)]) -> Result<(), String> {
    let mut missing: Vec<&str> = packages
        .iter()
        .filter(|(_, tool)| !on_path(tool))
        .map(|(pkg, _)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        eprintln!(
            "xtask: Debian packages present: {}",
            packages.iter().map(|p| p.0).collect::<Vec<_>>().join(" ")
        );
        return Ok(());
    }
    install(&missing)?;
    let still: Vec<&str> = packages
        .iter()
        .filter(|(_, tool)| !on_path(tool))
        .map(|(_, tool)| *tool)
        .collect();
    if !still.is_empty() {
        return Err(format!(
            "after installing, still not on PATH: {}",
            still.join(" ")
        ));
    }
    Ok(())
}

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
}

/// The AWS emulator the cloud tests run against (notes/aws-emulator.md).
pub const MOTO: PipTool = PipTool {
    spec: "moto[server,ec2,ebs,ssm]==5.2.5",
    dir: "moto-5.2.5",
    bin: "moto_server",
};

/// Qumulo's Python SDK and its `qq` CLI, the client the agent's tests drive it
/// with (notes/qumulo-rest.md).
pub const QUMULO_API: PipTool = PipTool {
    spec: "qumulo-api==7.10.2.1",
    dir: "qumulo-api-7.10.2.1",
    bin: "qq",
};

/// Where a pip tool's venv lives.
pub fn venv_dir(t: &PipTool) -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".cache/qimg").join(t.dir)
}

/// The pinned moto server, installed if missing.
pub fn ensure_moto() -> Result<std::path::PathBuf, String> {
    ensure_pip(&MOTO)
}

/// Makes sure a pinned pip tool is installed (a Python venv + pip, installing
/// python3-venv with apt when root if venv is missing) and returns its program.
/// Prints what it installs.
pub fn ensure_pip(t: &PipTool) -> Result<std::path::PathBuf, String> {
    let dir = venv_dir(t);
    let program = dir.join("bin").join(t.bin);
    if program.is_file() {
        eprintln!("xtask: {} present: {}", t.spec, program.display());
        return Ok(program);
    }
    let venv = |dir: &std::path::Path| {
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = std::fs::remove_dir_all(&dir);
    if !venv(&dir) {
        install(&["python3-venv", "python3-pip"])?;
        let _ = std::fs::remove_dir_all(&dir);
        if !venv(&dir) {
            return Err(format!("python3 -m venv {} failed", dir.display()));
        }
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
