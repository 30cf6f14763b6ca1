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

/// The moto version the cloud tests run against (notes/aws-emulator.md).
pub const MOTO: &str = "moto[server,ec2,ebs,ssm]==5.2.5";

/// Where the pinned moto lives: a venv under the user's cache, so it survives
/// clean clones and empty target directories.
pub fn moto_dir() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".cache/qimg/moto-5.2.5")
}

/// Makes sure the pinned moto server is installed (a Python venv + pip, installing
/// python3-venv with apt when root if venv is missing) and returns its
/// `moto_server`. Prints what it installs.
pub fn ensure_moto() -> Result<std::path::PathBuf, String> {
    let dir = moto_dir();
    let server = dir.join("bin/moto_server");
    if server.is_file() {
        eprintln!("xtask: moto present: {}", server.display());
        return Ok(server);
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
        "xtask: installing Python packages with pip: {MOTO} (into {})",
        dir.display()
    );
    let ok = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", MOTO])
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !server.is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("pip install {MOTO} failed"));
    }
    Ok(server)
}
