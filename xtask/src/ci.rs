//! `cargo xtask ci`: every gate CI runs, in order (README's test command).

use crate::*;

/// What CI's builds set for every cargo it runs (clippy, the tests, the demos, the
/// QEMU suites' binaries): a clean clone builds once, so incremental state is only
/// written, never read, and full debug info only makes the 50 test binaries bigger
/// to write and link; backtraces keep their file and line. On this 2-core machine
/// the workspace's own crates built for the tests in 112 s with cargo's defaults and
/// in 57 s with these (docs/benchmarks.md). A developer's builds keep the defaults.
pub const BUILD_ENV: [(&str, &str); 2] = [
    ("CARGO_INCREMENTAL", "0"),
    ("CARGO_PROFILE_DEV_DEBUG", "line-tables-only"),
];

pub fn main() -> Result<(), String> {
    let start = std::time::Instant::now();
    for (k, v) in BUILD_ENV {
        // SAFETY: set first, while xtask runs no other thread; every cargo CI
        // starts inherits it, so all of them share one set of artifacts.
        unsafe { std::env::set_var(k, v) };
    }
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
            .env("QIMG_QUMULO_QQ", &qumulo_qq)
            .env("RUST_TEST_THREADS", TEST_THREADS),
    )?;
    crate::bins_built_by_tests();
    // The README's demos keep working: one node's here; the cluster's
    // (`cargo xtask demo`, README's first command) runs in the fresh root below,
    // from nothing, and here only when that check is skipped.
    demo_upgrade::main(&[])?;
    let check_fresh_root = !skipped("fresh-root", "QIMG_SKIP_FRESH_ROOT");
    if !check_fresh_root {
        demo_cluster::main(&[])?;
    }
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
    // (Run beside qemu-test's boot chain, both took longer than one after the
    // other: 418 s for the two against 253 s and about 145 s alone; both cores
    // are busy in each.)
    // The abuse suite runs here against the dev build (the tests above);
    // against a release build it is `cargo xtask abuse`, not in CI: the release
    // build of qimgd takes 180 s from nothing, which put CI at 2052 s (35 min 11 s
    // with xtask's build) after the tests, and beside the fresh-root check made
    // that check 468 s instead of 258 (docs/benchmarks.md).
    if check_fresh_root {
        timed("fresh-root", &|| fresh_root::main(&[]))?;
    }
    // The boot chain on real firmware (QEMU, OVMF, the kernel), then a real node.
    heavy("qemu-test", QEMU_OPT_OUT, &|| qemu::main(&[]))?;
    // Three real nodes as one cluster, the scenarios without reboots: formed,
    // one login for all, an instant upgrade fetched from the node it was given
    // to, a bundle altered there refused (about 4 minutes). The four platform
    // scenarios with real reboots (`cargo xtask qemu-cluster` without `--quick`)
    // take about 27 more, past CI's 35 (docs/benchmarks.md).
    heavy("qemu-cluster --quick", QEMU_OPT_OUT, &|| {
        qemu::cluster(&["--quick".to_owned()])
    })?;
    eprintln!("xtask: ci passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Test threads per test binary: most of the tests wait on processes (etcd,
/// agents, Chromium, moto), so more than the two cores run them sooner: the
/// whole run took 290 s with 2 (the default here), 234 s with 4.
const TEST_THREADS: &str = "4";
const QEMU_OPT_OUT: &str = "QIMG_SKIP_QEMU";

/// True when a person opted out of the heavy gate `name` with `opt_out=1`; says so.
fn skipped(name: &str, opt_out: &str) -> bool {
    let off = std::env::var(opt_out).as_deref() == Ok("1");
    if off {
        eprintln!("xtask: SKIPPED {name} because {opt_out}=1");
    }
    off
}

/// A heavy gate: it fails (it never skips itself) when what it needs cannot be
/// had; a person can opt out explicitly with `opt_out=1`, and it says so.
fn heavy(name: &str, opt_out: &str, run: &dyn Fn() -> Result<(), String>) -> Result<(), String> {
    if skipped(name, opt_out) {
        return Ok(());
    }
    timed(name, run)
}

/// Runs `run`, saying how long it took when it passed.
fn timed(name: &str, run: &dyn Fn() -> Result<(), String>) -> Result<(), String> {
    let t = std::time::Instant::now();
    run()?;
    eprintln!(
        "xtask: == {name}: passed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
