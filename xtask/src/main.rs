//! `cargo xtask`: the single entry point for CI and benchmarks.
//!
//! Every entry point first ensures the groups of system packages it needs (the
//! one list, `deps/list.rs`: as root it installs the missing ones and says so;
//! else it prints the `apt-get install` line and stops), before it builds anything.
//!
//! - `cargo xtask ci`: groups build, demo, test, qemu, fresh-root; then every gate
//!   CI runs: rustfmt, clippy with warnings denied, all tests, both demos, a check
//!   of the fuzz targets, `fresh-root` (`QIMG_SKIP_FRESH_ROOT=1` skips it) and
//!   `qemu-test` and `qemu-cluster --quick` (`QIMG_SKIP_QEMU=1` skips both), saying so
//!   when skipped.
//! - `cargo xtask abuse`: the agent's abuse suite against a release build of
//!   `qimgd` (see `abuse.rs`).
//! - `cargo xtask qemu-test [--shell] [--firmware prebuilt|debian]`: boots images built
//!   with this project's tools on OVMF + systemd-boot under QEMU (see `qemu/mod.rs`).
//! - `cargo xtask qemu-cluster [--quick | --only N,M…]`: three real nodes under
//!   QEMU as one cluster, on a link private to the test (see `qemu/node/cluster/`);
//!   CI runs `--quick` (formed, one login, an instant upgrade, an altered bundle
//!   refused).
//! - `cargo xtask demo [--nodes N] [--dir DIR]`: a rolling platform upgrade of a
//!   cluster of simulated nodes with etcd, driven by `qq` (see `demo_cluster.rs`).
//! - `cargo xtask demo-upgrade [--dir DIR]`: a whole upgrade of a simulated node
//!   (instant, then platform) with the shipped CLIs (see `demo_upgrade.rs`).
//! - `cargo xtask bench bundle [--size MIB] [--level N] [--runs N] [--dir DIR]`:
//!   builds a bundle from a generated tree and does the same work with the fastest
//!   honest pipeline of standard tools (mksquashfs, veritysetup, openssl dgst,
//!   minisign, tar) on the same input, printing times, CPU, bytes written, peak
//!   memory, the ratios, the machine's limit for the job, and verify throughput
//!   against sha256sum and openssl (`bench.rs`).
//! - `cargo xtask bench firmware|upgrade|cloud [--size MIB] [--runs N] [--dir DIR]`:
//!   `qfirmware flash`, `qq` prepare (and instant downtime), `qcloud publish` against
//!   their standard equivalents (`bench_fw.rs`, `bench_upgrade.rs`, `bench_cloud.rs`;
//!   the shared harness is `harness.rs`).
//! - `cargo xtask bench agent [--size MIB] [--runs N] [--dir DIR]`: a prepare through
//!   `qimgd`'s REST API against `qq` in local mode, status latency under 64 pollers,
//!   the agent's RSS (`bench_agent.rs`).
//! - `cargo xtask bench cluster [--nodes N]`: an instant upgrade of N simulated
//!   nodes through one request, coordinator failover, agent and etcd memory
//!   (`bench_cluster.rs`).
//! - `cargo xtask bench distribute [--nodes N] [--size MIB] [--runs N] [--serve-mib R]
//!   [--dir DIR]`:
//!   a bundle uploaded to one of N simulated nodes reaching the others (the
//!   peers' verified fetch) against `scp` to them through an sshd of its own on
//!   loopback (`sshd.rs`), and the prepare with the fetch against one from local
//!   files (`bench_distribute.rs`).
//! - `cargo xtask bench eta [--nodes N]`: the preview's expected time against the
//!   upgrade's, over three rolling upgrades of N simulated nodes (`bench_eta.rs`).
//! - `cargo xtask fresh-root [--keep]`: proves the list complete on a new minimal
//!   Debian root (`fresh_root.rs`).
//! - `cargo xtask deps [--install] [--run] [GROUP...]`: prints the list (what each
//!   package is for, present or missing), installs it, runs its tools (`deps/`).

mod abuse;
mod bench;
mod bench_agent;
mod bench_cloud;
mod bench_cluster;
mod bench_distribute;
mod bench_eta;
mod bench_fw;
mod bench_upgrade;
mod ci;
mod demo_cluster;
mod demo_upgrade;
mod deps;
mod fresh_root;
mod harness;
mod qemu;
mod sim_cluster;
mod space;
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    use deps::Group::{Bench, Build, Demo, FreshRoot, Qemu, Test};
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Each entry point first ensures what it needs from the system (the one list,
    // `deps/list.rs`), before it builds anything.
    let with = |groups: &[deps::Group], run: &dyn Fn() -> Result<(), String>| {
        deps::ensure(groups).and_then(|()| run())
    };
    let rest = args.get(1..).unwrap_or_default();
    let result = match args.first().map(String::as_str) {
        Some("ci") => with(&[Build, Demo, Test, Qemu, FreshRoot], &ci::main),
        Some("bench") => with(&[Build, Demo, Bench], &|| bench::main(rest)),
        Some("abuse") => with(&[Build, Test], &|| abuse::main(rest)),
        Some("qemu-test") => with(&[Build, Qemu], &|| qemu::main(rest)),
        Some("qemu-cluster") => with(&[Build, Qemu], &|| qemu::cluster(rest)),
        Some("demo") => with(&[Build, Demo], &|| demo_cluster::main(rest)),
        Some("demo-upgrade") => with(&[Build, Demo], &|| demo_upgrade::main(rest)),
        Some("fresh-root") => with(&[FreshRoot], &|| fresh_root::main(rest)),
        Some("deps") => deps::main(rest),
        _ => Err(
            "usage: cargo xtask ci | cargo xtask abuse | cargo xtask demo [--nodes N] [--dir DIR] | cargo xtask demo-upgrade [--dir DIR] | cargo xtask qemu-test [--shell] [--firmware prebuilt|debian] | cargo xtask bench bundle|firmware|upgrade|cloud [--size MIB] [--level N] [--runs N] [--dir DIR] | cargo xtask fresh-root [--keep] | cargo xtask deps [--install] [--run] [GROUP...]"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// The cargo target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command in the workspace root, echoing it; fails on a non-zero exit.
pub fn step(name: &str, cmd: &mut Command) -> Result<(), String> {
    cmd.current_dir(root());
    eprintln!("xtask: == {name}: {cmd:?}");
    let start = std::time::Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: cannot run {cmd:?}: {e}"))?;
    eprintln!(
        "xtask: == {name}: {status} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The packages whose programs xtask runs (the demos, the QEMU suites), each
/// with its program.
const BINS: [(&str, &str); 4] = [
    ("imagebuild", "imagebuild"),
    ("bootctl", "qbootctl"),
    ("qq", "qq"),
    ("qimgd", "qimgd"),
];

/// Set once `cargo test --workspace` has passed in this process (CI): its build
/// made every program of [`BINS`] (their integration tests run them).
static BINS_FROM_TESTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that the test build just made the shipped programs (`cargo xtask ci`).
pub fn bins_built_by_tests() {
    BINS_FROM_TESTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Builds the shipped programs (debug) into `target/debug`, always as one set:
/// cargo unifies the dependencies' features over the packages asked for, so
/// each different subset built them again (CI built three subsets one after
/// another: 15, 15 and 49 s, where one build and two no-ops do). After CI's test
/// build, which made them from the same sources (with the tests' features), it
/// uses those: a build of the set took 55 s more in CI.
pub fn build_bins(name: &str) -> Result<(), String> {
    let dir = target_dir().join("debug");
    if BINS_FROM_TESTS.load(std::sync::atomic::Ordering::Relaxed)
        && BINS.iter().all(|(_, p)| dir.join(p).is_file())
    {
        eprintln!(
            "xtask: == {name}: the programs the test build made ({})",
            dir.display()
        );
        return Ok(());
    }
    let mut c = cargo();
    c.args(["build", "-q"]);
    for (p, _) in BINS {
        c.args(["-p", p]);
    }
    step(name, &mut c)
}
