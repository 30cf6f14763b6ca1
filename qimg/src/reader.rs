//! Reading a bundle front to back in one pass, in bounded memory.
//!
//! [`BundleReader::open_verified`] checks the signatures over the raw manifest bytes
//! before it parses them; [`BundleReader::next_component`] streams each payload to a
//! sink while checking its stored and content digests; [`BundleReader::finish`]
//! checks the end of the archive.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::manifest::{
    Component, Compression, MANIFEST_MEMBER, MAX_MANIFEST_SIZE, Manifest, Sha256 as Digest256,
};
use crate::payload::MAX_WINDOW_LOG;
use crate::sign::{KeyId, Signature, TrustedKeys, signature_member};
use crate::tar::{self, Header};
use crate::{Error, Part, Progress, Task};

/// Largest signature member a reader accepts.
pub const MAX_SIGNATURE_SIZE: u64 = 4096;
/// Size of the chunks payloads are read in; a reader holds a few of them at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reading and the decompressing thread.
const IN_FLIGHT: usize = 3;

struct Src<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Src<R> {
    /// Fills `buf` completely, or reports truncation at the offset where data ran out.
    fn fill(&mut self, buf: &mut [u8], expected: &str) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::Truncated {
                        offset: self.pos,
                        expected: expected.to_owned(),
                    });
                }
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        offset: self.pos,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads the next header; `None` at the first all-zero block (end of archive).
    fn header(&mut self) -> Result<Option<(u64, Header)>, Error> {
        let offset = self.pos;
        let mut block = [0u8; tar::BLOCK];
        self.fill(&mut block, "a tar header")?;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let h = Header::decode(&block).map_err(|e| Error::BadHeader {
            offset,
            reason: e.to_string(),
        })?;
        tar::check_member_name(&h.name).map_err(|reason| Error::UnsafeMemberName {
            offset,
            name: h.name.clone(),
            reason,
        })?;
        Ok(Some((offset, h)))
    }

    fn padding(&mut self, after: &str) -> Result<(), Error> {
        let n = tar::padding(self.pos) as usize;
        let at = self.pos;
        let mut buf = [0u8; tar::BLOCK];
        self.fill(&mut buf[..n], &format!("padding after {after}"))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Error::NonZeroPadding { offset: at });
        }
        Ok(())
    }

    fn small_member(&mut self, h: &Header, max: u64) -> Result<Vec<u8>, Error> {
        if h.size > max {
            return Err(if h.name == MANIFEST_MEMBER {
                Error::ManifestTooLarge { size: h.size, max }
            } else {
                Error::MalformedSignature {
                    member: h.name.clone(),
                    reason: format!("{} bytes, more than {max}", h.size),
                }
            });
        }
        let mut data = vec![0u8; h.size as usize];
        self.fill(&mut data, &h.name)?;
        self.padding(&h.name)?;
        Ok(data)
    }

    /// After the first zero block: one more zero block, zeros to a whole record, then EOF.
    fn end_of_archive(&mut self, first_zero_at: u64) -> Result<(), Error> {
        let end = (first_zero_at + 2 * tar::BLOCK as u64).div_ceil(tar::RECORD) * tar::RECORD;
        let mut block = [0u8; tar::BLOCK];
        while self.pos < end {
            let at = self.pos;
            self.fill(&mut block, "end-of-archive zero blocks")?;
            if block.iter().any(|&b| b != 0) {
                return Err(Error::TrailingData { offset: at });
            }
        }
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(Error::TrailingData { offset: self.pos }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        offset: self.pos,
                        source,
                    });
                }
            }
        }
    }
}

/// The signatures of a bundle, in archive order.
pub type Signatures = Vec<Signature>;

/// A bundle being read.
pub struct BundleReader<R: Read> {
    src: Src<R>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signatures: Signatures,
    pending: Option<Option<(u64, Header)>>,
    next: usize,
    seen: HashSet<String>,
    finished: bool,
}

struct Head<R> {
    src: Src<R>,
    manifest_bytes: Vec<u8>,
    signatures: Signatures,
    pending: Option<(u64, Header)>,
    seen: HashSet<String>,
}

fn read_head<R: Read>(r: R) -> Result<Head<R>, Error> {
    let mut src = Src { inner: r, pos: 0 };
    let (offset, h) = match src.header()? {
        Some(x) => x,
        None => {
            return Err(Error::MissingMember {
                offset: 0,
                name: MANIFEST_MEMBER.into(),
            });
        }
    };
    if h.name != MANIFEST_MEMBER {
        return Err(Error::UnexpectedMember {
            offset,
            found: h.name,
            expected: format!("{MANIFEST_MEMBER:?} first"),
        });
    }
    let manifest_bytes = src.small_member(&h, MAX_MANIFEST_SIZE)?;
    let mut seen = HashSet::from([h.name]);
    let mut signatures = Vec::new();
    let pending = loop {
        match src.header()? {
            Some((offset, h)) if h.name.starts_with("signatures/") => {
                if !seen.insert(h.name.clone()) {
                    return Err(Error::DuplicateMember {
                        offset,
                        name: h.name,
                    });
                }
                let data = src.small_member(&h, MAX_SIGNATURE_SIZE)?;
                let malformed = |reason: String| Error::MalformedSignature {
                    member: h.name.clone(),
                    reason,
                };
                let text = String::from_utf8(data).map_err(|_| malformed("not UTF-8".into()))?;
                let sig = Signature::from_file_text(&text).map_err(|e| malformed(e.0))?;
                if signature_member(sig.key_id) != h.name {
                    return Err(malformed(format!(
                        "holds a signature by key {}, not the key its name says",
                        sig.key_id
                    )));
                }
                signatures.push(sig);
            }
            Some((offset, h)) if h.name == MANIFEST_MEMBER => {
                return Err(Error::DuplicateMember {
                    offset,
                    name: h.name,
                });
            }
            other => break other,
        }
    };
    Ok(Head {
        src,
        manifest_bytes,
        signatures,
        pending,
        seen,
    })
}

/// Result of streaming one component.
#[derive(Clone, Debug)]
pub struct ComponentCheck {
    /// The component, as the manifest describes it.
    pub component: Component,
    /// Offset of its member's data in the bundle.
    pub offset: u64,
}

impl<R: Read> BundleReader<R> {
    /// Reads the manifest and signatures without checking the signatures (for
    /// inspection). Payloads read from such a reader are checked against the
    /// manifest, but the manifest itself is not trusted.
    pub fn open(r: R) -> Result<Self, Error> {
        let head = read_head(r)?;
        let manifest = Manifest::parse(&head.manifest_bytes)?;
        Ok(Self::from_head(head, manifest))
    }

    /// Reads the manifest and signatures, checks the signatures against `keys` over
    /// the exact manifest bytes, and only then parses the manifest. Returns the
    /// reader and the ids of the trusted keys whose signatures verified.
    pub fn open_verified(r: R, keys: &TrustedKeys) -> Result<(Self, Vec<KeyId>), Error> {
        let head = read_head(r)?;
        let good = keys.verify(&head.manifest_bytes, &head.signatures)?;
        let manifest = Manifest::parse(&head.manifest_bytes)?;
        Ok((Self::from_head(head, manifest), good))
    }

    fn from_head(head: Head<R>, manifest: Manifest) -> Self {
        BundleReader {
            src: head.src,
            manifest,
            manifest_bytes: head.manifest_bytes,
            signatures: head.signatures,
            pending: Some(head.pending),
            next: 0,
            seen: head.seen,
            finished: false,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact manifest bytes the signatures cover.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The signatures, in archive order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.src.pos
    }

    fn next_header(&mut self) -> Result<Option<(u64, Header)>, Error> {
        match self.pending.take() {
            Some(h) => Ok(h),
            None => self.src.header(),
        }
    }

    /// Classifies a member that is not the expected one.
    fn unexpected(&self, offset: u64, name: String, expected: Option<&Component>) -> Error {
        if self.seen.contains(&name) {
            return Error::DuplicateMember { offset, name };
        }
        let listed = self
            .manifest
            .components
            .iter()
            .any(|c| c.member_name() == name);
        match expected {
            Some(c) if listed => Error::UnexpectedMember {
                offset,
                found: name,
                expected: format!("{:?} (manifest order)", c.member_name()),
            },
            Some(_) if name.starts_with("signatures/") => Error::UnexpectedMember {
                offset,
                found: name,
                expected: "signatures right after the manifest".into(),
            },
            _ => Error::MemberNotInManifest { offset, name },
        }
    }

    /// Streams the next component's content into `sink`, checking its stored size and
    /// digest and its content size and digest. Returns `None` once every component
    /// has been read and the end of the archive checked.
    ///
    /// The content is only known good when this returns `Ok`: a caller writing it
    /// somewhere must not use what it wrote after an error.
    pub fn next_component<W: Write + Send>(
        &mut self,
        sink: W,
        progress: &dyn Progress,
    ) -> Result<Option<ComponentCheck>, Error> {
        if self.finished {
            return Ok(None);
        }
        let header = self.next_header()?;
        let expected = self.manifest.components.get(self.next).cloned();
        let (_, h) = match (header, &expected) {
            (None, Some(c)) => {
                return Err(Error::MissingMember {
                    offset: self.src.pos - tar::BLOCK as u64,
                    name: c.member_name(),
                });
            }
            (None, None) => {
                let at = self.src.pos - tar::BLOCK as u64;
                self.src.end_of_archive(at)?;
                self.finished = true;
                return Ok(None);
            }
            (Some((offset, h)), None) => return Err(self.unexpected(offset, h.name, None)),
            (Some((offset, h)), Some(c)) if h.name != c.member_name() => {
                return Err(self.unexpected(offset, h.name, Some(c)));
            }
            (Some(x), Some(_)) => x,
        };
        let c = expected.expect("matched above");
        self.seen.insert(h.name.clone());
        if h.size != c.stored_size {
            return Err(Error::SizeMismatch {
                component: c.name.clone(),
                part: Part::Stored,
                expected: c.stored_size,
                actual: h.size,
            });
        }
        let data_offset = self.src.pos;
        let task = progress.begin(&c.name, Some(c.stored_size));
        match c.compression {
            Compression::None => self.copy_plain(&c, sink, task.as_ref())?,
            Compression::Zstd => self.copy_zstd(&c, sink, task.as_ref())?,
        }
        self.src.padding(&h.name)?;
        self.next += 1;
        Ok(Some(ComponentCheck {
            component: c,
            offset: data_offset,
        }))
    }

    fn copy_plain<W: Write>(
        &mut self,
        c: &Component,
        mut sink: W,
        progress: &dyn Task,
    ) -> Result<(), Error> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = c.stored_size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            self.src.fill(&mut buf[..n], &c.member_name())?;
            hasher.update(&buf[..n]);
            sink.write_all(&buf[..n])
                .map_err(|source| sink_err(c, source))?;
            left -= n as u64;
            progress.advance(n as u64);
        }
        check_hash(c, Part::Stored, &c.stored_sha256, hasher)?;
        sink.flush().map_err(|source| sink_err(c, source))
    }

    /// Reads and hashes the stored bytes on this thread while a second thread
    /// decompresses, hashes and writes the content. A tampered member is reported as
    /// a stored-digest mismatch even when its corruption also breaks decompression.
    fn copy_zstd<W: Write + Send>(
        &mut self,
        c: &Component,
        sink: W,
        progress: &dyn Task,
    ) -> Result<(), Error> {
        let (to_worker, from_reader) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (give_back, recycled) = mpsc::channel::<Vec<u8>>();
        let member = c.member_name();
        let (stored, content) = std::thread::scope(|s| {
            let worker =
                s.spawn(move || decompress(c, ChannelReader::new(from_reader, give_back), sink));
            let mut hasher = Sha256::new();
            let mut left = c.stored_size;
            let mut result = Ok(());
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                let mut buf = recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                buf.resize(n, 0);
                if let Err(e) = self.src.fill(&mut buf, &member) {
                    result = Err(e);
                    break;
                }
                hasher.update(&buf);
                left -= n as u64;
                progress.advance(n as u64);
                // The worker may have stopped on an error; keep hashing regardless.
                let _ = to_worker.send(buf);
            }
            drop(to_worker);
            let content = worker.join().expect("decompression thread panicked");
            (result.map(|()| hasher), content)
        });
        let stored = stored?;
        check_hash(c, Part::Stored, &c.stored_sha256, stored)?;
        let (size, hasher) = content?;
        if size != c.size {
            return Err(Error::SizeMismatch {
                component: c.name.clone(),
                part: Part::Content,
                expected: c.size,
                actual: size,
            });
        }
        check_hash(c, Part::Content, &c.sha256, hasher)
    }
}

impl<R: Read> BundleReader<R> {
    /// Reads every remaining component (discarding content after checking it) and the
    /// end of the archive.
    pub fn finish(mut self, progress: &dyn Progress) -> Result<Vec<ComponentCheck>, Error> {
        let mut out = Vec::new();
        while let Some(c) = self.next_component(io::sink(), progress)? {
            out.push(c);
        }
        Ok(out)
    }
}

fn sink_err(c: &Component, source: io::Error) -> Error {
    Error::Write {
        what: format!("content of component {:?}", c.name),
        source,
    }
}

fn check_hash(
    c: &Component,
    part: Part,
    expected: &Digest256,
    hasher: Sha256,
) -> Result<(), Error> {
    let actual = Digest256(hasher.finalize().into());
    if &actual != expected {
        return Err(Error::HashMismatch {
            component: c.name.clone(),
            part,
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Decompresses with a bounded window, stopping as soon as the output exceeds the
/// manifest's size.
fn decompress<W: Write>(
    c: &Component,
    input: ChannelReader,
    mut sink: W,
) -> Result<(u64, Sha256), Error> {
    let corrupt = |source| Error::Decompress {
        component: c.name.clone(),
        source,
    };
    let mut dec = zstd::stream::read::Decoder::new(input).map_err(corrupt)?;
    dec.window_log_max(MAX_WINDOW_LOG).map_err(corrupt)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        size += n as u64;
        if size > c.size {
            return Err(Error::DecompressionBomb {
                component: c.name.clone(),
                limit: c.size,
            });
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])
            .map_err(|source| sink_err(c, source))?;
    }
    sink.flush().map_err(|source| sink_err(c, source))?;
    Ok((size, hasher))
}

/// `Read` over chunks arriving on a channel; used buffers go back for reuse.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    back: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>, back: mpsc::Sender<Vec<u8>>) -> Self {
        ChannelReader {
            rx,
            back,
            cur: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    let _ = self.back.send(old);
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.at);
        buf[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
