//! The cluster's private link: an Ethernet hub on a Unix datagram socket. Each
//! node's QEMU sends its NIC's frames there (`-netdev dgram`, one frame per
//! datagram) from a socket of its own; the hub learns each sender and repeats
//! every frame to the others. Nothing leaves the test: no tap device, no host
//! address, no route; the host itself never joins the link.

use std::collections::BTreeSet;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How often the hub looks whether it should stop (ms).
const RECV_TICK_MS: i32 = 200;
/// Larger than any frame a virtio NIC sends at MTU 1500 (with headroom).
const FRAME_MAX: usize = 65536;

/// The running hub; dropping it stops it.
pub struct Hub {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Frames repeated so far (for the log).
    pub frames: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn sender(a: &SocketAddr) -> Option<PathBuf> {
    a.as_pathname().map(Path::to_owned)
}

impl Hub {
    /// Binds the hub at `path` and starts repeating frames.
    pub fn start(path: &Path) -> Result<Hub, String> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Never blocked by a port: a frame a node cannot take now (its queue is
        // full: a guest rebooting stops reading its NIC) is dropped, as a switch
        // drops what a port's queue cannot hold. A blocking send stalled the whole
        // link for every node while one rebooted.
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut ports: BTreeSet<PathBuf> = BTreeSet::new();
            let mut buf = vec![0u8; FRAME_MAX];
            while !s.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&sock),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, RECV_TICK_MS) };
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let Some(from) = sender(&from) else { continue };
                    ports.insert(from.clone());
                    f.fetch_add(1, Ordering::Relaxed);
                    for p in ports.iter().filter(|p| **p != from) {
                        // A node powered off refuses, one that is not reading
                        // would block: dropped. Its port stays known for when it
                        // reads again (QEMU binds the same path).
                        let _ = sock.send_to(&buf[..n], p);
                    }
                }
            }
        });
        Ok(Hub {
            path: path.to_owned(),
            stop,
            frames,
            thread: Some(thread),
        })
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn repeats_each_frame_to_every_other_port_and_never_back() {
        let d = std::env::temp_dir().join(format!("qimg-hub-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let hub = Hub::start(&d.join("hub")).unwrap();
        let port = |n: &str| {
            let s = UnixDatagram::bind(d.join(n)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        let (a, b, c) = (port("a"), port("b"), port("c"));
        // Each port speaks once, so the hub knows it.
        for (s, m) in [(&a, b"a0"), (&b, b"b0"), (&c, b"c0")] {
            s.send_to(m, &hub.path).unwrap();
        }
        let got = |s: &UnixDatagram| {
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        // a spoke before b and c were known: b hears c's first frame, a both.
        assert_eq!(got(&a), b"b0");
        assert_eq!(got(&a), b"c0");
        assert_eq!(got(&b), b"c0");
        c.send_to(b"c1", &hub.path).unwrap();
        assert_eq!(got(&a), b"c1");
        assert_eq!(got(&b), b"c1");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            c.recv(&mut [0u8; 16]).is_err(),
            "a frame never returns to its sender"
        );
        drop(a);
        let _ = std::fs::remove_file(d.join("a"));
        b.send_to(b"b1", &hub.path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(got(&c), b"b1", "a port gone does not stop the others");
        assert_eq!(hub.frames.load(Ordering::Relaxed), 5);
        // A port that stops reading (d: a guest rebooting) does not stall the
        // others: what it cannot take is dropped.
        let d_port = port("d");
        d_port.send_to(b"d0", &hub.path).unwrap();
        // The reader stops a second after the last frame it got.
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let c = c.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut n = 0;
                let mut buf = [0u8; 2048];
                while c.recv(&mut buf).is_ok() {
                    n += 1;
                    if n == 1 + 2000 {
                        break;
                    }
                }
                tx.send(n).unwrap();
            })
        };
        // Unix datagram queues are short (net.unix.max_dgram_qlen, 10 here):
        // a hub that waited on d would take 0.5 s per frame once d's queue is
        // full, and b's sends would block behind it for minutes. Frames to c
        // may be dropped too when its reader lags: only that some arrive is
        // asserted.
        let t = std::time::Instant::now();
        for _ in 0..2000 {
            b.send_to(&[7u8; 1024], &hub.path).unwrap();
        }
        let sent = t.elapsed();
        let got = rx.recv_timeout(Duration::from_secs(30)).unwrap_or(0);
        assert!(
            sent < Duration::from_secs(20) && got >= 20,
            "2000 frames sent through the hub in {sent:?}, c got {got}, while d read nothing"
        );
        let _ = reader.join();
        drop(d_port);
        drop(hub);
        let _ = std::fs::remove_dir_all(&d);
    }
}
