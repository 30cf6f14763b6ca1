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
//! The tests are selected with `--workspace`, so after CI's test step they are
//! the binaries it built (not built again for one package's features). Not in
//! CI: the release build does not fit its 35 minutes on two cores (`ci.rs`).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// How long the release build may take (it took 180 s from nothing here).
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);

pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("cargo xtask abuse takes no arguments ({a:?})"));
    }
    ReleaseBuild::start()?.suite()
}

/// `cargo build --release -p qimgd`, running in the background.
pub struct ReleaseBuild {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl ReleaseBuild {
    /// Starts the build, its output in `target/abuse-release-build.log`.
    pub fn start() -> Result<ReleaseBuild, String> {
        let log = target_dir().join("abuse-release-build.log");
        std::fs::create_dir_all(target_dir()).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut c = cargo();
        c.args(["build", "--release", "-p", "qimgd"])
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        eprintln!("xtask: == abuse: release build of qimgd started in the background: {c:?}");
        let child = c.spawn().map_err(|e| format!("starting {c:?}: {e}"))?;
        Ok(ReleaseBuild {
            child,
            log,
            started: Instant::now(),
        })
    }

    /// Waits for the build (at most [`BUILD_LIMIT`]), then runs the suite
    /// against what it built.
    pub fn suite(mut self) -> Result<(), String> {
        let deadline = self.started + BUILD_LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the release build of qimgd did not finish within {BUILD_LIMIT:?} (log: {})",
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "the release build of qimgd failed ({status}):\n{log}"
            ));
        }
        eprintln!(
            "xtask: == abuse: release build of qimgd done {:.1} s after it started",
            self.started.elapsed().as_secs_f64()
        );
        let start = Instant::now();
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
}
