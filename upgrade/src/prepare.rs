//! The prepare phase, and recovery of operations that were interrupted.
//!
//! Order: verify the bundle (signature against the node's keys, then every digest as
//! it streams) → check it against the node → decide the mode → one pass over the
//! bundle: the platform root into the inactive slot (platform mode; marked `_empty`
//! first, labelled only after the digest matched), the UKI into memory, the
//! container into a staging directory, firmware payloads into memory → label the
//! slot and stage its UKI under a name the loader ignores → flash firmware (on-prem)
//! → `UPGRADE_PREPARED`. Any failure or a cancel undoes what was written: the slot's
//! staged entry goes, the slot is `_empty`, the partial container is removed. The
//! running slot, its entries and the running container are never touched.

use std::io::{BufReader, Write};
use std::path::Path;

use bootctl::entries;
use bootctl::layout::Slot;
use bootctl::slot::{self, SlotImage, SlotSink};
use firmware::flash::{FlashOptions, Outcome, Payload, Quiet};
use firmware::plan::{Action, PlanItem, PlanOptions};
use firmware::prepare::{BackendSpec, Backends, NodeConfig as DeviceConfig};
use qimg::{BundleReader, ComponentKind, Manifest, Target};

use crate::checks::{self, NodeFacts};
use crate::container::{Containers, RuntimeConfig};
use crate::node::Node;
use crate::state::{ErrorState, Installed, Mode, Phase, Record, Store};
use crate::{Cancel, Error, Observer, boot_err};

/// What to prepare.
pub struct PrepareOptions<'a> {
    /// The bundle.
    pub path: &'a Path,
    /// Rolling reboots at commit.
    pub rolling: bool,
    /// Progress.
    pub observer: &'a dyn Observer,
    /// Cancellation (Ctrl-C of a monitored prepare).
    pub cancel: &'a Cancel,
}

/// Steps after which prepare has written something that must be undone.
const WRITING: &[&str] = &["write", "stage-entry", "firmware"];

/// Prepares an upgrade. Returns the record in `UPGRADE_PREPARED`; on failure the
/// record says `UPGRADE_ERROR_PREPARE_FAILED` with the cause and the error is
/// returned.
pub fn prepare(node: &Node, o: &PrepareOptions) -> Result<Record, Error> {
    let store = node.store()?;
    let _lock = store.lock()?;
    let mut r = store.load()?;
    recover(node, &store, &mut r, o.observer)?;
    match r.state {
        Phase::Idle | Phase::Committed => {}
        Phase::Prepared => {
            // A new prepare replaces the prepared one (as a second `rauc install`).
            o.observer
                .step("discarding the previously prepared upgrade");
            cleanup(node, &r)?;
        }
        Phase::Preparing | Phase::Committing => {
            return Err(Error::WrongState {
                op: "prepare",
                state: r.state.name().into(),
                hint: "a commit is in progress: run `qq upgrade_cluster commit` to finish it"
                    .into(),
            });
        }
    }
    let mut r = Record {
        state: Phase::Preparing,
        install_path: o.path.display().to_string(),
        rolling: o.rolling,
        step: Some("verify".into()),
        details: "verifying the bundle".into(),
        last_commit: r.last_commit.take(),
        ..Record::default()
    };
    store.put(&mut r)?;
    let result = run(node, &store, &mut r, o);
    let mut cleanup_note = String::new();
    if result.is_err() && r.step.as_deref().is_some_and(|s| WRITING.contains(&s)) {
        cleanup_note = match cleanup(node, &r) {
            Ok(Some(slot)) => format!("; slot {} reset to _empty", slot.letter()),
            Ok(None) => String::new(),
            Err(e) => format!("; cleaning up failed too: {e}"),
        };
    }
    match result {
        Ok(()) => {
            r.state = Phase::Prepared;
            r.step = None;
            store.put(&mut r)?;
            Ok(r)
        }
        Err(e) => {
            r.state = Phase::Idle;
            r.step = None;
            match &e {
                Error::Blocked { .. } => {} // blocked_reason/until set by run()
                Error::Cancelled => {
                    r.details = format!("prepare cancelled{cleanup_note}");
                }
                _ => {
                    r.error_state = ErrorState::PrepareFailed;
                    r.error_message = chain(&e);
                    r.details = format!("prepare failed{cleanup_note}");
                }
            }
            store.put(&mut r)?;
            Err(e)
        }
    }
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The slot image a manifest's platform root becomes.
pub fn slot_image(m: &Manifest) -> Option<SlotImage> {
    let (c, verity) = m.platform_root()?;
    Some(SlotImage {
        product: m.release.product.clone(),
        version: m.release.platform_version.to_string(),
        hash_offset: verity.hash_offset,
        size: c.size,
        root_hash: verity.root_hash.0,
    })
}

/// Checks the cancel flag on every write, so a cancel stops a slot write promptly.
struct CancelWriter<'a, W> {
    inner: W,
    cancel: &'a Cancel,
}

impl<W: Write> Write for CancelWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.check().is_err() {
            // Not ErrorKind::Interrupted: write_all would retry that forever.
            return Err(std::io::Error::other("cancelled by the operator"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn bundle_err(path: &Path, cancel: &Cancel) -> impl Fn(qimg::Error) -> Error {
    let path = path.to_owned();
    let cancelled = cancel.clone();
    move |source| {
        if cancelled.check().is_err() {
            Error::Cancelled
        } else {
            Error::Bundle {
                path: path.clone(),
                source,
            }
        }
    }
}

fn run(node: &Node, store: &Store, r: &mut Record, o: &PrepareOptions) -> Result<(), Error> {
    let obs = o.observer;
    let berr = bundle_err(o.path, o.cancel);
    obs.step("verifying the bundle signature");
    let file = std::fs::File::open(o.path).map_err(|source| Error::Refused {
        path: o.path.to_owned(),
        reason: format!("cannot open it: {source}"),
    })?;
    let (mut reader, _) =
        BundleReader::open_verified(BufReader::with_capacity(1 << 20, file), &node.keys()?)
            .map_err(&berr)?;
    let m = reader.manifest().clone();
    let running = node.running()?;
    let product = running.product.clone();
    let installed = running
        .version
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: qimg::Error| Error::StateDamaged {
            path: node.config.state.join("containers/installed.json"),
            reason: e.to_string(),
        })?;
    let facts = NodeFacts {
        product: product.clone(),
        model: node.config.model.clone(),
        target: node.config.target,
        installed,
    };
    let refused = |reason: String| Error::Refused {
        path: o.path.to_owned(),
        reason,
    };
    checks::check(&m, &facts).map_err(refused)?;
    if let Some((until, why)) = checks::settle(&m, r.last_commit.as_ref(), crate::now()) {
        r.blocked_until = Some(until);
        r.blocked_reason = why.clone();
        return Err(Error::Blocked { reason: why });
    }
    let platform: qimg::Version = running
        .platform_version
        .parse()
        .map_err(|e| Error::Reboot {
            reason: format!("the booted slot's version: {e}"),
        })?;
    let decision = checks::mode_on_node(&m, &platform);
    let to_slot = match decision.mode {
        Mode::Platform => running.slot.other(),
        Mode::Instant => running.slot,
    };
    let image = match decision.mode {
        Mode::Platform => Some(slot_image(&m).ok_or_else(|| {
            refused("a platform upgrade needs a platform-root and boot-uki".into())
        })?),
        Mode::Instant => None,
    };
    let container = m.components.iter().find_map(|c| match &c.kind {
        ComponentKind::Container { verity, .. } => Some(verity.clone()),
        _ => None,
    });
    if container.is_none() {
        return Err(refused("the bundle has no container".into()));
    }
    r.mode = Some(decision.mode);
    r.from = Some(Installed {
        version: running.version.clone().unwrap_or_default(),
        platform_version: running.platform_version.clone(),
        slot: running.slot.letter(),
    });
    r.to = Some(Installed {
        version: m.release.version.to_string(),
        platform_version: m.release.platform_version.to_string(),
        slot: to_slot.letter(),
    });
    r.details = decision.reason.clone();

    // Firmware: planned before anything is written, so a refusal changes nothing.
    let fw = firmware_plan(node, &m, &platform).map_err(|e| match e {
        Error::Refused { reason, .. } => refused(reason),
        other => other,
    })?;
    o.cancel.check()?;

    r.step = Some("write".into());
    store.put(r)?;
    let containers = Containers::new(&node.config.state);
    let mut dev = node.disk()?;
    let parts = match &image {
        Some(img) => {
            obs.step(&format!("writing slot {}", to_slot.letter()));
            let mut esp = node.esp()?;
            entries::remove_slot_entries(esp.as_mut(), &product, to_slot)
                .map_err(boot_err("removing the inactive slot's entries"))?;
            drop(esp);
            Some(
                slot::begin(&mut dev, to_slot, img)
                    .map_err(boot_err(format!("preparing slot {}", to_slot.letter())))?,
            )
        }
        None => None,
    };
    let mut uki = Vec::new();
    let mut staging = None;
    let mut payloads = vec![];
    for c in &m.components {
        o.cancel.check()?;
        let got = match (&c.kind, parts, &image) {
            (ComponentKind::PlatformRoot { .. }, Some(p), Some(img)) => {
                obs.step(&format!(
                    "writing slot {} (verified as it streams)",
                    to_slot.letter()
                ));
                let sink = SlotSink::new(&mut dev, p, img, false);
                reader.next_component(
                    CancelWriter {
                        inner: sink,
                        cancel: o.cancel,
                    },
                    obs,
                )
            }
            (ComponentKind::BootUki, Some(_), _) => reader.next_component(&mut uki, obs),
            (ComponentKind::Container { verity, .. }, _, _) => {
                obs.step("staging the container");
                let mut sink =
                    containers.begin(&m.release.version.to_string(), verity.hash_offset)?;
                let got = reader.next_component(
                    CancelWriter {
                        inner: &mut sink,
                        cancel: o.cancel,
                    },
                    obs,
                );
                staging = Some(sink);
                got
            }
            (ComponentKind::Firmware(info), _, _) if fw.is_some() => {
                let mut bytes = Vec::with_capacity(c.size as usize);
                let got = reader.next_component(&mut bytes, obs);
                payloads.push(Payload {
                    name: c.name.clone(),
                    info: info.clone(),
                    bytes,
                    sha256: c.sha256,
                });
                got
            }
            _ => {
                obs.step(&format!("verifying {}", c.name));
                reader.next_component(std::io::sink(), obs)
            }
        };
        got.map_err(&berr)?;
    }
    reader.finish(obs).map_err(&berr)?;
    o.cancel.check()?;

    r.step = Some("stage-entry".into());
    store.put(r)?;
    if let (Some(p), Some(img)) = (parts, &image) {
        slot::commit(&mut dev, p, img)
            .map_err(boot_err(format!("labelling slot {}", to_slot.letter())))?;
        dev.sync_all()
            .map_err(crate::io_err("syncing", &node.config.disk))?;
        let mut esp = node.esp()?;
        entries::stage(esp.as_mut(), &product, to_slot, &img.version, &uki)
            .map_err(boot_err("staging the new boot entry"))?;
    }
    let verity = container.expect("checked above");
    containers.finish(
        &m.release.version.to_string(),
        staging.expect("a container component was read"),
        &verity.root_hash.0,
        node.config.runtime == RuntimeConfig::Process,
    )?;
    o.cancel.check()?;

    if let Some((plan, backends)) = fw {
        r.step = Some("firmware".into());
        store.put(r)?;
        obs.step("flashing firmware");
        flash(node, &plan, &payloads, &backends)?;
    }
    r.details = format!(
        "{} upgrade from {} to {} prepared; run `qq upgrade_cluster commit`",
        match decision.mode {
            Mode::Platform => "platform",
            Mode::Instant => "instant",
        },
        running.version.unwrap_or_default(),
        m.release.version
    );
    Ok(())
}

type FirmwarePlan = (Vec<PlanItem>, Backends);

/// The firmware plan of an on-prem node with firmware devices, when the bundle
/// carries firmware. Refused items refuse the bundle. `running` is the platform the
/// node runs now: after a platform commit it is the fallback, so firmware that
/// declares `compatible_platforms` without it would strand the fallback slot.
fn firmware_plan(
    node: &Node,
    m: &Manifest,
    running: &qimg::Version,
) -> Result<Option<FirmwarePlan>, Error> {
    let Some(fc) = &node.config.firmware else {
        return Ok(None);
    };
    if node.config.target != Target::Onprem {
        return Ok(None);
    }
    let offers: Vec<_> = m
        .components
        .iter()
        .filter_map(|c| match &c.kind {
            ComponentKind::Firmware(info) => Some((c.name.as_str(), info, c.size)),
            _ => None,
        })
        .collect();
    if offers.is_empty() {
        return Ok(None);
    }
    let fwerr = |source| Error::Firmware { source };
    let devices_config = DeviceConfig::load(&fc.devices).map_err(fwerr)?;
    let devices =
        firmware::inventory::inventory(&fc.sysroot, &devices_config.probes()).map_err(fwerr)?;
    let plan = firmware::plan::plan(
        &devices,
        &offers,
        &PlanOptions {
            fallback_platform: Some(running.clone()),
            ..PlanOptions::default()
        },
    );
    if let Some((item, why)) = plan.iter().find_map(|i| match &i.action {
        Action::Refuse { why } => Some((i, why)),
        _ => None,
    }) {
        return Err(Error::Refused {
            path: fc.devices.clone(),
            reason: format!("firmware {}: {why}", item.component),
        });
    }
    let esp = node.config.esp.clone().unwrap_or(node.config.disk.clone());
    let backends = Backends {
        by_device: devices_config.backends(),
        default_capsule: Some(BackendSpec::Capsule {
            esp,
            efivars: node.config.efivars.clone(),
        }),
    };
    Ok(Some((plan, backends)))
}

fn flash(
    node: &Node,
    plan: &[PlanItem],
    payloads: &[Payload],
    backends: &Backends,
) -> Result<(), Error> {
    let fwerr = |source| Error::Firmware { source };
    let journal =
        firmware::journal::Journal::open(&node.config.state.join("firmware")).map_err(fwerr)?;
    let fo = FlashOptions {
        timeout: std::time::Duration::from_secs(600),
        retry_failed: true,
        root: node
            .config
            .firmware
            .as_ref()
            .map_or("/".into(), |f| f.sysroot.clone()),
        min_battery: 0,
        power_hook: None,
    };
    let out = firmware::prepare::flash_all(&journal, plan, payloads, backends, &fo, &Quiet)
        .map_err(fwerr)?;
    for (component, outcome) in out {
        if let Outcome::Failed { reason } = outcome {
            return Err(Error::FirmwareFailed { component, reason });
        }
    }
    Ok(())
}

/// Undoes a prepare: the target slot's entries (staged ones included) go and the
/// slot is marked `_empty` (platform mode, never the running slot); the staged
/// container goes unless it is installed. Returns the slot that was reset.
pub fn cleanup(node: &Node, r: &Record) -> Result<Option<Slot>, Error> {
    let (Some(from), Some(to)) = (&r.from, &r.to) else {
        return Ok(None);
    };
    Containers::new(&node.config.state).discard(&to.version)?;
    if r.mode != Some(Mode::Platform) || to.slot == from.slot {
        return Ok(None);
    }
    let slot = if to.slot == 'a' { Slot::A } else { Slot::B };
    let product = node.product()?;
    let mut esp = node.esp()?;
    entries::remove_slot_entries(esp.as_mut(), &product, slot)
        .map_err(boot_err("removing the slot's entries"))?;
    drop(esp);
    let mut dev = node.disk()?;
    slot::clear(&mut dev, slot).map_err(boot_err(format!("clearing slot {}", to.slot)))?;
    Ok(Some(slot))
}

/// Brings a record left by a process that died into a consistent state (the caller
/// holds the lock): an interrupted prepare is undone; an interrupted commit is
/// finished (instant) or continued after its reboot (platform).
pub fn recover(
    node: &Node,
    store: &Store,
    r: &mut Record,
    obs: &dyn Observer,
) -> Result<(), Error> {
    match r.state {
        Phase::Preparing => {
            let step = r.step.clone().unwrap_or_default();
            let reset = if WRITING.contains(&step.as_str()) {
                cleanup(node, r)?
            } else {
                None
            };
            r.state = Phase::Idle;
            r.error_state = ErrorState::PrepareFailed;
            r.error_message = format!(
                "prepare was interrupted during step {step:?} (the process ended){}; run prepare again",
                reset.map_or(String::new(), |s| format!(
                    "; slot {} was reset to _empty",
                    s.letter()
                ))
            );
            r.details = "cleaned up an interrupted prepare".into();
            r.step = None;
            store.put(r)
        }
        Phase::Committing => crate::commit::resume(node, store, r, obs),
        _ => Ok(()),
    }
}
