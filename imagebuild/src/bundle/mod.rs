//! Building a signed bundle from a release spec.

mod tree;

use tree::stage_tree;

use qutil::fs::AtomicFile;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use qimg::{
    BuildInfo, Component, ComponentKind, Compression, Manifest, PayloadInfo, PayloadWriter,
    Progress, SecretKey, VerityBuilder,
};

use crate::spec::{PlatformInput, ReleaseSpec, UkiInput};
use crate::{Cancel, Error, TOOL};

/// Chunk size for streaming inputs.
const CHUNK: usize = 4 << 20;

/// What to build.
pub struct BuildOptions<'a> {
    /// The validated spec.
    pub spec: &'a ReleaseSpec,
    /// Timestamp for every file, member and the manifest.
    pub source_date_epoch: u64,
    /// Keys to sign with (at least one; several during a key rotation).
    pub keys: &'a [SecretKey],
    /// Output path of the `.qimg`.
    pub out: &'a Path,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// Cancellation flag.
    pub cancel: &'a Cancel,
    /// Bytes of a filesystem image kept in memory while it is staged; larger images
    /// go to a temporary file. Several images may be staged at once.
    pub staging_memory: u64,
}

/// Default for [`BuildOptions::staging_memory`]: 1 GiB.
pub const DEFAULT_STAGING_MEMORY: u64 = 1 << 30;

/// One staged payload: its stored bytes wait in the staging directory, or (a
/// filesystem image stored as is) in the image's staging buffer.
struct Staged {
    name: String,
    kind: ComponentKind,
    info: PayloadInfo,
    source: Source,
}

/// Where a staged payload's stored bytes are.
enum Source {
    /// A payload file in the staging directory.
    File(PathBuf),
    /// A small payload, in memory.
    Memory(Vec<u8>),
    /// An uncompressed image: the staged squashfs, then its padding and hash tree.
    Image {
        image: crate::spill::SpillReader,
        tail: Vec<u8>,
    },
    /// Already written at its final offset in the bundle.
    InPlace,
}

/// A payload being copied into the bundle.
enum Payload {
    File(File),
    Image(std::io::Chain<crate::spill::SpillReader, std::io::Cursor<Vec<u8>>>),
    Memory(std::io::Cursor<Vec<u8>>),
    /// Nothing to copy (the writer skips it).
    InPlace,
}

impl Read for Payload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Payload::File(f) => f.read(buf),
            Payload::Image(r) => r.read(buf),
            Payload::Memory(r) => r.read(buf),
            Payload::InPlace => Ok(0),
        }
    }
}

impl qimg::PayloadSource for Payload {
    /// A file inside the kernel; memory in writes of up to 4 MiB.
    fn copy_to<W: Write>(&mut self, n: u64, out: &mut W) -> std::io::Result<u64> {
        match self {
            Payload::File(f) => f.copy_to(n, out),
            Payload::Image(r) => copy_chunks(r, n, out),
            Payload::Memory(r) => copy_chunks(r, n, out),
            Payload::InPlace => Ok(0),
        }
    }
}

/// Copies up to `n` bytes of `r` into `out` in writes of up to [`CHUNK`].
fn copy_chunks(r: &mut impl Read, n: u64, out: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < n {
        let want = (n - done).min(CHUNK as u64) as usize;
        let got = r.read(&mut buf[..want])?;
        if got == 0 {
            break;
        }
        out.write_all(&buf[..got])?;
        done += got as u64;
    }
    Ok(done)
}

fn output_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Output {
        path: path.to_owned(),
        source,
    }
}

/// Number of zstd worker threads: every core. The output does not depend on it.
fn workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Derives 32 bytes from the release identity and a label, so salts and UUIDs are
/// the same for the same inputs and differ between releases and components.
fn derive(spec: &ReleaseSpec, component: &str, label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        "qimg-derive-v1",
        label,
        &spec.release.product,
        &spec.release.version.to_string(),
        component,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// A UUID (RFC 9562 version 8, vendor-specific) from derived bytes.
fn derive_uuid(spec: &ReleaseSpec, component: &str) -> [u8; 16] {
    let mut u: [u8; 16] = derive(spec, component, "verity-uuid")[..16]
        .try_into()
        .expect("16 bytes");
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Copies `input` into `sink` in chunks, honouring cancellation and reporting progress.
fn pump(
    input: &mut dyn Read,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    task: &dyn qimg::Task,
    cancel: &Cancel,
    input_path: &Path,
    output_path: &Path,
) -> Result<u64, Error> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        cancel.check()?;
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Input {
                    path: input_path.to_owned(),
                    source,
                });
            }
        };
        sink(&buf[..n]).map_err(output_err(output_path))?;
        total += n as u64;
        task.advance(n as u64);
    }
}

fn payload_writer(
    path: &Path,
    compression: Compression,
    level: i32,
) -> Result<PayloadWriter<BufWriter<File>>, Error> {
    let file = File::create(path).map_err(output_err(path))?;
    let out = BufWriter::with_capacity(1 << 20, file);
    match compression {
        Compression::None => Ok(PayloadWriter::plain(out)),
        Compression::Zstd => PayloadWriter::zstd(out, level, workers()).map_err(output_err(path)),
    }
}

/// Flushes a staged payload. Not synced: it is a temporary file, copied into the
/// bundle, which is synced before it is renamed into place.
fn finish_payload(pw: PayloadWriter<BufWriter<File>>, path: &Path) -> Result<PayloadInfo, Error> {
    let (out, info) = pw.finish().map_err(output_err(path))?;
    out.into_inner().map_err(|e| Error::Output {
        path: path.to_owned(),
        source: e.into_error(),
    })?;
    Ok(info)
}

/// Stages a file as is (UKI, firmware), zstd-compressed.
fn stage_file(
    input: &Path,
    name: &str,
    kind: ComponentKind,
    staging: &Path,
    opts: &BuildOptions,
) -> Result<Staged, Error> {
    let mut src = File::open(input).map_err(|source| Error::Input {
        path: input.to_owned(),
        source,
    })?;
    let total = src.metadata().map(|m| m.len()).ok();
    stage_reader(&mut src, total, input, name, kind, staging, opts)
}

/// Stages bytes from `src`, zstd-compressed; `input` names them in errors.
fn stage_reader(
    src: &mut dyn Read,
    total: Option<u64>,
    input: &Path,
    name: &str,
    kind: ComponentKind,
    staging: &Path,
    opts: &BuildOptions,
) -> Result<Staged, Error> {
    let path = staging.join(format!("{name}.payload"));
    let task = opts.progress.begin(name, total);
    // A small input (a UKI, most firmware) is staged in memory: the bundle is then
    // the only file written.
    let (task, cancel) = (task.as_ref(), opts.cancel);
    let (info, source) = if total.is_some_and(|t| t <= SMALL_IN_MEMORY) {
        let pw = PayloadWriter::zstd(Vec::new(), opts.spec.level, workers())
            .map_err(output_err(&path))?;
        let pw = encode(pw, src, task, cancel, input, &path)?;
        let (bytes, info) = pw.finish().map_err(output_err(&path))?;
        (info, Source::Memory(bytes))
    } else {
        let pw = payload_writer(&path, Compression::Zstd, opts.spec.level)?;
        let pw = encode(pw, src, task, cancel, input, &path)?;
        (finish_payload(pw, &path)?, Source::File(path.clone()))
    };
    Ok(Staged {
        name: name.to_owned(),
        kind,
        info,
        source,
    })
}

/// Feeds all of `src` into `pw`.
fn encode<W: Write>(
    mut pw: PayloadWriter<W>,
    src: &mut dyn Read,
    task: &dyn qimg::Task,
    cancel: &Cancel,
    input: &Path,
    path: &Path,
) -> Result<PayloadWriter<W>, Error> {
    pump(src, &mut |b| pw.write_all(b), task, cancel, input, path)?;
    Ok(pw)
}

/// Inputs up to this size are staged in memory rather than in a payload file.
const SMALL_IN_MEMORY: u64 = 64 << 20;

/// The platform: the root image, then its UKI (built here with `roothash=` when the
/// spec gives its parts, so it finds its root in either slot).
fn stage_platform(
    p: &PlatformInput,
    staging: &Path,
    opts: &BuildOptions,
    place: Option<(&File, u64)>,
) -> Result<Vec<Staged>, Error> {
    let root = stage_tree(&p.root, "rootfs", true, staging, opts, place)?;
    let uki = match &p.uki {
        UkiInput::File(f) => stage_file(f, "uki", ComponentKind::BootUki, staging, opts)?,
        UkiInput::Build {
            stub,
            kernel,
            initrd,
            cmdline,
            os_release,
        } => {
            let verity = root.kind.verity().expect("a platform root has verity");
            let read = |path: &Path| {
                std::fs::read(path).map_err(|source| Error::Input {
                    path: path.to_owned(),
                    source,
                })
            };
            let inputs = bootctl::uki::build::UkiInputs {
                stub: read(stub)?,
                osrel: read(os_release)?,
                cmdline: format!("{} roothash={}", cmdline.trim(), verity.root_hash),
                kernel: read(kernel)?,
                initrd: initrd.as_deref().map(read).transpose()?,
                uname: None,
            };
            let bytes =
                bootctl::uki::build::build(&inputs).map_err(|source| Error::Boot { source })?;
            stage_reader(
                &mut &bytes[..],
                Some(bytes.len() as u64),
                kernel,
                "uki",
                ComponentKind::BootUki,
                staging,
                opts,
            )?
        }
    };
    Ok(vec![root, uki])
}

/// A manifest of the shape this build produces (component names, kinds and
/// compression, verity salts and UUIDs, firmware descriptions) with placeholder
/// sizes and digests: what the reserved manifest length is computed from.
fn placeholder(spec: &ReleaseSpec) -> Manifest {
    let verity = |name: &str| {
        let mut v = VerityBuilder::new(&derive(spec, name, "verity-salt"), derive_uuid(spec, name));
        v.update(&[0u8; 4096]);
        v.finish().expect("one block of data has a tree").0
    };
    let component = |name: &str, kind, compression| Component {
        name: name.to_owned(),
        kind,
        size: 0,
        sha256: qimg::Sha256([0; 32]),
        compression,
        stored_size: 0,
        stored_sha256: qimg::Sha256([0; 32]),
    };
    let squashfs = || "squashfs".to_owned();
    let mut components = Vec::new();
    if spec.platform.is_some() {
        components.push(component(
            "rootfs",
            ComponentKind::PlatformRoot {
                filesystem: squashfs(),
                verity: verity("rootfs"),
            },
            spec.images,
        ));
        components.push(component("uki", ComponentKind::BootUki, Compression::Zstd));
    }
    if spec.container.is_some() {
        components.push(component(
            "container",
            ComponentKind::Container {
                filesystem: squashfs(),
                verity: verity("container"),
            },
            spec.images,
        ));
    }
    for fw in &spec.firmware {
        components.push(component(
            &format!("fw-{}", fw.info.component_id),
            ComponentKind::Firmware(fw.info.clone()),
            Compression::Zstd,
        ));
    }
    Manifest {
        release: spec.release.clone(),
        build: BuildInfo {
            tool: TOOL.into(),
            source_date_epoch: 0,
        },
        components,
    }
}

type Job<'a> = Box<dyn FnOnce(&Path) -> Result<Vec<Staged>, Error> + Send + 'a>;

/// Builds, signs and writes the bundle. Returns its manifest.
pub fn build(opts: &BuildOptions) -> Result<Manifest, Error> {
    let spec = opts.spec;
    if opts.keys.is_empty() {
        return Err(Error::Usage("at least one signing key is needed".into()));
    }
    let out_dir = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".qimg-staging-")
        .tempdir_in(&out_dir)
        .map_err(output_err(&out_dir))?;
    let bundle_err = |source| Error::Bundle {
        path: opts.out.to_owned(),
        source,
    };

    // The head's length is known before any payload is built: format 2 reserves
    // the manifest's length from a manifest of the same shape, and signatures have
    // a fixed length. So the first payload's offset is known, and an image stored
    // as is is written there while it is built.
    let reserved = placeholder(spec).reserved_len().map_err(bundle_err)?;
    let comment = format!(
        "timestamp:{}\tfile:manifest.json\t{} {}",
        opts.source_date_epoch, spec.release.product, spec.release.version
    );
    let sig_lens: Vec<u64> = opts
        .keys
        .iter()
        .map(|k| k.sign(b"", &comment).to_file_text().len() as u64)
        .collect();
    let member = |len: u64| qimg::tar::BLOCK as u64 + len + qimg::tar::padding(len);
    let head = member(reserved as u64) + sig_lens.iter().map(|&l| member(l)).sum::<u64>();
    let first_payload = head + qimg::tar::BLOCK as u64;
    let mut out = AtomicFile::new(opts.out, "qimg-partial-").map_err(output_err(&out_dir))?;
    let file = out.file().try_clone().map_err(output_err(opts.out))?;
    let place = (spec.images == Compression::None).then_some((&file, first_payload));

    // Components in manifest order; each stages on its own thread.
    let mut jobs: Vec<Job> = Vec::new();
    if let Some(p) = &spec.platform {
        jobs.push(Box::new(move |st| stage_platform(p, st, opts, place)));
    }
    if let Some(root) = &spec.container {
        // In place only as the first payload.
        let place = place.filter(|_| spec.platform.is_none());
        jobs.push(Box::new(move |st| {
            stage_tree(root, "container", false, st, opts, place).map(|s| vec![s])
        }));
    }
    for fw in &spec.firmware {
        jobs.push(Box::new(move |st| {
            let kind = ComponentKind::Firmware(fw.info.clone());
            stage_file(
                &fw.file,
                &format!("fw-{}", fw.info.component_id),
                kind,
                st,
                opts,
            )
            .map(|s| vec![s])
        }));
    }
    let staged: Vec<Result<Vec<Staged>, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let st = staging.path();
                s.spawn(move || {
                    let r = job(st);
                    if r.is_err() {
                        // Stop the other jobs early; the first error is reported.
                        opts.cancel.cancel();
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("staging thread panicked"))
            .collect()
    });
    // Report the root cause, not the cancellations it triggered.
    let mut first_err = None;
    let mut parts = Vec::new();
    for r in staged {
        match r {
            Ok(s) => parts.extend(s),
            Err(Error::Cancelled) => first_err = first_err.or(Some(Error::Cancelled)),
            Err(e) if matches!(first_err, None | Some(Error::Cancelled)) => first_err = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }

    let manifest = Manifest {
        release: spec.release.clone(),
        build: BuildInfo {
            tool: TOOL.into(),
            source_date_epoch: opts.source_date_epoch,
        },
        components: parts
            .iter()
            .map(|s| Component {
                name: s.name.clone(),
                kind: s.kind.clone(),
                size: s.info.size,
                sha256: s.info.sha256,
                compression: s.info.compression,
                stored_size: s.info.stored_size,
                stored_sha256: s.info.stored_sha256,
            })
            .collect(),
    };
    // Padded to the reserved length: the head is exactly as long as planned.
    let manifest_bytes = manifest.to_bytes_padded(reserved).map_err(bundle_err)?;
    let mut signatures = Vec::new();
    for (key, &len) in opts.keys.iter().zip(&sig_lens) {
        let sig = key.sign(&manifest_bytes, &comment);
        key.public()
            .verify(&manifest_bytes, &sig)
            .map_err(bundle_err)?;
        if sig.to_file_text().len() as u64 != len {
            return Err(bundle_err(qimg::Error::MalformedSignature {
                member: qimg::sign::signature_member(sig.key_id),
                reason: format!("not the {len} bytes the head was planned with"),
            }));
        }
        signatures.push(sig);
    }

    opts.cancel.check()?;
    let mut files = Vec::new();
    let mut in_place = Vec::new();
    for p in parts {
        in_place.push(matches!(p.source, Source::InPlace));
        let payload = match p.source {
            Source::File(path) => Payload::File(File::open(&path).map_err(output_err(&path))?),
            Source::Image { image, tail } => {
                Payload::Image(image.chain(std::io::Cursor::new(tail)))
            }
            Source::Memory(bytes) => Payload::Memory(std::io::Cursor::new(bytes)),
            Source::InPlace => Payload::InPlace,
        };
        files.push(payload);
    }
    qimg::write_bundle_file(
        out.file(),
        &manifest_bytes,
        &manifest,
        &signatures,
        &mut files,
        &in_place,
        opts.progress,
    )
    .map_err(bundle_err)?;
    opts.cancel.check()?;
    // 0644 (a bundle is not secret), fsync, rename, fsync of the directory.
    out.commit().map_err(output_err(opts.out))?;
    Ok(manifest)
}
