//! Writing a bundle: manifest, signatures, payloads, end-of-archive, in one pass.

use std::io::{self, Read, Write};

use crate::manifest::{MANIFEST_MEMBER, MAX_MANIFEST_SIZE, Manifest};
use crate::sign::{Signature, signature_member};
use crate::tar::{self, Header};
use crate::{Error, Part, Progress};

struct Out<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, bytes: &[u8], what: &str) -> Result<(), Error> {
        self.inner.write_all(bytes).map_err(|source| Error::Write {
            what: what.to_owned(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn header(&mut self, name: &str, size: u64, mtime: u64) -> Result<(), Error> {
        let h = Header {
            name: name.to_owned(),
            size,
            mtime,
        };
        self.put(&h.encode(), name)
    }

    fn pad(&mut self, what: &str) -> Result<(), Error> {
        let n = tar::padding(self.pos) as usize;
        self.put(&[0u8; tar::BLOCK][..n], what)
    }

    fn member(&mut self, name: &str, data: &[u8], mtime: u64) -> Result<(), Error> {
        self.header(name, data.len() as u64, mtime)?;
        self.put(data, name)?;
        self.pad(name)
    }
}

/// Payload bytes are copied in steps of this size, for progress.
const COPY_STEP: u64 = 64 << 20;

/// A payload's stored bytes for [`write_bundle`].
pub trait PayloadSource: Read {
    /// Copies up to `n` bytes into `out`; returns how many. The default goes through
    /// [`io::copy`], which copies inside the kernel (`copy_file_range`) when both
    /// sides are files.
    fn copy_to<W: Write>(&mut self, n: u64, out: &mut W) -> io::Result<u64>
    where
        Self: Sized,
    {
        io::copy(&mut self.by_ref().take(n), out)
    }
}

impl PayloadSource for std::fs::File {}

/// How [`write_members`] fills the payload members.
enum Fill<'a, W> {
    /// Every payload copied from its source.
    Copy,
    /// Payloads marked `true` are already at their offsets in the output: `skip`
    /// checks and passes them; the others are copied.
    Skip {
        in_place: &'a [bool],
        skip: &'a mut dyn FnMut(&mut W, u64) -> io::Result<()>,
    },
}

/// Writes a complete bundle to `out` and returns it.
///
/// `payloads` yields each component's stored bytes, in manifest order; each must
/// hold exactly the component's `stored_size` bytes. The caller signs
/// `manifest.to_bytes()` (see [`crate::SecretKey::sign`]). When `W` and `R` are
/// files, payloads are copied inside the kernel (`copy_file_range`), so pass them
/// unbuffered.
pub fn write_bundle<W: Write, R: PayloadSource>(
    out: W,
    manifest: &Manifest,
    signatures: &[Signature],
    payloads: &mut [R],
    progress: &dyn Progress,
) -> Result<W, Error> {
    let manifest_bytes = manifest.to_bytes()?;
    let head = (&manifest_bytes[..], manifest, signatures);
    write_members(out, head, payloads, progress, Fill::Copy)
}

/// Like [`write_bundle`], into a file from its start, with `manifest_bytes` the
/// signed member (`manifest.to_bytes_padded(reserved)`), and payloads marked in
/// `in_place` already written at their final offsets (the file reaches past them;
/// they are skipped, not copied). A writer that reserved the manifest's length
/// ([`Manifest::reserved_len`]) knows those offsets before it builds the payloads.
pub fn write_bundle_file<R: PayloadSource>(
    out: &mut std::fs::File,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    signatures: &[Signature],
    payloads: &mut [R],
    in_place: &[bool],
    progress: &dyn Progress,
) -> Result<(), Error> {
    if Manifest::parse(manifest_bytes)? != *manifest {
        return Err(Error::InvalidManifest {
            field: "manifest".into(),
            reason: "the member's bytes do not say what the manifest says".into(),
        });
    }
    let mut skip = |f: &mut &mut std::fs::File, n: u64| -> io::Result<()> {
        use std::io::Seek;
        let at = f.stream_position()?;
        if f.metadata()?.len() < at + n {
            return Err(io::Error::other(format!(
                "the file ends before the {n} bytes at offset {at} said to be in place"
            )));
        }
        f.seek(io::SeekFrom::Current(n as i64)).map(|_| ())
    };
    let fill = Fill::Skip {
        in_place,
        skip: &mut skip,
    };
    let head = (manifest_bytes, manifest, signatures);
    write_members(out, head, payloads, progress, fill)?;
    Ok(())
}

/// Manifest, signatures, payloads (copied, or skipped where in place), end of
/// archive. `head`: the manifest member's bytes, the manifest, the signatures.
fn write_members<W: Write, R: PayloadSource>(
    out: W,
    (manifest_bytes, manifest, signatures): (&[u8], &Manifest, &[Signature]),
    payloads: &mut [R],
    progress: &dyn Progress,
    mut fill: Fill<W>,
) -> Result<W, Error> {
    if manifest_bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::ManifestTooLarge {
            size: manifest_bytes.len() as u64,
            max: MAX_MANIFEST_SIZE,
        });
    }
    if payloads.len() != manifest.components.len() {
        return Err(Error::InvalidManifest {
            field: "components".into(),
            reason: format!(
                "{} components but {} payloads given",
                manifest.components.len(),
                payloads.len()
            ),
        });
    }
    let mut ids: Vec<_> = signatures.iter().map(|s| s.key_id).collect();
    ids.sort();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::MalformedSignature {
            member: "signatures/".into(),
            reason: "two signatures by the same key".into(),
        });
    }
    let mtime = manifest.build.source_date_epoch;
    if mtime >= 1 << 33 {
        return Err(Error::InvalidManifest {
            field: "build.source_date_epoch".into(),
            reason: "does not fit a tar header".into(),
        });
    }
    let total: u64 = manifest.components.iter().map(|c| c.stored_size).sum();
    let task = progress.begin("writing bundle", Some(total));
    let mut out = Out { inner: out, pos: 0 };
    out.member(MANIFEST_MEMBER, manifest_bytes, mtime)?;
    for sig in signatures {
        out.member(
            &signature_member(sig.key_id),
            sig.to_file_text().as_bytes(),
            mtime,
        )?;
    }
    for (i, (component, source)) in manifest
        .components
        .iter()
        .zip(payloads.iter_mut())
        .enumerate()
    {
        let name = component.member_name();
        out.header(&name, component.stored_size, mtime)?;
        if let Fill::Skip { in_place, skip } = &mut fill
            && in_place.get(i) == Some(&true)
        {
            skip(&mut out.inner, component.stored_size).map_err(|source| Error::Write {
                what: format!("{name} (in place)"),
                source,
            })?;
            out.pos += component.stored_size;
            task.advance(component.stored_size);
            out.pad(&name)?;
            continue;
        }
        let short = |actual| Error::SizeMismatch {
            component: component.name.clone(),
            part: Part::Stored,
            expected: component.stored_size,
            actual,
        };
        let mut left = component.stored_size;
        while left > 0 {
            let step = left.min(COPY_STEP);
            let n = source
                .copy_to(step, &mut out.inner)
                .map_err(|source| Error::Write {
                    what: format!("{name} (copying its staged payload)"),
                    source,
                })?;
            out.pos += n;
            task.advance(n);
            left -= n;
            if n < step {
                return Err(short(component.stored_size - left));
            }
        }
        let mut one = [0u8; 1];
        if read_some(source, &mut one, &name)? != 0 {
            return Err(short(component.stored_size + 1));
        }
        out.pad(&name)?;
    }
    // End of archive: at least two zero blocks, then zeros to a whole record.
    let end = (out.pos + 2 * tar::BLOCK as u64).div_ceil(tar::RECORD) * tar::RECORD;
    let zeros = vec![0u8; (end - out.pos) as usize];
    out.put(&zeros, "end of archive")?;
    out.inner.flush().map_err(|source| Error::Write {
        what: "bundle".into(),
        source,
    })?;
    Ok(out.inner)
}

fn read_some(r: &mut impl Read, buf: &mut [u8], name: &str) -> Result<usize, Error> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Write {
                    what: format!("{name} (reading its staged payload)"),
                    source,
                });
            }
        }
    }
}
