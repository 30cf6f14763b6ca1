//! `cargo xtask ci`: every gate CI runs, in order (README's test command).

use crate::*;

pub fn main() -> Result<(), String> {
    let start = std::time::Instant::now();
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
    // The fuzz crate is its own workspace (cargo-fuzz layout); building it here keeps
    // the targets compiling. Running them needs cargo-fuzz: see fuzz/README.md.
    step(
        "fuzz targets build",
        cargo()
            .args([
                "build",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--target-dir",
            ])
            .arg(target_dir().join("fuzz")),
    )?;
    // The one list of system packages, proved complete on a new Debian root. It
    // fails (never skips itself) when it cannot run; a person can opt out explicitly.
    if std::env::var("QIMG_SKIP_FRESH_ROOT").as_deref() == Ok("1") {
        eprintln!("xtask: SKIPPED fresh-root because QIMG_SKIP_FRESH_ROOT=1");
    } else {
        let t = std::time::Instant::now();
        fresh_root::main(&[])?;
        eprintln!(
            "xtask: == fresh-root: passed in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    // The boot chain on real firmware. It fails (it never skips itself) when QEMU,
    // OVMF or the kernel cannot be had; a person can opt out explicitly.
    if std::env::var("QIMG_SKIP_QEMU").as_deref() == Ok("1") {
        eprintln!("xtask: SKIPPED qemu-test because QIMG_SKIP_QEMU=1");
    } else {
        let t = std::time::Instant::now();
        qemu::main(&[])?;
        eprintln!(
            "xtask: == qemu-test: passed in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!("xtask: ci passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
