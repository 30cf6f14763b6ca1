//! The engine's one public face: an [`Agent`] per node. `qq`, the REST agent and the
//! cluster coordinator all call it; the binaries are glue.
//!
//! Every operation takes the node's lock, loads the typed state, brings a state left
//! by a dead process to rest ([`crate::recovery`]), opens the disk and ESP once, and
//! records each transition before the work it announces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use qimg::Progress;

use crate::commit::{self, CommitOutcome};
use crate::container::{Runtime, runtime};
use crate::error::{Error, Op, chain, io_err};
use crate::machine::Machine;
use crate::node::Node;
use crate::prepare::BundleSource;
use crate::recovery::{Recovery, recovery};
use crate::state::{
    CommitStep, ErrorState, Failure, NodeState, Plan, PrepareStep, Settings, Stage, Status,
    status_of,
};
use crate::store::{Lock, Store};
use crate::{Cancel, prepare};

/// What an operator asks a prepare for (the REST API's prepare body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareRequest {
    /// The bundle.
    pub path: PathBuf,
    /// Commit as soon as prepared.
    pub auto_commit: bool,
    /// Rolling reboots at commit.
    pub rolling: bool,
    /// Nodes per batch of a rolling reboot (`None`: the cluster decides).
    pub nodes_per_batch: Option<u32>,
    /// The path as the operator gave it, shown by the status (`None`: `path`). The
    /// REST agent resolves a cluster path to a file and shows the cluster path.
    pub shown_as: Option<String>,
    /// The bundle the cluster's plan pins: a file under `path` that is another
    /// bundle is refused, naming both.
    pub pin: Option<qimg::BundlePin>,
}

/// What a bundle would do on this node ([`Agent::verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The plan: from what runs to the bundle's release, instant or platform.
    pub plan: Plan,
    /// Why that mode, in words.
    pub reason: String,
    /// Why a prepare would be blocked now (a settle period), if it would.
    pub blocked: Option<String>,
    /// What identifies the file: a cluster's plan pins it.
    pub pin: qimg::BundlePin,
}

impl PrepareRequest {
    /// A prepare of `path` with nothing else asked for.
    pub fn new(path: impl Into<PathBuf>) -> PrepareRequest {
        PrepareRequest {
            path: path.into(),
            auto_commit: false,
            rolling: false,
            nodes_per_batch: None,
            shown_as: None,
            pin: None,
        }
    }
}

/// An operation under way: the lock held, the state loaded and brought to rest, and
/// the recovery that was found.
struct Begun {
    _lock: Lock,
    store: Store,
    st: NodeState,
    found: Recovery,
}

/// `; slot b reset to _empty` when undoing a prepare reset a slot.
fn reset_note(reset: Option<bootctl::layout::Slot>) -> String {
    reset.map_or(String::new(), |s| format!("; slot {s} reset to _empty"))
}

/// One node's upgrade engine.
pub struct Agent {
    node: Node,
    machine: Box<dyn Machine>,
    runtime: Box<dyn Runtime>,
}

/// The limit a `--no-monitor` start waits for the background process to record its
/// first state.
pub const DETACH_LIMIT: Duration = Duration::from_secs(10);

impl Agent {
    /// The agent of `node` on `machine`; the container runtime comes from its config.
    pub fn new(node: Node, machine: Box<dyn Machine>) -> Agent {
        let runtime = runtime(&node.config.runtime, &node.config.state.join("run"));
        Agent {
            node,
            machine,
            runtime,
        }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The machine.
    pub fn machine(&self) -> &dyn Machine {
        self.machine.as_ref()
    }

    /// The container runtime.
    pub fn runtime(&self) -> &dyn Runtime {
        self.runtime.as_ref()
    }

    fn store(&self) -> Result<Store, Error> {
        self.node.store()
    }

    fn cx<'a>(&'a self, store: &'a Store, obs: &'a dyn Progress) -> commit::Ctx<'a> {
        commit::Ctx {
            node: &self.node,
            store,
            machine: self.machine(),
            runtime: self.runtime(),
            obs,
        }
    }

    /// The typed state.
    pub fn state(&self) -> Result<NodeState, Error> {
        self.store()?.load()
    }

    /// The `qq upgrade_status` report.
    pub fn status(&self) -> Result<Status, Error> {
        let store = self.store()?;
        let st = store.load()?;
        Ok(status_of(&st, store.lock_holder(), crate::now()))
    }

    /// What the last commit came to, `None` while it runs or waits for its reboot.
    pub fn outcome(&self) -> Result<Option<CommitOutcome>, Error> {
        Ok(CommitOutcome::of(&self.state()?))
    }

    fn rebooted(&self, st: &NodeState) -> Result<bool, Error> {
        Ok(match &st.stage {
            Stage::Committing(_, s) => match s.boot_id() {
                Some(b) => *b != self.machine.boot_id()?,
                None => false,
            },
            _ => false,
        })
    }

    /// Takes the lock, loads the state and carries out the recovery it needs: an
    /// interrupted prepare is undone, an interrupted swap finished, a reboot decided.
    /// The recovery found is returned: a commit reports what it finished, and the
    /// platform-commit steps only a commit continues (`SetNextAgain`, `AwaitReboot`)
    /// are left to it.
    fn begin(&self, obs: &dyn Progress) -> Result<Begun, Error> {
        let store = self.store()?;
        let lock = store.lock()?;
        let mut st = store.load()?;
        let found = recovery(&st.stage, self.rebooted(&st)?);
        match &found {
            Recovery::AbandonPrepare { step, undo } => {
                let reset = match undo {
                    Some(plan) => prepare::cleanup(&self.node, &mut self.node.open()?, plan)?,
                    None => None,
                };
                st.stage = Stage::Idle { last: undo.clone() };
                st.failure = Some(Failure {
                    kind: ErrorState::PrepareFailed,
                    message: format!(
                        "prepare was interrupted during step {step:?} (the process ended){}; run prepare again",
                        reset_note(reset)
                    ),
                });
                st.details = "cleaned up an interrupted prepare".into();
                store.put(&mut st)?;
            }
            Recovery::FinishSwap(plan) => {
                commit::finish_instant(&self.cx(&store, obs), &mut st, plan)?;
            }
            Recovery::CheckBoot(plan) => {
                // A fallback reboot is asked for by check_boot itself.
                let mut io = self.node.open()?;
                commit::check_boot(&self.cx(&store, obs), &mut st, plan, &mut io)?;
            }
            Recovery::Nothing | Recovery::SetNextAgain(_) | Recovery::AwaitReboot => {}
        }
        Ok(Begun {
            _lock: lock,
            store,
            st,
            found,
        })
    }

    /// Verifies `path` against the node's keys and checks it against the node,
    /// reading only the bundle's head: what a prepare would do, or why it is
    /// refused. Changes nothing and takes no lock.
    pub fn verify(&self, path: &Path) -> Result<Verified, Error> {
        self.verify_from(path, BundleSource::Path)
    }

    /// [`Agent::verify`] of what `source` reads (`path` names it).
    pub fn verify_from(&self, path: &Path, source: BundleSource) -> Result<Verified, Error> {
        let mut io = self.node.open()?;
        let bundle = prepare::BundleFile {
            path,
            pinned: None,
            source,
        };
        let ex = prepare::examine(&self.node, &mut io, bundle, &Cancel::new())?;
        let st = self.state()?;
        let blocked = crate::checks::settle(&ex.manifest, st.last_commit.as_ref(), crate::now())
            .map(|(_, why)| why);
        Ok(Verified {
            plan: ex.plan,
            reason: ex.reason,
            blocked,
            pin: ex.pin,
        })
    }

    /// Prepares an upgrade: verifies the bundle, writes the inactive slot, stages the
    /// container and flashes firmware. Returns the state in `UPGRADE_PREPARED`; on
    /// failure the state records `UPGRADE_ERROR_PREPARE_FAILED` with the cause (not
    /// for a block or a cancel), everything written is undone, and the error is
    /// returned.
    pub fn prepare(
        &self,
        req: &PrepareRequest,
        obs: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<NodeState, Error> {
        self.prepare_from(req, BundleSource::Path, obs, cancel)
    }

    /// [`Agent::prepare`] from `source`: a file the caller opened (read through
    /// that descriptor only), or the bundle's bytes as they arrive (a fetch
    /// from another node, which names the file `req.path` once it has verified
    /// it): the slot is written while the bytes come, verified as they stream
    /// as from a file, and made bootable only after the last digest;
    /// `req.pin` is required then (its size is the stream's length).
    pub fn prepare_from(
        &self,
        req: &PrepareRequest,
        source: BundleSource,
        obs: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<NodeState, Error> {
        let Begun {
            _lock, store, st, ..
        } = self.begin(obs)?;
        let mut io = self.node.open()?;
        match &st.stage {
            Stage::Idle { .. } | Stage::Committed(_) => {}
            Stage::Prepared(plan) => {
                // A new prepare replaces the prepared one (as a second `rauc install`).
                obs.step("discarding the previously prepared upgrade");
                prepare::cleanup(&self.node, &mut io, plan)?;
            }
            s => {
                return Err(Error::WrongState {
                    op: Op::Prepare,
                    state: s.phase(),
                    hint: "a commit is in progress: run `qq upgrade_cluster commit` to finish it",
                });
            }
        }
        let mut st = NodeState {
            stage: Stage::Preparing(PrepareStep::Verify),
            settings: Settings {
                install_path: req
                    .shown_as
                    .clone()
                    .unwrap_or_else(|| req.path.display().to_string()),
                rolling: req.rolling,
                auto_commit: req.auto_commit,
                nodes_per_batch: req.nodes_per_batch,
            },
            details: "verifying the bundle".into(),
            last_commit: st.last_commit,
            ..NodeState::default()
        };
        store.put(&mut st)?;
        let bundle = prepare::BundleFile {
            path: &req.path,
            pinned: req.pin.as_ref(),
            source,
        };
        let result = prepare::run(&self.node, &store, &mut st, &mut io, bundle, obs, cancel);
        let Err(e) = result else {
            store.put(&mut st)?;
            return Ok(st);
        };
        // What the step reached says what to undo (nothing before the write step).
        let undo = st.stage.plan().cloned();
        let note = match &undo {
            Some(plan) => match prepare::cleanup(&self.node, &mut io, plan) {
                Ok(reset) => reset_note(reset),
                Err(c) => format!("; cleaning up failed too: {}", chain(&c)),
            },
            None => String::new(),
        };
        st.stage = Stage::Idle { last: undo };
        match &e {
            Error::Blocked(_) => {} // the block is recorded by prepare::run
            Error::Cancelled => st.details = format!("prepare cancelled{note}"),
            _ => {
                st.failure = Some(Failure {
                    kind: ErrorState::PrepareFailed,
                    message: chain(&e),
                });
                st.details = format!("prepare failed{note}");
            }
        }
        store.put(&mut st)?;
        Err(e)
    }

    /// Commits the prepared upgrade (or continues an interrupted commit). Returns
    /// how it ended: committed, rebooting (a platform upgrade: the boot path
    /// decides), rolled back or failed.
    pub fn commit(&self, obs: &dyn Progress) -> Result<CommitOutcome, Error> {
        let Begun {
            _lock,
            store,
            mut st,
            found,
        } = self.begin(obs)?;
        if matches!(found, Recovery::FinishSwap(_) | Recovery::CheckBoot(_))
            && let Some(o) = CommitOutcome::of(&st)
        {
            // Recovery finished the interrupted commit: that is this commit's outcome.
            return Ok(o);
        }
        match (st.stage.clone(), found) {
            (_, Recovery::AwaitReboot) => {
                // The reboot was asked for and has not happened: ask again.
                obs.step("asking the machine to reboot again");
                self.machine.reboot()?;
                Ok(CommitOutcome::of(&st).expect("a state awaiting a reboot has a boot id"))
            }
            (Stage::Committing(plan, _), Recovery::SetNextAgain(_))
            | (Stage::Prepared(plan), _)
                if plan.mode == crate::state::Mode::Platform =>
            {
                let mut io = self.node.open()?;
                commit::set_next_and_reboot(&self.cx(&store, obs), &mut st, &plan, &mut io)
            }
            (Stage::Prepared(plan), _) => {
                st.stage = Stage::Committing(plan.clone(), CommitStep::Swap);
                st.details = "swapping the container".into();
                store.put(&mut st)?;
                commit::finish_instant(&self.cx(&store, obs), &mut st, &plan)
            }
            (s, _) => Err(Error::WrongState {
                op: Op::Commit,
                state: s.phase(),
                hint: "nothing is prepared: run `qq upgrade_cluster prepare --path BUNDLE`",
            }),
        }
    }

    /// Prepares, then commits when the request asks for it (`auto_commit`).
    pub fn upgrade(
        &self,
        req: &PrepareRequest,
        obs: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Option<CommitOutcome>, Error> {
        self.prepare(req, obs, cancel)?;
        if !req.auto_commit {
            return Ok(None);
        }
        self.commit(obs).map(Some)
    }

    /// Discards a prepared upgrade: the slot back to `_empty`, the staged entry and
    /// container gone, the state idle. Refused while a prepare or commit runs.
    pub fn cancel(&self, obs: &dyn Progress) -> Result<NodeState, Error> {
        let Begun {
            _lock,
            store,
            mut st,
            ..
        } = self.begin(obs)?;
        match st.stage.clone() {
            Stage::Prepared(plan) => {
                obs.step("discarding the prepared upgrade");
                let reset = prepare::cleanup(&self.node, &mut self.node.open()?, &plan)?;
                st.stage = Stage::Idle { last: Some(plan) };
                st.details = format!("prepared upgrade discarded{}", reset_note(reset));
                store.put(&mut st)?;
                Ok(st)
            }
            s => Err(Error::WrongState {
                op: Op::Cancel,
                state: s.phase(),
                hint: "only a prepared upgrade can be discarded; a commit cannot be cancelled",
            }),
        }
    }

    /// Rolls a committed upgrade back (a cluster-wide rollback: another node
    /// failed), and says what it came to, as a commit does:
    /// - instant: the previous container (kept for this) runs again, measured and
    ///   health-checked as a swap; the state records `UPGRADE_ERROR_ROLLED_BACK`
    ///   with `reason`: [`CommitOutcome::RolledBack`]. A swap back that fails
    ///   leaves the new container running: [`CommitOutcome::Failed`];
    /// - platform: the new entry is marked bad and the node reboots into the
    ///   previous slot, whose boot records the rollback: [`CommitOutcome::Rebooting`];
    /// - nothing committed (never, or already rolled back): nothing to do,
    ///   [`CommitOutcome::RolledBack`] (a reboot still due: `Rebooting`).
    pub fn revert(&self, reason: &str, obs: &dyn Progress) -> Result<CommitOutcome, Error> {
        let Begun {
            _lock,
            store,
            mut st,
            ..
        } = self.begin(obs)?;
        let plan = match st.stage.clone() {
            Stage::Committed(plan) if plan.mode == crate::state::Mode::Instant => plan,
            Stage::Committed(plan) => {
                let mut io = self.node.open()?;
                return commit::revert_platform(
                    &self.cx(&store, obs),
                    &mut st,
                    &plan,
                    &mut io,
                    reason,
                );
            }
            // Nothing committed: a reboot still due is what the state records
            // (`CommitOutcome::of`); else the node runs its old release.
            _ => {
                return Ok(match CommitOutcome::of(&st) {
                    Some(r @ CommitOutcome::Rebooting { .. }) => r,
                    _ => CommitOutcome::RolledBack {
                        reason: format!("nothing committed to roll back ({})", st.details),
                    },
                });
            }
        };
        let back = Plan {
            mode: plan.mode,
            from: plan.to.clone(),
            to: plan.from.clone(),
        };
        st.stage = Stage::Committing(back.clone(), CommitStep::Swap);
        st.details = format!("rolling back to container {}: {reason}", back.to.version);
        store.put(&mut st)?;
        // A failed swap back leaves the new container running, recorded as such.
        match commit::finish_instant(&self.cx(&store, obs), &mut st, &back)? {
            CommitOutcome::Committed { .. } => {
                let message = format!("rolled back to {}: {reason}", back.to.version);
                st.stage = Stage::Idle { last: Some(plan) };
                st.failure = Some(Failure {
                    kind: ErrorState::RolledBack,
                    message: message.clone(),
                });
                st.details = format!(
                    "rolled back from {} to {}",
                    back.from.version, back.to.version
                );
                store.put(&mut st)?;
                Ok(CommitOutcome::RolledBack { reason: message })
            }
            CommitOutcome::Rebooting { boot_id } => Ok(CommitOutcome::Rebooting { boot_id }),
            CommitOutcome::RolledBack { reason } | CommitOutcome::Failed { reason } => {
                Ok(CommitOutcome::Failed {
                    reason: format!("rolling back failed: {reason}"),
                })
            }
        }
    }

    /// After a boot (`qq boot_check`, run by a unit at every boot): finishes a
    /// platform commit (health gate, bless or fall back), or on an ordinary boot makes
    /// sure the active container runs. Returns the commit's outcome when this boot
    /// decided one.
    pub fn after_boot(&self, obs: &dyn Progress) -> Result<Option<CommitOutcome>, Error> {
        let Begun {
            _lock, st, found, ..
        } = self.begin(obs)?;
        // The container runs after every boot, except while a reboot the commit asked
        // for is still to come. A commit cut off before it asked (step set-next) waits
        // for `qq upgrade_cluster commit`, with the node serving meanwhile.
        let reboot_pending = matches!(
            st.stage,
            Stage::Committing(_, CommitStep::Reboot { .. } | CommitStep::Fallback { .. })
        );
        if !reboot_pending {
            commit::ensure_running(&self.node, self.runtime())?;
        }
        // Only a boot the commit asked for decides an outcome.
        Ok(match found {
            Recovery::CheckBoot(_) => CommitOutcome::of(&st),
            _ => None,
        })
    }

    /// Plays the boots of a machine whose power button is software
    /// ([`Machine::power`]): while a reboot is pending, the firmware boots and
    /// the boot path runs. Returns the outcome the last boot decided (`None`:
    /// no reboot pending, the boots decided nothing, or a real machine, which
    /// boots by itself). Gives up after [`crate::machine::MAX_BOOTS`] boots.
    pub fn run_boots(&self) -> Result<Option<CommitOutcome>, Error> {
        let Some(power) = self.machine.power() else {
            return Ok(None);
        };
        let mut outcome = None;
        for _ in 0..crate::machine::MAX_BOOTS {
            if !self.machine.reboot_pending() {
                return Ok(outcome);
            }
            power.boot()?;
            outcome = self.after_boot(&qimg::NoProgress)?.or(outcome);
        }
        Err(Error::Booted {
            problem: format!("still rebooting after {} boots", crate::machine::MAX_BOOTS),
        })
    }

    /// A node fresh from a disk image (`qq factory_install`): stages the container
    /// of the release whose platform it booted, from that release's bundle, makes
    /// it active and starts it. Refused once a container is installed.
    pub fn install_factory(
        &self,
        bundle: &Path,
        obs: &dyn Progress,
    ) -> Result<qimg::Version, Error> {
        let Begun { _lock, .. } = self.begin(obs)?;
        let mut io = self.node.open()?;
        let running = self.node.running(&mut io)?;
        drop(io);
        let active = self.node.containers().installed()?.active;
        let version = crate::factory::install_container(&self.node, bundle, |m| {
            crate::factory::check(
                bundle,
                active.as_ref(),
                &m.release,
                &running.product,
                &running.platform_version,
            )
        })?;
        commit::ensure_running(&self.node, self.runtime())?;
        Ok(version)
    }

    /// Starts `cmd` (a process that runs this agent's operation, e.g. `qq … --detached`)
    /// in its own session, its output in `qq.log` in the state directory, and
    /// returns once it has recorded its first state or ended, at most
    /// [`DETACH_LIMIT`]. It outlives the caller and its terminal.
    pub fn detach(&self, mut cmd: Command) -> Result<(Child, PathBuf), Error> {
        use std::os::unix::process::CommandExt;
        let store = self.store()?;
        let log = store.dir().join("qq.log");
        let f = std::fs::File::create(&log).map_err(io_err("creating", &log))?;
        let f2 = f.try_clone().map_err(io_err("opening", &log))?;
        cmd.stdin(std::process::Stdio::null()).stdout(f2).stderr(f);
        // SAFETY: setsid is async-signal-safe; the child leaves our session so a
        // terminal's Ctrl-C never reaches it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let record = store.path();
        let before = std::fs::read(&record).ok();
        let mut child = cmd.spawn().map_err(io_err(
            "starting the background upgrade",
            Path::new(cmd.get_program()),
        ))?;
        let deadline = Instant::now() + DETACH_LIMIT;
        while std::fs::read(&record).ok() == before
            && child
                .try_wait()
                .map_err(io_err("waiting for", &log))?
                .is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok((child, log))
    }
}
