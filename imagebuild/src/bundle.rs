//! Building a signed bundle from a release spec.

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
use crate::spill::Spill;
use crate::{Cancel, Error, TOOL, squashfs};

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

/// One staged payload, waiting in the staging directory.
struct Staged {
    name: String,
    kind: ComponentKind,
    info: PayloadInfo,
    path: PathBuf,
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

fn finish_payload(pw: PayloadWriter<BufWriter<File>>, path: &Path) -> Result<PayloadInfo, Error> {
    let (out, info) = pw.finish().map_err(output_err(path))?;
    out.into_inner()
        .map_err(|e| Error::Output {
            path: path.to_owned(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(output_err(path))?;
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
    let mut pw = payload_writer(&path, Compression::Zstd, opts.spec.level)?;
    pump(
        src,
        &mut |b| pw.write_all(b),
        task.as_ref(),
        opts.cancel,
        input,
        &path,
    )?;
    let info = finish_payload(pw, &path)?;
    Ok(Staged {
        name: name.to_owned(),
        kind,
        info,
        path,
    })
}

/// The platform: the root image, then its UKI (built here with `roothash=` when the
/// spec gives its parts, so it finds its root in either slot).
fn stage_platform(
    p: &PlatformInput,
    staging: &Path,
    opts: &BuildOptions,
) -> Result<Vec<Staged>, Error> {
    let root = stage_tree(&p.root, "rootfs", true, staging, opts)?;
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

/// Stages a directory as squashfs followed by its dm-verity hash area, compressed.
fn stage_tree(
    root: &Path,
    name: &str,
    platform: bool,
    staging: &Path,
    opts: &BuildOptions,
) -> Result<Staged, Error> {
    let image_path = staging.join(format!("{name}.squashfs"));
    let mtime = u32::try_from(opts.source_date_epoch).map_err(|_| {
        Error::Usage("SOURCE_DATE_EPOCH does not fit squashfs's 32-bit time".into())
    })?;
    // The image is staged in memory up to the cap, then in an unnamed temporary file.
    let mut staged = Spill::new(opts.staging_memory, staging);
    {
        let task = opts.progress.begin(
            &format!("{name}: squashfs"),
            Some(squashfs::tree_size(root)?),
        );
        squashfs::build(
            root,
            &mut staged,
            opts.spec.level,
            mtime,
            workers() as usize,
            task.as_ref(),
            opts.cancel,
        )?;
    }
    let image_len = staged.len();
    let mut image = staged.into_reader().map_err(output_err(&image_path))?;

    let path = staging.join(format!("{name}.payload"));
    let task = opts
        .progress
        .begin(&format!("{name}: verity + payload"), Some(image_len));
    let salt = derive(opts.spec, name, "verity-salt");
    let mut verity = VerityBuilder::new(&salt, derive_uuid(opts.spec, name));
    let mut pw = payload_writer(&path, opts.spec.images, opts.spec.level)?;
    // The hash tree is built on its own thread from shared chunks while this thread
    // feeds the payload writer.
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::sync::Arc<[u8]>>(4);
    let (pumped, verity) = std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            for chunk in rx {
                verity.update(&chunk);
            }
            verity
        });
        let mut feed = |b: &[u8]| {
            let _ = tx.send(std::sync::Arc::from(b));
            pw.write_all(b)
        };
        let pumped = pump(
            &mut image,
            &mut feed,
            task.as_ref(),
            opts.cancel,
            &image_path,
            &path,
        )
        .and_then(|_| {
            let pad = (4096 - image_len % 4096) % 4096;
            feed(&vec![0u8; pad as usize]).map_err(output_err(&path))
        });
        drop(tx);
        (pumped, hasher.join().expect("verity thread panicked"))
    });
    pumped?;
    let (info, area) = verity
        .finish()
        .map_err(|reason| Error::Usage(format!("{name}: {reason}")))?;
    pw.write_all(&area).map_err(output_err(&path))?;
    let payload = finish_payload(pw, &path)?;
    drop(image);
    let filesystem = "squashfs".to_owned();
    let kind = if platform {
        ComponentKind::PlatformRoot {
            filesystem,
            verity: info,
        }
    } else {
        ComponentKind::Container {
            filesystem,
            verity: info,
        }
    };
    Ok(Staged {
        name: name.to_owned(),
        kind,
        info: payload,
        path,
    })
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

    // Components in manifest order; each stages on its own thread.
    let mut jobs: Vec<Job> = Vec::new();
    if let Some(p) = &spec.platform {
        jobs.push(Box::new(move |st| stage_platform(p, st, opts)));
    }
    if let Some(root) = &spec.container {
        jobs.push(Box::new(move |st| {
            stage_tree(root, "container", false, st, opts).map(|s| vec![s])
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
    let bundle_err = |source| Error::Bundle {
        path: opts.out.to_owned(),
        source,
    };
    let manifest_bytes = manifest.to_bytes().map_err(bundle_err)?;
    let comment = format!(
        "timestamp:{}\tfile:manifest.json\t{} {}",
        opts.source_date_epoch, spec.release.product, spec.release.version
    );
    let mut signatures = Vec::new();
    for key in opts.keys {
        let sig = key.sign(&manifest_bytes, &comment);
        key.public()
            .verify(&manifest_bytes, &sig)
            .map_err(bundle_err)?;
        signatures.push(sig);
    }

    opts.cancel.check()?;
    let mut files = Vec::new();
    for p in &parts {
        files.push(File::open(&p.path).map_err(output_err(&p.path))?);
    }
    let mut out = AtomicFile::new(opts.out, "qimg-partial-").map_err(output_err(&out_dir))?;
    // Unbuffered files on both sides: payloads are copied inside the kernel.
    qimg::write_bundle(
        out.file(),
        &manifest,
        &signatures,
        &mut files,
        opts.progress,
    )
    .map_err(bundle_err)?;
    opts.cancel.check()?;
    // 0644 (a bundle is not secret), fsync, rename, fsync of the directory.
    out.commit().map_err(output_err(opts.out))?;
    Ok(manifest)
}
