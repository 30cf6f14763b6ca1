//! The prepare phase: the work between "verifying" and "prepared". The
//! [`crate::agent::Agent`] takes the lock, loads and records the state around it.
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

use std::io::{BufReader, Read, Write};
use std::path::Path;

use bootctl::entries;
use bootctl::layout::Slot;
use bootctl::slot::{SlotImage, SlotWriter};
use firmware::flash::{FlashOptions, Outcome, Payload};
use firmware::plan::{Action, PlanItem, PlanOptions};
use firmware::prepare::{BackendSpec, Backends, NodeConfig as DeviceConfig};
use qimg::{BundlePin, BundleReader, ComponentKind, Manifest, Progress, Target};

use crate::Cancel;
use crate::checks::{self, NodeFacts};
use crate::container::RuntimeConfig;
use crate::error::{Block, Error, Refusal, boot_err};
use crate::node::{Node, Opened, Running};
use crate::state::{Blocked, Mode, NodeState, Plan, PrepareStep, Release, Stage};
use crate::store::Store;

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

/// Where the engine reads a bundle from.
pub enum BundleSource {
    /// The file at the path the caller names, opened by the engine (the
    /// operator's own `qq` on the node: a file the operator chose).
    Path,
    /// A file the caller opened, read through that descriptor only (the REST
    /// agent opens the file beneath its upgrade directory once, without
    /// following a link out, and checks what it opened: nothing swapped in
    /// later is read).
    Opened(std::fs::File),
    /// The bundle's bytes as they arrive (a fetch from another node); their
    /// length is the pin's size, so the pin is required.
    Arriving(Box<dyn Read + Send>),
}

impl BundleSource {
    /// Opens what the engine reads, with its size. `path` names it in errors.
    pub(crate) fn open(
        self,
        path: &Path,
        pinned: Option<&BundlePin>,
    ) -> Result<(Box<dyn Read + Send>, u64), Error> {
        let open_err = |source| Error::BundleOpen {
            path: path.to_owned(),
            source,
        };
        let file = match self {
            BundleSource::Arriving(s) => {
                let pin = pinned.ok_or_else(|| Error::Refused {
                    path: path.to_owned(),
                    reason: Refusal::Incomplete("a bundle read as it arrives needs the plan's pin"),
                })?;
                return Ok((s, pin.size));
            }
            BundleSource::Opened(f) => f,
            BundleSource::Path => std::fs::File::open(path).map_err(open_err)?,
        };
        let size = file.metadata().map_err(open_err)?.len();
        Ok((Box::new(file), size))
    }
}

/// The bundle a prepare reads: its file and, in a cluster, the pin the plan
/// holds it to (another file under the same name is refused); or, while it is
/// fetched from another node, its bytes as they arrive.
pub(crate) struct BundleFile<'a> {
    /// The file (while streamed: the name it will have).
    pub path: &'a Path,
    /// What it must be.
    pub pinned: Option<&'a BundlePin>,
    /// Where its bytes come from.
    pub source: BundleSource,
}

/// What a prepare reads its bundle from.
type Source = BufReader<Box<dyn Read + Send>>;

/// What a bundle would do on this node, found from its verified head without
/// writing anything: the plan, the slot image and the container's verity, the
/// firmware plan, and the reason for the mode. A refusal is an error.
pub(crate) struct Examined<R: std::io::Read> {
    /// The reader, positioned after the head.
    pub reader: BundleReader<R>,
    /// The verified manifest.
    pub manifest: Manifest,
    /// What the node runs.
    pub running: Running,
    /// From what to what.
    pub plan: Plan,
    /// The slot image of a platform upgrade.
    pub image: Option<SlotImage>,
    /// The container's verity.
    pub container: qimg::VerityInfo,
    /// Firmware to flash (on-prem nodes with devices).
    pub firmware: Option<FirmwarePlan>,
    /// Why this mode, in words.
    pub reason: String,
    /// What identifies the file.
    pub pin: BundlePin,
}

/// Opens `path`, verifies its signature against the node's keys and checks it
/// against the node (product, target, model, versions, components, firmware).
/// Reads only the bundle's head; changes nothing.
pub(crate) fn examine(
    node: &Node,
    io: &mut Opened,
    bundle: BundleFile,
    cancel: &Cancel,
) -> Result<Examined<Source>, Error> {
    let BundleFile {
        path,
        pinned,
        source,
    } = bundle;
    let berr = bundle_err(path, cancel);
    let (source, size) = source.open(path, pinned)?;
    let (reader, _) =
        BundleReader::open_verified(BufReader::with_capacity(1 << 20, source), &node.keys()?)
            .map_err(&berr)?;
    let pin = BundlePin::of(reader.manifest_bytes(), size);
    if let Some(pinned) = pinned.filter(|p| **p != pin) {
        return Err(Error::Refused {
            path: path.to_owned(),
            reason: Refusal::NotPinned {
                found: pin,
                pinned: *pinned,
            },
        });
    }
    let m = reader.manifest().clone();
    let running = node.running(io)?;
    let facts = NodeFacts {
        product: running.product.clone(),
        model: node.config.model.clone(),
        target: node.config.target,
        installed: running.version.clone(),
    };
    let refused = |reason: Refusal| Error::Refused {
        path: path.to_owned(),
        reason,
    };
    checks::check(&m, &facts).map_err(refused)?;
    let decision = checks::mode_on_node(&m, &running.platform_version);
    let to_slot = match decision.mode {
        Mode::Platform => running.slot.other(),
        Mode::Instant => running.slot,
    };
    let image = match decision.mode {
        Mode::Platform => Some(slot_image(&m).ok_or_else(|| {
            refused(Refusal::Incomplete(
                "a platform upgrade needs a platform-root and boot-uki",
            ))
        })?),
        Mode::Instant => None,
    };
    let container = m
        .components
        .iter()
        .find_map(|c| match &c.kind {
            ComponentKind::Container { verity, .. } => Some(verity.clone()),
            _ => None,
        })
        .ok_or_else(|| refused(Refusal::Incomplete("the bundle has no container")))?;
    let installed = running
        .version
        .clone()
        .ok_or_else(|| refused(Refusal::InstalledUnknown))?;
    let plan = Plan {
        mode: decision.mode,
        from: Release {
            version: installed,
            platform_version: running.platform_version.clone(),
            slot: running.slot,
        },
        to: Release {
            version: m.release.version.clone(),
            platform_version: m.release.platform_version.clone(),
            slot: to_slot,
        },
    };
    // Firmware: planned before anything is written, so a refusal changes nothing.
    let firmware = firmware_plan(node, &m, &running.platform_version).map_err(|e| match e {
        Error::Refused { reason, .. } => refused(reason),
        other => other,
    })?;
    Ok(Examined {
        reader,
        pin,
        manifest: m,
        running,
        plan,
        image,
        container,
        firmware,
        reason: decision.reason,
    })
}

/// Runs a prepare from `Preparing(Verify)` up to (not including) `Prepared`,
/// recording each step in `st` before its work. On error the caller undoes what
/// `st`'s step says was written ([`cleanup`]).
pub(crate) fn run(
    node: &Node,
    store: &Store,
    st: &mut NodeState,
    io: &mut Opened,
    bundle: BundleFile,
    obs: &dyn Progress,
    cancel: &Cancel,
) -> Result<(), Error> {
    let path = bundle.path;
    let berr = bundle_err(path, cancel);
    obs.step("verifying the bundle signature");
    let Examined {
        mut reader,
        manifest: m,
        running,
        plan,
        image,
        container,
        firmware: fw,
        reason,
        ..
    } = examine(node, io, bundle, cancel)?;
    let refused = |reason: Refusal| Error::Refused {
        path: path.to_owned(),
        reason,
    };
    if let Some((until, why)) = checks::settle(&m, st.last_commit.as_ref(), crate::now()) {
        st.blocked = Some(Blocked {
            reason: why.clone(),
            until: Some(until),
        });
        return Err(Error::Blocked(Block::Settle { until, reason: why }));
    }
    let product = running.product.clone();
    let to_slot = plan.to.slot;
    st.details = reason;
    cancel.check()?;

    st.stage = Stage::Preparing(PrepareStep::Write(plan.clone()));
    store.put(st)?;
    let containers = node.containers();
    let mut slot_writer = match &image {
        Some(img) => {
            obs.step(&format!("writing slot {to_slot}"));
            entries::remove_slot_entries(io.esp.as_mut(), &product, to_slot)
                .map_err(boot_err("removing the inactive slot's entries"))?;
            Some(
                SlotWriter::begin(&mut io.disk, to_slot, img, false)
                    .map_err(boot_err(format!("preparing slot {to_slot}")))?,
            )
        }
        None => None,
    };
    let version = m.release.version.clone();
    let mut uki = Vec::new();
    let mut staging = None;
    let mut payloads = vec![];
    for c in &m.components {
        cancel.check()?;
        let got = match (&c.kind, slot_writer.as_mut()) {
            (ComponentKind::PlatformRoot { .. }, Some(w)) => {
                obs.step(&format!("writing slot {to_slot} (verified as it streams)"));
                reader.next_component(CancelWriter { inner: w, cancel }, obs)
            }
            (ComponentKind::BootUki, Some(_)) => reader.next_component(&mut uki, obs),
            (ComponentKind::Container { verity, .. }, _) => {
                obs.step("staging the container");
                let mut sink = containers.begin(&version, verity.hash_offset)?;
                let got = reader.next_component(
                    CancelWriter {
                        inner: &mut sink,
                        cancel,
                    },
                    obs,
                );
                staging = Some(sink);
                got
            }
            (ComponentKind::Firmware(info), _) if fw.is_some() => {
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
    cancel.check()?;

    st.stage = Stage::Preparing(PrepareStep::StageEntry(plan.clone()));
    store.put(st)?;
    if let (Some(w), Some(img)) = (slot_writer, &image) {
        w.finish()
            .map_err(boot_err(format!("labelling slot {to_slot}")))?;
        io.sync()?;
        entries::stage(io.esp.as_mut(), &product, to_slot, &img.version, &uki)
            .map_err(boot_err("staging the new boot entry"))?;
    }
    let sink =
        staging.ok_or_else(|| refused(Refusal::Incomplete("the bundle has no container")))?;
    containers.finish(
        &version,
        sink,
        &container.root_hash.0,
        node.config.runtime == RuntimeConfig::Process,
    )?;
    cancel.check()?;

    if let Some((items, backends)) = fw {
        st.stage = Stage::Preparing(PrepareStep::Firmware(plan.clone()));
        store.put(st)?;
        obs.step("flashing firmware");
        flash(node, &items, &payloads, &backends, obs)?;
    }
    st.details = format!(
        "{} upgrade from {} to {} prepared; run `qq upgrade_cluster commit`",
        plan.mode, plan.from.version, plan.to.version
    );
    st.stage = Stage::Prepared(plan);
    Ok(())
}

pub(crate) type FirmwarePlan = (Vec<PlanItem>, Backends);

/// The firmware plan of an on-prem node with firmware devices, when the bundle
/// carries firmware. Refused items refuse the bundle. `running` is the platform the
/// node runs now: after a platform commit it is the fallback, so firmware that
/// declares `compatible_platforms` without it would strand the fallback slot.
pub(crate) fn firmware_plan(
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
    let fwerr = Error::Firmware;
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
            reason: Refusal::Firmware {
                component: item.component.clone(),
                why: why.to_string(),
            },
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
    obs: &dyn Progress,
) -> Result<(), Error> {
    let fwerr = Error::Firmware;
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
    let out = firmware::prepare::flash_all(&journal, plan, payloads, backends, &fo, obs)
        .map_err(fwerr)?;
    for (component, outcome) in out {
        if let Outcome::Failed { reason } = outcome {
            return Err(Error::FirmwareFailed { component, reason });
        }
    }
    Ok(())
}

/// Undoes a prepare of `plan`: the target slot's entries (staged ones included) go
/// and the slot is marked `_empty` (platform mode, never the running slot); the
/// staged container goes unless it is installed. Returns the slot that was reset.
pub fn cleanup(node: &Node, io: &mut Opened, plan: &Plan) -> Result<Option<Slot>, Error> {
    node.containers().discard(&plan.to.version)?;
    if plan.mode != Mode::Platform || plan.to.slot == plan.from.slot {
        return Ok(None);
    }
    let slot = plan.to.slot;
    entries::remove_slot_entries(io.esp.as_mut(), &io.product, slot)
        .map_err(boot_err("removing the slot's entries"))?;
    bootctl::slot::clear(&mut io.disk, slot).map_err(boot_err(format!("clearing slot {slot}")))?;
    Ok(Some(slot))
}
