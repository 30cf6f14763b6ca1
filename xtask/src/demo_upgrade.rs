//! `cargo xtask demo-upgrade [--dir DIR]`: a whole upgrade of a simulated node with
//! the shipped command-line tools, progress bars and all:
//!
//! 1. `imagebuild keygen`, then three releases built with `imagebuild bundle` from
//!    generated content (platform root, a UKI built from Debian's systemd stub, a
//!    container whose `/entry` reports healthy): 7.0.0 (platform 7.0), 7.0.1 (same
//!    platform: instant) and 7.1.0 (platform 7.1);
//! 2. `imagebuild disk` from 7.0.0 and `qq sim_create`: the factory node;
//! 3. `qq upgrade_mode`, then `qq upgrade_cluster --path 7.0.1` (instant, downtime
//!    reported), `qq upgrade_cluster prepare --path 7.1.0`, `qq upgrade_status`,
//!    `qq upgrade_cluster commit` (simulated reboot, health gate, bless);
//! 4. `qbootctl --image … status`, and the node's container is stopped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{step, target_dir};

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(path, text))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Inputs of one demo release in `dir`; returns its spec.
fn release(dir: &Path, version: &str, platform: &str) -> Result<PathBuf, String> {
    let e = |x: std::io::Error| format!("{}: {x}", dir.display());
    imagebuild::sample::generate_tree(&dir.join("rootfs"), 4 << 20, 1, platform).map_err(e)?;
    imagebuild::sample::generate_tree(&dir.join("container"), 2 << 20, 2, version).map_err(e)?;
    let entry = dir.join("container/entry");
    write(
        &entry,
        "#!/bin/sh\necho \"qimg-demo $QIMG_CONTAINER_VERSION serving\"\necho ok > \"$QIMG_HEALTH_FILE\"\nexec sleep 1000000\n",
    )?;
    std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(e)?;
    // A stand-in kernel: enough of a bzImage header for the UKI builder; the
    // simulated node never executes it (the QEMU test boots real kernels).
    let mut kernel = vec![0u8; 8192];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.join("vmlinuz"), kernel).map_err(e)?;
    write(
        &dir.join("os-release"),
        &format!(
            "ID=qimg-demo\nNAME=\"qimg demo\"\nIMAGE_ID=qimg-demo\nIMAGE_VERSION={platform}\n"
        ),
    )?;
    let spec = dir.join("release.toml");
    write(
        &spec,
        &format!(
            r#"product = "qimg-demo"
version = "{version}"
platform_version = "{platform}"
target = "onprem"
compatible_models = ["demo-node-1"]
min_installed_version = "7.0"
[platform]
root = "rootfs"
kernel = "vmlinuz"
os_release = "os-release"
cmdline = "console=ttyS0"
[container]
root = "container"
"#
        ),
    )?;
    Ok(spec)
}

pub fn main(args: &[String]) -> Result<(), String> {
    let mut dir = target_dir().join("demo-upgrade");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(it.next().ok_or("--dir needs a value")?),
            other => return Err(format!("demo-upgrade: unknown argument {other}")),
        }
    }
    crate::build_bins("build")?;
    let bin = |name: &str| target_dir().join("debug").join(name);
    let (imagebuild, qq, qbootctl) = (bin("imagebuild"), bin("qq"), bin("qbootctl"));
    if dir.join("node").exists() {
        // A previous run's container may still run.
        let _ = Command::new(&qq)
            .args(["--node"])
            .arg(dir.join("node"))
            .arg("sim_poweroff")
            .status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Every path below is absolute: `step` runs commands in the workspace root.
    let at = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let run = |name: &str, c: &mut Command| step(name, c);
    run(
        "keygen",
        Command::new(&imagebuild).args(["keygen", "--out", &at("release")]),
    )?;
    let mut bundles = vec![];
    for (v, p) in [("7.0.0", "7.0"), ("7.0.1", "7.0"), ("7.1.0", "7.1")] {
        let spec = release(&dir.join(format!("src-{v}")), v, p)?;
        let out = dir.join(format!("qimg-demo-{v}.qimg"));
        run(
            &format!("bundle {v}"),
            Command::new(&imagebuild)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["bundle", "--key", &at("release.key"), "--spec"])
                .arg(&spec)
                .arg("--out")
                .arg(&out),
        )?;
        bundles.push(out);
    }
    run(
        "disk image of 7.0.0",
        Command::new(&imagebuild)
            .args(["disk", "--pubkey", &at("release.pub"), "--esp-mib", "64"])
            .args([
                "--root-mib",
                "24",
                "--data-mib",
                "16",
                "--out",
                &at("disk.img"),
            ])
            .arg("--bundle")
            .arg(&bundles[0]),
    )?;
    run(
        "a simulated node",
        Command::new(&qq)
            .args([
                "sim_create",
                "--dir",
                &at("node"),
                "--disk",
                &at("disk.img"),
            ])
            .args([
                "--key",
                &at("release.pub"),
                "--model",
                "demo-node-1",
                "--bundle",
            ])
            .arg(&bundles[0]),
    )?;
    let q = |args: &[&str]| {
        let mut c = Command::new(&qq);
        c.args(["--node", &at("node")]).args(args);
        c
    };
    let p = |b: &PathBuf| b.to_string_lossy().into_owned();
    run(
        "instant or platform?",
        &mut q(&["upgrade_mode", "--to", &p(&bundles[1])]),
    )?;
    run(
        "instant upgrade to 7.0.1",
        &mut q(&["upgrade_cluster", "--path", &p(&bundles[1])]),
    )?;
    run(
        "instant or platform?",
        &mut q(&["upgrade_mode", "--to", &p(&bundles[2])]),
    )?;
    run(
        "prepare 7.1.0",
        &mut q(&["upgrade_cluster", "prepare", "--path", &p(&bundles[2])]),
    )?;
    run("status", &mut q(&["upgrade_status"]))?;
    run("commit 7.1.0", &mut q(&["upgrade_cluster", "commit"]))?;
    run(
        "boot entries",
        Command::new(&qbootctl).args(["--image", &at("node/disk.img"), "status"]),
    )?;
    run("power off the node", &mut q(&["sim_poweroff"]))?;
    eprintln!(
        "xtask: demo-upgrade done: the node is in {} (`qq --node {}/node upgrade_status`)",
        dir.display(),
        dir.display()
    );
    Ok(())
}
