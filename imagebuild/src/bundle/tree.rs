//! A directory staged as a component: its squashfs image followed by the image's
//! dm-verity hash area. One function per way the bundle stores it:
//! - [`stored`] (`images = "none"`): the image is written once, into the bundle at
//!   its final offset when it is given one, or staged; it is then read once, for
//!   its SHA-256 on this thread and its hash tree on another.
//! - [`compressed`] (`images = "zstd"`): the image is staged (its compressed stream
//!   starts with the superblock, which is written last), then read once into a
//!   compressed payload file while its hash tree is built on another thread.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use qimg::{ComponentKind, Compression, PayloadInfo, Task, VerityBuilder, VerityInfo};

use super::{
    BuildOptions, Source, Staged, derive, derive_uuid, finish_payload, output_err, payload_writer,
    pump, workers,
};
use crate::place::FileAt;
use crate::spill::Spill;
use crate::{Error, squashfs};

/// A sink for the image's bytes, in order.
type Feed<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + 'a;

/// Stages directory `root` as component `name`: the platform's root when
/// `platform`, else the container. An image stored as is and given a `place` (the
/// bundle file and the payload's offset in it) is written there directly.
pub(super) fn stage_tree(
    root: &Path,
    name: &str,
    platform: bool,
    staging: &Path,
    opts: &BuildOptions,
    place: Option<(&File, u64)>,
) -> Result<Staged, Error> {
    let image_path = staging.join(format!("{name}.squashfs"));
    let (info, source, verity) = match opts.spec.images {
        Compression::None => stored(root, name, staging, opts, place, &image_path)?,
        c => compressed(root, name, c, staging, opts, &image_path)?,
    };
    let filesystem = "squashfs".to_owned();
    let kind = if platform {
        ComponentKind::PlatformRoot { filesystem, verity }
    } else {
        ComponentKind::Container { filesystem, verity }
    };
    Ok(Staged {
        name: name.to_owned(),
        kind,
        info,
        source,
    })
}

/// Where an image stored as is is written.
enum Image<'f> {
    /// Staged (memory up to the cap, then a temporary file), copied into the
    /// bundle later.
    Spill(Spill),
    /// Written at its final offset in the bundle.
    Place(FileAt<'f>),
}

/// The image stored as is: the payload is the image, its padding to 4 KiB and its
/// hash area, and its digest is computed as the image is read for the hash tree.
fn stored(
    root: &Path,
    name: &str,
    staging: &Path,
    opts: &BuildOptions,
    place: Option<(&File, u64)>,
    image_path: &Path,
) -> Result<(PayloadInfo, Source, VerityInfo), Error> {
    let mut image = match place {
        Some((file, at)) => Image::Place(FileAt::new(file, at)),
        None => Image::Spill(Spill::new(opts.staging_memory, staging)),
    };
    let image_len = match &mut image {
        Image::Spill(s) => {
            squash(root, name, opts, &mut *s)?;
            s.len()
        }
        Image::Place(p) => {
            squash(root, name, opts, &mut *p)?;
            p.len()
        }
    };
    let mut content = Sha256::new();
    let digest = |b: &[u8]| {
        content.update(b);
        Ok(())
    };
    let (verity, area) = one_pass(opts, name, image_len, digest, image_path, |feed, task| {
        let read = |b: &[u8]| {
            if opts.cancel.is_cancelled() {
                return Err(std::io::Error::other("cancelled"));
            }
            feed(b)?;
            task.advance(b.len() as u64);
            Ok(())
        };
        match &mut image {
            Image::Spill(s) => s.scan(read),
            Image::Place(p) => p.scan(read),
        }
        .map_err(|source| {
            if opts.cancel.is_cancelled() {
                Error::Cancelled
            } else {
                output_err(image_path)(source)
            }
        })
    })?;
    content.update(&area);
    let mut tail = padding(image_len);
    let size = image_len + tail.len() as u64 + area.len() as u64;
    let sha256 = qimg::Sha256(content.finalize().into());
    tail.extend_from_slice(&area);
    let source = match image {
        Image::Spill(staged) => Source::Image {
            image: staged.into_reader().map_err(output_err(image_path))?,
            tail,
        },
        Image::Place(mut p) => {
            p.append(&tail).map_err(output_err(opts.out))?;
            Source::InPlace
        }
    };
    let info = PayloadInfo {
        compression: Compression::None,
        size,
        sha256,
        stored_size: size,
        stored_sha256: sha256,
    };
    Ok((info, source, verity))
}

/// The image compressed: staged, then read once (each piece freed as it is read)
/// into the payload file, the hash area after it.
fn compressed(
    root: &Path,
    name: &str,
    compression: Compression,
    staging: &Path,
    opts: &BuildOptions,
    image_path: &Path,
) -> Result<(PayloadInfo, Source, VerityInfo), Error> {
    let mut staged = Spill::new(opts.staging_memory, staging);
    squash(root, name, opts, &mut staged)?;
    let image_len = staged.len();
    let path = staging.join(format!("{name}.payload"));
    let mut pw = payload_writer(&path, compression, opts.spec.level)?;
    let mut image = staged.into_reader().map_err(output_err(image_path))?;
    let write = |b: &[u8]| pw.write_all(b);
    let (verity, area) = one_pass(opts, name, image_len, write, &path, |feed, task| {
        pump(&mut image, feed, task, opts.cancel, image_path, &path).map(|_| ())
    })?;
    pw.write_all(&area).map_err(output_err(&path))?;
    Ok((finish_payload(pw, &path)?, Source::File(path), verity))
}

/// Builds the squashfs image of `root` into `out`.
fn squash(
    root: &Path,
    name: &str,
    opts: &BuildOptions,
    out: impl Write + Seek,
) -> Result<(), Error> {
    let mtime = u32::try_from(opts.source_date_epoch).map_err(|_| {
        Error::Usage("SOURCE_DATE_EPOCH does not fit squashfs's 32-bit time".into())
    })?;
    let task = opts.progress.begin(
        &format!("{name}: squashfs"),
        Some(squashfs::tree_size(root)?),
    );
    let workers = workers() as usize;
    squashfs::build(
        root,
        out,
        opts.spec.level,
        mtime,
        workers,
        task.as_ref(),
        opts.cancel,
    )?;
    Ok(())
}

/// The zeros that pad an image of `len` bytes to a 4 KiB boundary, where its hash
/// area starts.
fn padding(len: u64) -> Vec<u8> {
    vec![0u8; ((4096 - len % 4096) % 4096) as usize]
}

/// One pass over an image of `image_len` bytes: `read` feeds its chunks; each goes
/// to the hash tree, built on its own thread from shared chunks, and to `sink` on
/// this one, and the padding after them. Returns the verity parameters and the hash
/// area. `sink_path` names the sink in its errors.
fn one_pass(
    opts: &BuildOptions,
    name: &str,
    image_len: u64,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    sink_path: &Path,
    read: impl FnOnce(&mut Feed, &dyn Task) -> Result<(), Error>,
) -> Result<(VerityInfo, Vec<u8>), Error> {
    let task = opts
        .progress
        .begin(&format!("{name}: verity + payload"), Some(image_len));
    let salt = derive(opts.spec, name, "verity-salt");
    let mut verity = VerityBuilder::new(&salt, derive_uuid(opts.spec, name));
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
            sink(b)
        };
        let pumped = read(&mut feed, task.as_ref())
            .and_then(|()| feed(&padding(image_len)).map_err(output_err(sink_path)));
        drop(tx);
        (pumped, hasher.join().expect("verity thread panicked"))
    });
    pumped?;
    verity
        .finish()
        .map_err(|reason| Error::Usage(format!("{name}: {reason}")))
}
