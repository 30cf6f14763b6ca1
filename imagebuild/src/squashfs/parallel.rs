//! Compressing squashfs data blocks on every core while backhand writes the image on
//! one thread.
//!
//! backhand compresses each data block through a [`CompressionAction`] on its
//! writing thread. It takes files in `Path` order and, for a file of at least one
//! block, compresses every chunk in turn (the partial last one too); all-zero chunks
//! become holes and files smaller than a block go to fragments. A prefetcher reads
//! the files in that same order and has a pool of workers compress those chunks
//! ahead of time. [`Dispatch::compress`] hands out a precompressed block only when
//! its input bytes are identical to the bytes backhand asks for; anything else
//! (fragments, a changed file, a wrong guess of the order) is compressed inline.
//! The output is therefore byte-identical to single-threaded compression whatever
//! happens; a misprediction only costs speed.

use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::{BackhandError, FilesystemCompressor, SuperBlock};

use crate::Cancel;

/// Blocks compressed ahead of the writer, at most.
const AHEAD: usize = 64;

type Compressed = Result<Vec<u8>, BackhandError>;

/// A block the prefetcher expects backhand to compress next.
struct Job {
    input: Arc<Vec<u8>>,
    result: Receiver<Compressed>,
}

/// The writer thread's end of the pipeline.
struct Consumer {
    jobs: Receiver<Job>,
    front: Option<Job>,
    hits: u64,
    misses: u64,
}

thread_local! {
    static ACTIVE: RefCell<Option<Consumer>> = const { RefCell::new(None) };
}

/// The compressor backhand calls; see the module docs.
pub struct Dispatch;

/// The one instance backhand's `Kind` refers to.
pub static DISPATCH: Dispatch = Dispatch;

impl CompressionAction for Dispatch {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        c: Compressor,
    ) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, c)
    }

    fn compress(&self, bytes: &[u8], fc: FilesystemCompressor, block_size: u32) -> Compressed {
        let ready = ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            let c = a.as_mut()?;
            if c.front.is_none() {
                c.front = c.jobs.recv().ok();
            }
            if c.front
                .as_ref()
                .is_some_and(|j| j.input.as_slice() == bytes)
            {
                c.hits += 1;
                let job = c.front.take().expect("checked");
                return job.result.recv().ok();
            }
            c.misses += 1;
            None
        });
        match ready {
            Some(result) => result,
            None => DefaultCompressor.compress(bytes, fc, block_size),
        }
    }

    fn compression_options(
        &self,
        superblock: &mut SuperBlock,
        kind: &backhand::kind::Kind,
        fc: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        DefaultCompressor.compression_options(superblock, kind, fc)
    }
}

/// Hit and miss counts of one image build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks served precompressed.
    pub hits: u64,
    /// Compressions done inline (fragments, mispredictions).
    pub misses: u64,
}

/// Runs `write` (backhand's `FilesystemWriter::write`) on this thread with
/// `workers` threads compressing the data blocks of `files` ahead of it. `files`
/// must be the regular files in the order backhand writes them.
pub fn run<T>(
    files: Vec<PathBuf>,
    fc: FilesystemCompressor,
    block_size: u32,
    workers: usize,
    cancel: &Cancel,
    write: impl FnOnce() -> T,
) -> (T, Stats) {
    let (job_tx, job_rx) = sync_channel::<Job>(AHEAD);
    let (work_tx, work_rx) = sync_channel::<(Arc<Vec<u8>>, SyncSender<Compressed>)>(AHEAD);
    let work_rx = Mutex::new(work_rx);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            let work_rx = &work_rx;
            s.spawn(move || {
                loop {
                    let next = work_rx.lock().expect("work queue").recv();
                    let Ok((input, reply)) = next else { break };
                    let _ = reply.send(DefaultCompressor.compress(&input, fc, block_size));
                }
            });
        }
        s.spawn(move || prefetch(files, block_size as usize, job_tx, work_tx, cancel));
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Consumer {
                jobs: job_rx,
                front: None,
                hits: 0,
                misses: 0,
            })
        });
        let out = write();
        let consumer = ACTIVE
            .with(|a| a.borrow_mut().take())
            .expect("installed above");
        let stats = Stats {
            hits: consumer.hits,
            misses: consumer.misses,
        };
        // Dropping the consumer closes the job channel, which stops the prefetcher,
        // which closes the work channel, which stops the workers.
        drop(consumer);
        (out, stats)
    })
}

/// Reads files in backhand's order and queues their data blocks for compression.
fn prefetch(
    files: Vec<PathBuf>,
    block: usize,
    jobs: SyncSender<Job>,
    work: SyncSender<(Arc<Vec<u8>>, SyncSender<Compressed>)>,
    cancel: &Cancel,
) {
    for path in files {
        if cancel.is_cancelled() {
            return;
        }
        let Ok(mut f) = File::open(&path) else {
            // backhand will report the error when it opens the file.
            continue;
        };
        let mut first = true;
        loop {
            let mut buf = vec![0u8; block];
            let n = read_full(&mut f, &mut buf);
            if n == 0 || (first && n < block) {
                break; // end of file, or a file smaller than a block (a fragment)
            }
            first = false;
            buf.truncate(n);
            if buf.iter().all(|&b| b == 0) {
                continue; // a hole: backhand does not compress it
            }
            let input = Arc::new(buf);
            let (reply_tx, reply_rx) = sync_channel(1);
            if work.send((Arc::clone(&input), reply_tx)).is_err() {
                return;
            }
            // The channel bound keeps the prefetcher at most AHEAD blocks ahead.
            let job = Job {
                input,
                result: reply_rx,
            };
            if jobs.send(job).is_err() {
                return;
            }
            if n < block {
                break;
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; like backhand's chunk reader.
fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}
