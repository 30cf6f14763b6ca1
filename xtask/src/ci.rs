//! `cargo xtask ci`: every gate CI runs, in order (README's test command).

use crate::*;

pub fn main() -> Result<(), String> {
    let start = std::time::Instant::now();
    space::require("xtask ci", &target_dir(), space::CI_GIB)?;
    step("rustfmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The AWS emulator the cloud tests run against (pinned moto, pip), and
    // Qumulo's own qq client the agent's tests drive it with (pinned, pip).
    let moto = deps::ensure_moto()?;
    let qumulo_qq = deps::ensure_pip(&deps::QUMULO_API)?;
    step(
        "tests",
        cargo()
            .args(["test", "--workspace"])
            .env("QIMG_MOTO_SERVER", &moto)
            .env("QIMG_QUMULO_QQ", &qumulo_qq),
    )?;
    // The README's demos keep working: the cluster's, then one node's.
    demo_cluster::main(&[])?;
    demo_upgrade::main(&[])?;
    // The fuzz crate is its own workspace (cargo-fuzz layout); checking it here keeps
    // the targets compiling. It shares the workspace's lock file versions and dev
    // profile (fuzz/Cargo.toml), so in this target directory it reuses what clippy
    // checked: about 15 s, where a build of its own took 104 s. Running the
    // targets needs cargo-fuzz: see fuzz/README.md.
    step(
        "fuzz targets check",
        cargo()
            .args([
                "check",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--target-dir",
            ])
            .arg(target_dir()),
    )?;
    // The one list of system packages, proved complete on a new Debian root.
    heavy("fresh-root", "QIMG_SKIP_FRESH_ROOT", &|| {
        fresh_root::main(&[])
    })?;
    // The boot chain on real firmware (QEMU, OVMF, the kernel).
    heavy("qemu-test", "QIMG_SKIP_QEMU", &|| qemu::main(&[]))?;
    // Three real nodes as one cluster, the scenarios without reboots: formed,
    // one login for all, an instant upgrade fetched from the node it was given
    // to, a bundle altered there refused (about 4 minutes). The four platform
    // scenarios with real reboots (`cargo xtask qemu-cluster` without `--quick`)
    // take about 27 more, past CI's 35 (docs/benchmarks.md).
    heavy("qemu-cluster --quick", "QIMG_SKIP_QEMU", &|| {
        qemu::cluster(&["--quick".to_owned()])
    })?;
    eprintln!("xtask: ci passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// A heavy gate: it fails (it never skips itself) when what it needs cannot be
/// had; a person can opt out explicitly with `opt_out=1`, and it says so.
fn heavy(name: &str, opt_out: &str, run: &dyn Fn() -> Result<(), String>) -> Result<(), String> {
    if std::env::var(opt_out).as_deref() == Ok("1") {
        eprintln!("xtask: SKIPPED {name} because {opt_out}=1");
        return Ok(());
    }
    let t = std::time::Instant::now();
    run()?;
    eprintln!(
        "xtask: == {name}: passed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
