//! A member that lacks the bundle its cluster's plan pins fetches it from
//! another node (`GET /v1/qimg/peer/images/{name}`, mutual TLS with the
//! cluster's node certificates), and prepares from the bytes as they arrive
//! ([`Arriving`]: the engine verifies them as from a file and makes nothing
//! bootable before the last digest). What arrives also goes through
//! the same verifying receiver as an upload (`crate::images::receive`): the
//! signed head against this node's keys, every payload against its digest,
//! then the whole file against the plan's pin. Nothing is trusted because of
//! where it came from. A dropped connection resumes where it broke off (a
//! range), on the same node or the next; every node is asked in turn, each
//! again and again (pauses doubling to [`RETRY_PAUSE_MAX`]) until it has sent
//! nothing for [`PEER_PATIENCE`] (an agent restarting comes back well within
//! it), all within [`FETCH_LIMIT`].

use std::path::Path;
use std::time::{Duration, Instant};

use qcluster::NodeSpec;
use qcluster::create::NodeDir;
use qimg::{BundlePin, TrustedKeys};
use tokio::sync::mpsc;

use crate::images::{self, UploadProblem};

/// How long a fetch may take in all.
pub const FETCH_LIMIT: Duration = Duration::from_secs(3600);
/// How long one node may send nothing (refusing connections, its agent
/// restarting, a broken answer each time) before the next node is asked.
pub const PEER_PATIENCE: Duration = Duration::from_secs(30);
/// The first pause before asking again after a broken connection; it doubles.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between two tries of one node.
pub const RETRY_PAUSE_MAX: Duration = Duration::from_secs(4);
/// How long one read from a peer may take.
pub const READ_LIMIT: Duration = Duration::from_secs(30);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchProblem {
    /// The cluster path names a file below a directory: only files at the top
    /// of the upgrade directory are fetched.
    #[error(
        "{0} is not a bundle name a node serves (only files at the top of the upgrade directory are fetched)"
    )]
    Name(String),
    /// A node alone, or without its cluster directory: nobody to ask.
    #[error("this node has no other node to fetch it from")]
    NoPeers,
    /// This node's trusted keys cannot be read.
    #[error("this node's trusted keys")]
    Keys(#[source] upgrade::Error),
    /// No other node has it (what each said).
    #[error("no other node has it ({0})")]
    NoHolder(String),
    /// No node had it, or every try broke.
    #[error("no node served it ({0})")]
    NotServed(String),
    /// What arrived did not verify, or is not the pinned bundle.
    #[error("what a peer sent was refused")]
    Refused(#[source] UploadProblem),
    /// It verified but is another bundle than the plan's.
    #[error("a peer sent another bundle: {found}, the plan pins {pinned}")]
    NotPinned {
        /// What came.
        found: BundlePin,
        /// What the plan pins.
        pinned: BundlePin,
    },
}

/// What a fetch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The file is this fetch's (`false`: it appeared meanwhile, from another
    /// fetch or a copy, and was kept).
    pub new: bool,
    /// Where each broken-off stream was taken up again (a range request), in
    /// bytes from the start, in order.
    pub resumed_at: Vec<u64>,
}

/// The other nodes' agents, `me` left out, in the order they are asked.
pub fn peers(spec_nodes: &[NodeSpec], me: u32) -> Vec<&NodeSpec> {
    spec_nodes.iter().filter(|n| n.id != me).collect()
}

/// The bundle's bytes as a fetch receives them, for a prepare that reads them
/// while they arrive ([`fetch`]'s `tee`): the end of the stream is the end of
/// the fetch's sending (all of it, or where it gave up).
pub struct Arriving {
    rx: std::sync::mpsc::Receiver<axum::body::Bytes>,
    chunk: axum::body::Bytes,
}

/// How many chunks a fetch may be ahead of the prepare reading them.
const ARRIVING_CHUNKS: usize = 64;

/// A tee for [`fetch`] and the reader of what goes through it.
pub fn arriving() -> (std::sync::mpsc::SyncSender<axum::body::Bytes>, Arriving) {
    let (tx, rx) = std::sync::mpsc::sync_channel(ARRIVING_CHUNKS);
    (
        tx,
        Arriving {
            rx,
            chunk: axum::body::Bytes::new(),
        },
    )
}

impl std::io::Read for Arriving {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rx = &self.rx;
        images::read_chunked(&mut self.chunk, buf, || Ok(rx.recv().ok()))
    }
}

/// Fetches `name` (a file at the top of the upgrade directory `dir`) from one
/// of `peers`, verified against `keys` and `pin`, into `dir`. Blocking. Every
/// byte, in order and once, also goes to `tee` while its reader reads (a
/// prepare that stopped reading does not stop the fetch).
pub fn fetch(
    name: &str,
    dir: &Path,
    pin: &BundlePin,
    keys: &TrustedKeys,
    node_dir: &NodeDir,
    peers: &[&NodeSpec],
    tee: Option<std::sync::mpsc::SyncSender<axum::body::Bytes>>,
) -> Result<Fetched, FetchProblem> {
    let name = images::check_name(name).map_err(|_| FetchProblem::Name(name.into()))?;
    if peers.is_empty() {
        return Err(FetchProblem::NoPeers);
    }
    images::make_dir(dir).map_err(FetchProblem::Refused)?;
    let (tx, rx) = mpsc::channel(16);
    let mut resumed_at = vec![];
    let (fed, received) = std::thread::scope(|s| {
        let receiving = s.spawn(|| images::receive(dir, keys, rx));
        let fed = feed(name, pin, node_dir, peers, (tx, tee), &mut resumed_at);
        (
            fed,
            receiving.join().expect("the receiving thread panicked"),
        )
    });
    fed?;
    let received = received.map_err(FetchProblem::Refused)?;
    if received.pin != *pin {
        return Err(FetchProblem::NotPinned {
            found: received.pin,
            pinned: *pin,
        });
    }
    let new = match images::publish(received, dir, name, false) {
        Ok(_) => true,
        Err(UploadProblem::Exists(_)) => false,
        Err(e) => return Err(FetchProblem::Refused(e)),
    };
    Ok(Fetched { new, resumed_at })
}

/// Sends the bundle's bytes, from whichever peer serves them, to `tx`; the
/// receiver verifies them. Returns once `pin.size` bytes went, or with why not;
/// where a broken-off stream was taken up again goes to `resumed_at` (and the
/// log).
fn feed(
    name: &str,
    pin: &BundlePin,
    node_dir: &NodeDir,
    peers: &[&NodeSpec],
    (tx, mut tee): (
        mpsc::Sender<axum::body::Bytes>,
        Option<std::sync::mpsc::SyncSender<axum::body::Bytes>>,
    ),
    resumed_at: &mut Vec<u64>,
) -> Result<(), FetchProblem> {
    let deadline = Instant::now() + FETCH_LIMIT;
    let path = format!("/v1/qimg/peer/images/{name}");
    let mut got = 0u64;
    let mut why = Vec::new();
    for peer in peers {
        let mut client = match client_of(peer, node_dir) {
            Ok(c) => c,
            Err(e) => {
                why.push(format!("node {}: {e}", peer.id));
                continue;
            }
        };
        // Asked until it has sent nothing for PEER_PATIENCE; only its last
        // problem is kept for the error.
        let mut heard = Instant::now();
        let mut pause = RETRY_PAUSE;
        let mut last = None;
        loop {
            if Instant::now() >= deadline {
                why.extend(last);
                why.push(format!("not done within {} s", FETCH_LIMIT.as_secs()));
                return Err(FetchProblem::NotServed(why.join("; ")));
            }
            let from = got;
            // Once per break: tries that bring nothing do not count again.
            if from > 0 && resumed_at.last() != Some(&from) {
                crate::log(&format!(
                    "fetch of {name}: resuming at byte {from} of {} from node {}",
                    pin.size, peer.id
                ));
                resumed_at.push(from);
            }
            let mut sink = |b: &[u8]| {
                if got + b.len() as u64 > pin.size {
                    return Err(std::io::Error::other(format!(
                        "the peer sends more than the pinned {} bytes",
                        pin.size
                    )));
                }
                let chunk = axum::body::Bytes::copy_from_slice(b);
                if let Some(t) = &tee
                    && t.send(chunk.clone()).is_err()
                {
                    tee = None; // the prepare stopped reading (its error says why)
                }
                tx.blocking_send(chunk)
                    .map_err(|_| std::io::Error::other("the receiver refused what came"))?;
                got += b.len() as u64;
                Ok(())
            };
            let answer = client.get_stream(&path, from, &mut sink);
            match answer {
                Ok(_) if got == pin.size => return Ok(()),
                Ok(_) => last = Some(format!("node {}: the answer ended at byte {got}", peer.id)),
                // The receiver stopped: what came does not verify; its error says why.
                Err(_) if tx.is_closed() => return Ok(()),
                Err(e) if e.status().is_some() => {
                    why.push(format!("node {}: {}", peer.id, qutil::chain(&e)));
                    break; // it does not have it: the next node
                }
                Err(e) => last = Some(format!("node {}: {}", peer.id, qutil::chain(&e))),
            }
            if got > from {
                heard = Instant::now();
                pause = RETRY_PAUSE;
            }
            if heard.elapsed() >= PEER_PATIENCE {
                why.extend(last.take());
                why.push(format!(
                    "node {}: nothing for {} s",
                    peer.id,
                    PEER_PATIENCE.as_secs()
                ));
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }
    Err(FetchProblem::NotServed(why.join("; ")))
}

/// A client of `peer`'s agent: verifies it against the cluster's CA and
/// presents this node's certificate.
pub fn client_of(peer: &NodeSpec, node_dir: &NodeDir) -> Result<qapi::Client, qapi::Error> {
    client_for(peer, node_dir, READ_LIMIT)
}

/// [`client_of`] whose every read may take `limit`.
pub fn client_for(
    peer: &NodeSpec,
    node_dir: &NodeDir,
    limit: Duration,
) -> Result<qapi::Client, qapi::Error> {
    qapi::Client::new(
        qapi::Target::Tcp {
            host: peer.agent.ip().to_string(),
            port: peer.agent.port(),
        },
        qapi::Options {
            timeout: limit,
            ca: Some(node_dir.ca()),
            root_port: false,
            identity: Some(qapi::client::Identity {
                cert: node_dir.cert(),
                key: node_dir.key(),
            }),
        },
    )
}

/// The first of `peers` that has `name` in its upgrade directory (asked with
/// `HEAD /v1/qimg/peer/images/{name}`), with the answers of the others. Blocking.
pub fn holder<'a>(
    name: &str,
    node_dir: &NodeDir,
    peers: &[&'a NodeSpec],
) -> Result<&'a NodeSpec, FetchProblem> {
    let mut why = vec![];
    for peer in peers {
        let answer = client_of(peer, node_dir)
            .and_then(|mut c| c.request("HEAD", &format!("/v1/qimg/peer/images/{name}"), None));
        match answer {
            Ok(r) if r.status == 200 => return Ok(peer),
            Ok(r) => why.push(format!("node {}: {}", peer.id, r.status)),
            Err(e) => why.push(format!("node {}: {}", peer.id, qutil::chain(&e))),
        }
    }
    Err(FetchProblem::NoHolder(why.join("; ")))
}
