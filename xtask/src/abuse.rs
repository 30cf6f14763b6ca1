//! `cargo xtask abuse`: the agent's abuse suite (issue 28) against a release
//! build, as a node runs it. The same tests CI's test step runs against the
//! dev build, each agent now the release `qimgd` (`QIMG_AGENT_BIN`):
//! `qimgd/tests/security.rs` (a login flood checks no more passwords than the
//! slow-down allows and the agent stays under 64 MiB; held connections and slow
//! bodies are closed, an operator still logs in at the cap; forged, minted
//! long-lived and same-second tokens refused; malformed bodies and refused
//! bundles change nothing; old TLS refused; a renewed certificate served), and
//! the cluster's token-key rotation (a leaked key refused on every node). The
//! etcd attacks (a node's identity writing another node's keys) run against
//! real etcd with authentication on. Bounded, loopback only.
//!
//! The tests are selected with `--workspace`, so after a workspace test build
//! they are the binaries it built (not built again for one package's
//! features). Not in CI: the release build does not fit its 35 minutes on two
//! cores (`ci.rs`, docs/benchmarks.md).

use std::time::Instant;

use crate::*;

pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("cargo xtask abuse takes no arguments ({a:?})"));
    }
    let start = Instant::now();
    harness::release_build(&["qimgd"])?;
    let agent = target_dir().join("release/qimgd");
    let run = |name: &str, args: &[&str]| {
        step(
            name,
            cargo()
                .args(["test", "--workspace"])
                .args(args)
                .env("QIMG_AGENT_BIN", &agent)
                .env("RUST_TEST_THREADS", "4"),
        )
    };
    run(
        "abuse: the agent's security suite, release agent",
        &["--test", "security"],
    )?;
    run(
        "abuse: token keys rotated and a leaked one refused, release agents",
        &["--test", "cluster", "users::the_token_key"],
    )?;
    run(
        "abuse: a node's identity writing another node's keys, real etcd",
        &["--test", "etcd", "a_stolen_node_key"],
    )?;
    eprintln!(
        "xtask: abuse suite passed against {} in {:.0} s",
        agent.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
