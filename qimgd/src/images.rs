//! Bundles uploaded to this node's upgrade directory (`PUT /v1/qimg/images/{name}`,
//! `qq upgrade_upload`). The body streams through a verifying reader into an
//! hidden temporary file (`.upload-*`) in the upgrade directory ([`receive`]): the signed head
//! is checked against the node's keys before anything after it is kept, every
//! payload against its digest as it arrives. The file gets its name ([`publish`]:
//! a link, or with `?replace=true` a rename over the old file) only once the whole
//! bundle verified and reached the disk. A refused, broken or abandoned upload
//! leaves nothing; a crash leaves at most a `.upload-*` file, which the next start
//! removes ([`sweep`]) and which no prepare may name ([`crate::paths`]).
//!
//! What an upload may hold is bounded: its size (`upload_limit_mib`), the room
//! in the upgrade directory, [`MAX_UPLOADS`] at once and one per name, and a
//! client that stops sending for `upload_idle_secs` loses its upload.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use qimg::{BundlePin, BundleReader, Manifest, NoProgress, TrustedKeys};
use tokio::sync::mpsc;

/// How many uploads may run at once on a node.
pub const MAX_UPLOADS: usize = 2;
/// What an upload's temporary file's name starts with.
pub const PARTIAL_PREFIX: &str = ".upload-";
/// Room kept free in the upgrade directory beyond an upload.
pub const SPACE_MARGIN: u64 = 64 << 20;
/// The longest bundle name.
pub const NAME_LIMIT: usize = 255;

/// Why an upload is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadProblem {
    /// Not a plain file name.
    #[error(
        "{0:?} is not a bundle name: use letters, digits, '.', '_', '+' and '-', not first a '.', at most 255 bytes"
    )]
    BadName(String),
    /// A file of that name exists and the upload does not replace it.
    #[error("{0} exists in the upgrade directory: add ?replace=true to replace it")]
    Exists(String),
    /// Another upload of that name runs.
    #[error("an upload of {0} is in progress on this node")]
    InProgress(String),
    /// [`MAX_UPLOADS`] run.
    #[error("{MAX_UPLOADS} uploads are in progress on this node: try again when one ended")]
    TooMany,
    /// Over the node's limit.
    #[error(
        "the bundle is larger than this node's upload limit of {limit_mib} MiB (upload_limit_mib)"
    )]
    TooLarge {
        /// The limit.
        limit_mib: u64,
    },
    /// No room.
    #[error(
        "the upgrade directory has {free} bytes free; this upload needs {need} and {SPACE_MARGIN} to spare"
    )]
    NoSpace {
        /// The upload's size.
        need: u64,
        /// Free now.
        free: u64,
    },
    /// The client stopped sending.
    #[error("the client sent nothing for {secs} s after {got} bytes")]
    Idle {
        /// The limit.
        secs: u64,
        /// Bytes received.
        got: u64,
    },
    /// The body could not be read to its end.
    #[error("the upload broke off after {got} bytes: {why}")]
    BrokeOff {
        /// Bytes received.
        got: u64,
        /// What the connection said.
        why: String,
    },
    /// A header or the query is not what the endpoint takes.
    #[error("{0}")]
    Request(String),
    /// What arrived is not a bundle this node accepts (signature, digest,
    /// format).
    #[error("what came is not a bundle this node accepts")]
    Bundle(#[source] qimg::Error),
    /// The file system failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> UploadProblem + 'a {
    move |source| UploadProblem::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// `name` if it is a plain file name for the upgrade directory.
pub fn check_name(name: &str) -> Result<&str, UploadProblem> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LIMIT
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(name)
    } else {
        Err(UploadProblem::BadName(name.into()))
    }
}

/// Whether the query asks to replace (`replace=true`; nothing else is taken).
pub fn replace_of(query: Option<&str>) -> Result<bool, UploadProblem> {
    match query.unwrap_or("") {
        "" | "replace=false" => Ok(false),
        "replace=true" => Ok(true),
        q => Err(UploadProblem::Request(format!(
            "the query {q:?} is not understood: the only parameter is replace=true or replace=false"
        ))),
    }
}

/// The uploads running on this node, by name.
#[derive(Debug, Default)]
pub struct Uploads(Mutex<BTreeSet<String>>);

/// One running upload's place, given back when dropped.
#[derive(Debug)]
pub struct UploadSlot<'a> {
    uploads: &'a Uploads,
    name: String,
}

impl Uploads {
    /// Takes a place for an upload of `name`.
    pub fn begin(&self, name: &str) -> Result<UploadSlot<'_>, UploadProblem> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.contains(name) {
            return Err(UploadProblem::InProgress(name.into()));
        }
        if s.len() >= MAX_UPLOADS {
            return Err(UploadProblem::TooMany);
        }
        s.insert(name.into());
        Ok(UploadSlot {
            uploads: self,
            name: name.into(),
        })
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        self.uploads
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// Makes the upgrade directory if it is not there: on a fresh node nobody has
/// copied anything yet, and the first upload or fetch is what needs it.
pub fn make_dir(dir: &Path) -> Result<(), UploadProblem> {
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))
}

/// Refuses an upload of `need` bytes that would not leave [`SPACE_MARGIN`]
/// free in `dir`.
pub fn room(dir: &Path, need: u64) -> Result<(), UploadProblem> {
    let free = qutil::fs::free_bytes(dir).map_err(io_err("looking at the free space of", dir))?;
    if need.saturating_add(SPACE_MARGIN) > free {
        return Err(UploadProblem::NoSpace { need, free });
    }
    Ok(())
}

/// A verified upload, still without its name.
#[derive(Debug)]
pub struct Received {
    /// The temporary file (removed if dropped).
    file: tempfile::NamedTempFile,
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// What identifies it.
    pub pin: BundlePin,
}

/// The body's chunks as one stream of bytes, each chunk kept in `file` as it
/// is read.
struct Tee {
    rx: mpsc::Receiver<axum::body::Bytes>,
    chunk: axum::body::Bytes,
    file: BufWriter<std::fs::File>,
    got: u64,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (rx, file, got) = (&mut self.rx, &mut self.file, &mut self.got);
        read_chunked(&mut self.chunk, buf, || {
            let Some(c) = rx.blocking_recv() else {
                return Ok(None);
            };
            file.write_all(&c)?;
            *got += c.len() as u64;
            Ok(Some(c))
        })
    }
}

/// One `read` of a stream that comes in chunks: from what is left of `chunk`,
/// else from the next chunk `next` gives (`None`: the stream ended).
pub(crate) fn read_chunked(
    chunk: &mut axum::body::Bytes,
    buf: &mut [u8],
    mut next: impl FnMut() -> std::io::Result<Option<axum::body::Bytes>>,
) -> std::io::Result<usize> {
    while chunk.is_empty() {
        match next()? {
            Some(c) => *chunk = c,
            None => return Ok(0),
        }
    }
    let n = buf.len().min(chunk.len());
    buf[..n].copy_from_slice(&chunk.split_to(n));
    Ok(n)
}

/// Receives an upload on a blocking thread: the chunks from `rx`, until the
/// sender goes, into a temporary file in `dir`, verified against `keys` as they
/// pass (the head before anything after it is read, then every payload). The
/// file reached the disk when this returns.
pub fn receive(
    dir: &Path,
    keys: &TrustedKeys,
    rx: mpsc::Receiver<axum::body::Bytes>,
) -> Result<Received, UploadProblem> {
    let file = tempfile::Builder::new()
        .prefix(PARTIAL_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    let path = file.path().to_owned();
    let handle = file
        .as_file()
        .try_clone()
        .map_err(io_err("opening", &path))?;
    let mut tee = Tee {
        rx,
        chunk: axum::body::Bytes::new(),
        file: BufWriter::with_capacity(1 << 20, handle),
        got: 0,
    };
    let (manifest, manifest_bytes) = {
        let (mut reader, _) =
            BundleReader::open_verified(&mut tee, keys).map_err(UploadProblem::Bundle)?;
        for _ in 0..reader.manifest().components.len() {
            reader
                .next_component(std::io::sink(), &NoProgress)
                .map_err(UploadProblem::Bundle)?;
        }
        let kept = (reader.manifest().clone(), reader.manifest_bytes().to_vec());
        reader.finish(&NoProgress).map_err(UploadProblem::Bundle)?;
        kept
    };
    // The reader's finish read to the body's end: nothing may follow the bundle.
    let got = tee.got;
    tee.file
        .into_inner()
        .map_err(|e| io_err("writing", &path)(e.into_error()))?
        .sync_all()
        .map_err(io_err("syncing", &path))?;
    Ok(Received {
        file,
        manifest,
        pin: BundlePin::of(&manifest_bytes, got),
    })
}

/// Gives a received bundle its name `name` in `dir`: a new name, or with
/// `replace` over the file of that name. Returns whether it replaced one.
pub fn publish(
    received: Received,
    dir: &Path,
    name: &str,
    replace: bool,
) -> Result<bool, UploadProblem> {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    let file = received.file;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("setting the mode of", file.path()))?;
    let existed = to.symlink_metadata().is_ok();
    if replace {
        file.persist(&to)
            .map_err(|e| io_err("naming", &to)(e.error))?;
    } else {
        file.persist_noclobber(&to).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                UploadProblem::Exists(name.into())
            } else {
                io_err("naming", &to)(e.error)
            }
        })?;
    }
    qutil::fs::sync_dir(dir).map_err(io_err("syncing", dir))?;
    Ok(replace && existed)
}

/// How many bundles a node serves to other nodes at once.
pub const MAX_SERVES: usize = 4;
/// The pieces a served bundle is read and sent in.
pub const SERVE_CHUNK: usize = 256 << 10;

/// Where a bundle served to another node starts: `Range: bytes=N-` (the one
/// form taken: a fetch resumes where it broke off) against the file's length.
/// `Ok(None)`: the whole file (no range, or a form not taken, which a server
/// may ignore); `Err`: a start at or past the end (416).
pub fn range_from(header: Option<&str>, len: u64) -> Result<Option<u64>, Unsatisfiable> {
    let Some(from) = header
        .and_then(|h| h.trim().strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return Ok(None);
    };
    match from {
        0 => Ok(None),
        f if f >= len => Err(Unsatisfiable),
        f => Ok(Some(f)),
    }
}

/// A range that starts at or past the file's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The node's rate for serving bundles to other nodes, shared by every stream
/// it serves, so that fetching peers cannot take the node's bandwidth from its
/// clients (`peer_serve_mib_per_s`; 0: not limited).
#[derive(Debug)]
pub struct Pacer {
    bytes_per_s: u64,
    next: Mutex<std::time::Instant>,
}

impl Pacer {
    /// A pacer of `mib_per_s` MiB/s.
    pub fn new(mib_per_s: u64) -> Pacer {
        Pacer {
            bytes_per_s: mib_per_s.saturating_mul(1 << 20),
            next: Mutex::new(std::time::Instant::now()),
        }
    }

    /// Reserves `n` bytes of the rate: how long to wait before sending them.
    pub fn reserve(&self, n: usize) -> std::time::Duration {
        if self.bytes_per_s == 0 {
            return std::time::Duration::ZERO;
        }
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let start = (*next).max(now);
        *next = start + std::time::Duration::from_secs_f64(n as f64 / self.bytes_per_s as f64);
        start - now
    }
}

/// Reads `file` from `from` in [`SERVE_CHUNK`] pieces into `tx`, at the
/// `pacer`'s rate, until the end or until the receiver goes (the peer left).
/// Runs on a blocking thread.
pub fn serve_file(
    mut file: std::fs::File,
    from: u64,
    pacer: &Pacer,
    tx: mpsc::Sender<std::io::Result<axum::body::Bytes>>,
) {
    use std::io::Seek;
    if let Err(e) = file.seek(std::io::SeekFrom::Start(from)) {
        let _ = tx.blocking_send(Err(e));
        return;
    }
    loop {
        let mut buf = vec![0u8; SERVE_CHUNK];
        let n = match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        buf.truncate(n);
        std::thread::sleep(pacer.reserve(n));
        if tx.blocking_send(Ok(buf.into())).is_err() {
            return;
        }
    }
}

/// The items a channel receives, as a stream (a response body's).
pub struct ChannelStream<T>(pub mpsc::Receiver<T>);

impl<T> futures_core::Stream for ChannelStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Removes what uploads cut by a crash left in `dir`; returns how many.
pub fn sweep(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["a.qimg", "7.1.0+build_2-x.qimg", "A"] {
            assert_eq!(check_name(ok).unwrap(), ok);
        }
        let long = "a".repeat(NAME_LIMIT + 1);
        for bad in [
            "",
            ".",
            "..",
            ".upload-x",
            ".hidden",
            "a/b",
            "a b",
            "a\0b",
            "é.qimg",
            long.as_str(),
        ] {
            assert!(
                matches!(check_name(bad), Err(UploadProblem::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_query_says_replace_or_nothing() {
        assert!(!replace_of(None).unwrap());
        assert!(!replace_of(Some("")).unwrap());
        assert!(!replace_of(Some("replace=false")).unwrap());
        assert!(replace_of(Some("replace=true")).unwrap());
        for bad in ["replace=1", "replace=true&x=1", "force=true"] {
            assert!(matches!(
                replace_of(Some(bad)),
                Err(UploadProblem::Request(_))
            ));
        }
    }

    #[test]
    fn uploads_are_bounded_and_one_per_name() {
        let u = Uploads::default();
        let a = u.begin("a").unwrap();
        assert!(matches!(u.begin("a"), Err(UploadProblem::InProgress(n)) if n == "a"));
        let _b = u.begin("b").unwrap();
        assert!(matches!(u.begin("c"), Err(UploadProblem::TooMany)));
        drop(a);
        let _a = u.begin("a").unwrap();
    }

    #[test]
    fn a_range_resumes_or_is_ignored_or_unsatisfiable() {
        let len = 100;
        type Row<'a> = (Option<&'a str>, Result<Option<u64>, Unsatisfiable>);
        let table: &[Row] = &[
            (None, Ok(None)),
            (Some("bytes=0-"), Ok(None)),
            (Some("bytes=40-"), Ok(Some(40))),
            (Some(" bytes=99-"), Ok(Some(99))),
            (Some("bytes=100-"), Err(Unsatisfiable)),
            (Some("bytes=500-"), Err(Unsatisfiable)),
            // Forms not taken: the whole file.
            (Some("bytes=0-10"), Ok(None)),
            (Some("bytes=-10"), Ok(None)),
            (Some("bytes=1-,5-"), Ok(None)),
            (Some("items=5-"), Ok(None)),
            (Some("bytes=x-"), Ok(None)),
        ];
        for (h, want) in table {
            assert_eq!(range_from(*h, len), *want, "{h:?}");
        }
    }

    #[test]
    fn the_pacer_spreads_bytes_over_time_for_every_stream() {
        let p = Pacer::new(1);
        assert_eq!(p.reserve(1 << 20), std::time::Duration::ZERO);
        // The next MiB, from any stream, waits for the first one's second.
        let w = p.reserve(1 << 20);
        assert!(w > std::time::Duration::from_millis(900), "{w:?}");
        let w2 = p.reserve(512 << 10);
        assert!(w2 > std::time::Duration::from_millis(1900), "{w2:?}");
        assert_eq!(Pacer::new(0).reserve(1 << 30), std::time::Duration::ZERO);
    }

    #[test]
    fn a_sweep_removes_only_cut_uploads() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".upload-x1"), b"half").unwrap();
        std::fs::write(d.path().join("kept.qimg"), b"whole").unwrap();
        assert_eq!(sweep(d.path()), 1);
        assert!(!d.path().join(".upload-x1").exists());
        assert!(d.path().join("kept.qimg").exists());
        assert_eq!(sweep(&d.path().join("none")), 0);
    }

    #[test]
    fn no_room_is_refused_with_the_numbers() {
        let d = tempfile::tempdir().unwrap();
        assert!(room(d.path(), 1).is_ok());
        let e = room(d.path(), u64::MAX / 2).unwrap_err();
        assert!(matches!(e, UploadProblem::NoSpace { need, .. } if need == u64::MAX / 2));
    }
}
