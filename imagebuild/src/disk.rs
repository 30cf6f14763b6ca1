//! `imagebuild disk`: a fresh, bootable node disk image from a bundle.
//!
//! Layout (`bootctl::layout`): ESP, root/verity A, root/verity B, data. The ESP gets
//! the distribution's systemd-boot as `/EFI/BOOT/BOOTX64.EFI` and
//! `/EFI/systemd/systemd-bootx64.efi`, and a `loader.conf` with `timeout 0`,
//! `editor no` and no `default` (a `default` matching a counted entry would defeat
//! fallback). Slot A gets the bundle's platform root (verified while it streams in)
//! and its UKI as an uncounted entry; slot B stays `_empty`. Slots are labelled with
//! the *platform* version: instant upgrades change the release version without
//! touching the slot. The image is sparse, written to a temporary file and renamed.

use qutil::fs::AtomicFile;
use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use bootctl::entries;
use bootctl::esp::{self, Esp, ImageEsp};
use bootctl::layout::{LayoutSpec, MIB, Slot, derive_uuid};
use bootctl::slot::{self, SlotImage, SlotWriter};
use bootctl::table;
use qimg::{BundleReader, ComponentKind, Progress, Target, TrustedKeys, VerityInfo};

use crate::{Cancel, Error};

/// Default systemd-boot binary (Debian's systemd-boot-efi).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Written to `loader/loader.conf`.
pub const LOADER_CONF: &str = "timeout 0\neditor no\n";

/// What to build.
pub struct DiskOptions<'a> {
    /// The bundle.
    pub bundle: &'a Path,
    /// Keys to verify the bundle's signature with; `None` checks digests only.
    pub keys: Option<&'a TrustedKeys>,
    /// Output image.
    pub out: &'a Path,
    /// Total size; `None` fits the layout (cloud images round up to whole GiB).
    pub size: Option<u64>,
    /// systemd-boot EFI binary.
    pub systemd_boot: &'a Path,
    /// Image target; must match the bundle's.
    pub target: Target,
    /// ESP size in MiB.
    pub esp_mib: u64,
    /// Root partition size per slot in MiB; `None`: the image plus 25%.
    pub root_mib: Option<u64>,
    /// Data partition size in MiB (at least).
    pub data_mib: u64,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// Cancellation.
    pub cancel: &'a Cancel,
}

/// What was built.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiskReport {
    /// The image.
    pub file: PathBuf,
    /// Its size.
    pub size: u64,
    /// Slot A's label.
    pub slot_a: String,
    /// Slot B's label.
    pub slot_b: String,
    /// The boot entry installed for slot A.
    pub entry: String,
}

fn boot(source: bootctl::Error) -> Error {
    Error::Boot { source }
}

/// The bundle's platform root: its component, verity parameters, and the slot
/// image it becomes (product, platform version, sizes, root hash).
fn platform_root(m: &qimg::Manifest) -> Result<(&qimg::Component, &VerityInfo, SlotImage), Error> {
    let (c, verity) = m
        .platform_root()
        .ok_or_else(|| Error::Usage("the bundle has no platform-root: nothing to boot".into()))?;
    let image = SlotImage {
        product: m.release.product.clone(),
        version: m.release.platform_version.to_string(),
        hash_offset: verity.hash_offset,
        size: c.size,
        root_hash: verity.root_hash.0,
    };
    Ok((c, verity, image))
}

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Builds the disk image.
pub fn build(o: &DiskOptions) -> Result<DiskReport, Error> {
    let bundle_err = |source| Error::Bundle {
        path: o.bundle.to_owned(),
        source,
    };
    let input = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Input { path, source }
    };
    let systemd_boot = std::fs::read(o.systemd_boot).map_err(input(o.systemd_boot))?;
    let file = BufReader::with_capacity(1 << 20, File::open(o.bundle).map_err(input(o.bundle))?);
    let reader = match o.keys {
        Some(keys) => {
            BundleReader::open_verified(file, keys)
                .map_err(bundle_err)?
                .0
        }
        None => BundleReader::open(file).map_err(bundle_err)?,
    };
    let m = reader.manifest().clone();
    if m.release.target != o.target {
        return Err(Error::Usage(format!(
            "the bundle is for {:?} machines, the image for {:?}",
            m.release.target, o.target
        )));
    }
    let (root_c, verity, image) = platform_root(&m)?;
    let hash_bytes = root_c.size - verity.hash_offset;
    let root_mib = o
        .root_mib
        .unwrap_or_else(|| mib_up(verity.hash_offset + verity.hash_offset / 4).max(64));
    // The verity partition holds the hash tree of any image that fits the root
    // partition, so later releases up to that size fit the other slot.
    let verity_mib = mib_up(hash_bytes + hash_bytes / 4)
        .max(mib_up(qimg::verity::hash_area_size(root_mib * MIB / 4096)))
        .max(2);
    let spec = LayoutSpec {
        product: m.release.product.clone(),
        esp_mib: o.esp_mib,
        root_mib,
        verity_mib,
        min_data_mib: o.data_mib,
    };
    let needed =
        (2 + spec.esp_mib + 2 * (spec.root_mib + spec.verity_mib) + spec.min_data_mib) * MIB;
    let mut size = o.size.unwrap_or(needed);
    if o.target == Target::Cloud {
        size = size.div_ceil(1 << 30) << 30; // EBS snapshots are whole GiB
    }
    let plan = spec.plan(size).map_err(|e| Error::Usage(e.to_string()))?;
    let version = image.version.clone();

    let out_err = |source| Error::Output {
        path: o.out.to_owned(),
        source,
    };
    let mut out = AtomicFile::new(o.out, "disk-partial-").map_err(out_err)?;
    let tmp_path = out.temp_path().to_owned();
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp_path)
        .map_err(out_err)?;
    dev.set_len(size).map_err(out_err)?;
    let t = table::create(&mut dev, &plan).map_err(boot)?;
    let (esp_start, esp_len) = t.esp_range().expect("the plan has an ESP");
    let vol = u32::from_le_bytes(
        derive_uuid(&[b"esp-volume", plan.disk_guid.as_bytes()]).as_bytes()[..4]
            .try_into()
            .expect("4"),
    );
    esp::format(&mut dev, esp_start, esp_len, vol).map_err(boot)?;

    // Stream the bundle once: the platform root into slot A, the UKI into memory;
    // other components are verified and left for the node.
    let (t, uki) = stream_platform(
        reader,
        SlotWriter::begin(&mut dev, Slot::A, &image, true).map_err(boot)?,
        o.progress,
        o.cancel,
    )
    .map_err(|e| match e {
        StreamError::Bundle(source) => bundle_err(source),
        StreamError::Other(e) => e,
    })?;

    let esp_dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp_path)
        .map_err(out_err)?;
    let mut esp = ImageEsp::open(esp_dev, esp_start, esp_len).map_err(boot)?;
    esp.write_new("EFI/BOOT/BOOTX64.EFI", &systemd_boot)
        .map_err(boot)?;
    esp.write_new("EFI/systemd/systemd-bootx64.efi", &systemd_boot)
        .map_err(boot)?;
    esp.write_new(entries::LOADER_CONF, LOADER_CONF.as_bytes())
        .map_err(boot)?;
    // Sizes are fixed at first install: record them, with the product, for qbootctl
    // and later upgrades.
    let record = bootctl::status::LayoutRecord {
        schema: "qimg.layout/1".into(),
        product: m.release.product.clone(),
        esp_mib: spec.esp_mib,
        root_mib: spec.root_mib,
        verity_mib: spec.verity_mib,
    };
    let mut record = serde_json::to_vec_pretty(&record).expect("serializable");
    record.push(b'\n');
    esp.write_new(bootctl::status::LAYOUT_RECORD, &record)
        .map_err(boot)?;
    let entry = entries::install(&mut esp, &m.release.product, Slot::A, &version, &uki, None)
        .map_err(boot)?;
    esp.flush().map_err(boot)?;
    drop(esp);
    dev.sync_all().map_err(out_err)?;
    drop(dev);
    out.file().sync_all().map_err(out_err)?;
    out.commit().map_err(out_err)?;
    Ok(DiskReport {
        file: o.out.to_owned(),
        size,
        slot_a: slot::label(&t, Slot::A).map_err(boot)?,
        slot_b: slot::label(&t, Slot::B).map_err(boot)?,
        entry,
    })
}

/// Installs a bundle's platform into `slot` of an existing node image, the way a
/// node's prepare phase does: remove the slot's entries; write the platform root as
/// it streams in (verified); label the slot; install its UKI as an entry with `tries`
/// tries. The other slot and its entries are untouched. Returns the new entry's name.
pub fn install_slot(
    image: &Path,
    bundle: &Path,
    keys: Option<&TrustedKeys>,
    slot: Slot,
    tries: Option<u32>,
    progress: &dyn Progress,
) -> Result<String, Error> {
    let bundle_err = |source| Error::Bundle {
        path: bundle.to_owned(),
        source,
    };
    let out_err = |source| Error::Output {
        path: image.to_owned(),
        source,
    };
    let file = BufReader::with_capacity(
        1 << 20,
        File::open(bundle).map_err(|source| Error::Input {
            path: bundle.to_owned(),
            source,
        })?,
    );
    let reader = match keys {
        Some(k) => BundleReader::open_verified(file, k).map_err(bundle_err)?.0,
        None => BundleReader::open(file).map_err(bundle_err)?,
    };
    let m = reader.manifest().clone();
    let (_, _, img) = platform_root(&m)?;
    let version = img.version.clone();
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(out_err)
    };
    let mut dev = open()?;
    let t = table::read(&mut dev).map_err(boot)?;
    let (esp_start, esp_len) = t
        .esp_range()
        .ok_or_else(|| Error::Usage("the image has no ESP".into()))?;
    {
        let mut esp = ImageEsp::open(open()?, esp_start, esp_len).map_err(boot)?;
        entries::remove_slot_entries(&mut esp, &m.release.product, slot).map_err(boot)?;
    }
    let (_, uki) = stream_platform(
        reader,
        SlotWriter::begin(&mut dev, slot, &img, false).map_err(boot)?,
        progress,
        &Cancel::new(),
    )
    .map_err(|e| match e {
        StreamError::Bundle(source) => bundle_err(source),
        StreamError::Other(e) => e,
    })?;
    dev.sync_all().map_err(out_err)?;
    let mut esp = ImageEsp::open(open()?, esp_start, esp_len).map_err(boot)?;
    let entry = entries::install(&mut esp, &m.release.product, slot, &version, &uki, tries)
        .map_err(boot)?;
    esp.flush().map_err(boot)?;
    Ok(entry)
}

enum StreamError {
    Bundle(qimg::Error),
    Other(Error),
}

/// Streams a bundle's components once: the platform root into `slot` (the one slot
/// writer every install path uses), the UKI into memory, everything else verified
/// and dropped; then the end of the bundle is checked and only then is the slot
/// labelled. Returns the table after labelling and the UKI.
fn stream_platform<R: std::io::BufRead>(
    mut reader: BundleReader<R>,
    mut slot: SlotWriter<'_, File>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(bootctl::table::Table, Vec<u8>), StreamError> {
    let m = reader.manifest().clone();
    let mut uki = Vec::new();
    for c in &m.components {
        cancel.check().map_err(|c| StreamError::Other(c.into()))?;
        match &c.kind {
            ComponentKind::PlatformRoot { .. } => reader.next_component(&mut slot, progress),
            ComponentKind::BootUki => reader.next_component(&mut uki, progress),
            _ => reader.next_component(std::io::sink(), progress),
        }
        .map_err(StreamError::Bundle)?;
    }
    reader.finish(progress).map_err(StreamError::Bundle)?;
    if uki.is_empty() {
        return Err(StreamError::Other(Error::Usage(
            "the bundle has no boot-uki".into(),
        )));
    }
    let t = slot.finish().map_err(|e| StreamError::Other(boot(e)))?;
    Ok((t, uki))
}
