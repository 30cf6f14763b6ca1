//! The cluster's private link: a learning Ethernet switch on a Unix stream socket
//! in the test process. Each node's QEMU connects its second NIC there
//! (`-netdev stream`, frames as a 4-byte big-endian length and the frame); the
//! switch learns which port each source MAC speaks from, sends a unicast frame
//! only to its port, floods the rest to every other port. Nothing leaves the
//! test: no tap device, no host address, no route; the host never joins the link.
//!
//! Why a stream and not datagrams: a Unix datagram queue holds
//! `net.unix.max_dgram_qlen` frames (10 on this machine), so a hub on datagrams
//! dropped most of a TCP burst and a peer's fetch ran at 1.1 MB/s. A stream has
//! the kernel's flow control; each port's writer still has a bounded queue, and a
//! frame that queue cannot take is dropped, as a switch drops what a port's
//! buffer cannot hold (a guest rebooting stops reading its NIC; the others go on).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often blocked threads look whether the switch should stop.
const TICK: Duration = Duration::from_millis(200);
/// Larger than any frame a virtio NIC sends at MTU 9000 (with headroom).
const FRAME_MAX: usize = 65536;
/// Frames a port's writer may hold: about 2 MB at MTU 9000.
const PORT_QUEUE: usize = 256;
/// How long a full port may hold up the sender's frame before it counts as
/// stalled (a guest not reading its NIC); a stalled port's frames are dropped
/// at once until its writer gets one through.
const PORT_PATIENCE: Duration = Duration::from_millis(50);

type Frame = Arc<Vec<u8>>;

/// A connected port: the queue its writer drains.
#[derive(Clone)]
struct Out {
    queue: SyncSender<Frame>,
    stalled: Arc<AtomicBool>,
}

impl Out {
    /// Queues the frame, waiting a little for a busy port (so a burst between
    /// two guests is paced, not dropped); false when dropped.
    fn offer(&self, frame: &Frame) -> bool {
        let start = std::time::Instant::now();
        loop {
            match self.queue.try_send(frame.clone()) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(_)) => {
                    if self.stalled.load(Ordering::Relaxed) {
                        return false;
                    }
                    if start.elapsed() > PORT_PATIENCE {
                        self.stalled.store(true, Ordering::Relaxed);
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

#[derive(Default)]
struct Table {
    /// Connected ports by id.
    ports: HashMap<u64, Out>,
    /// Where each source MAC was last heard.
    macs: HashMap<[u8; 6], u64>,
}

impl Table {
    /// The ports a frame from `from` goes to: the learned port of a unicast
    /// destination, or every other port.
    fn out(&mut self, from: u64, frame: &[u8]) -> Vec<Out> {
        let mac = |at: usize| <[u8; 6]>::try_from(&frame[at..at + 6]).ok();
        let (Some(dst), Some(src)) = (mac(0), mac(6)) else {
            return vec![];
        };
        if src[0] & 1 == 0 {
            self.macs.insert(src, from);
        }
        let unicast = dst[0] & 1 == 0;
        match self.macs.get(&dst) {
            Some(&to) if unicast && to != from => {
                self.ports.get(&to).cloned().into_iter().collect()
            }
            Some(&to) if unicast && to == from => vec![],
            _ => self
                .ports
                .iter()
                .filter(|(id, _)| **id != from)
                .map(|(_, s)| s.clone())
                .collect(),
        }
    }

    fn remove(&mut self, id: u64) {
        self.ports.remove(&id);
        self.macs.retain(|_, p| *p != id);
    }
}

/// The running switch; dropping it stops it and closes every port.
pub struct Switch {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Frames received so far (for the log).
    pub frames: Arc<AtomicU64>,
    /// Frames dropped because a port's queue was full.
    pub dropped: Arc<AtomicU64>,
    table: Arc<Mutex<Table>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Switch {
    /// Listens at `path` and starts switching frames between the ports that
    /// connect.
    pub fn start(path: &Path) -> Result<Switch, String> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let table = Arc::new(Mutex::new(Table::default()));
        let (s, f, d, t) = (stop.clone(), frames.clone(), dropped.clone(), table.clone());
        let thread = std::thread::spawn(move || {
            let mut next_id = 0u64;
            let mut workers = vec![];
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        next_id += 1;
                        workers.extend(port(next_id, conn, &t, &s, &f, &d));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(TICK / 4)
                    }
                    Err(_) => std::thread::sleep(TICK),
                }
            }
            t.lock().unwrap().ports.clear();
            for w in workers {
                let _ = w.join();
            }
        });
        Ok(Switch {
            path: path.to_owned(),
            stop,
            frames,
            dropped,
            table,
            thread: Some(thread),
        })
    }

    /// Ports connected now.
    pub fn ports(&self) -> usize {
        self.table.lock().unwrap().ports.len()
    }
}

/// Starts a port's reader and writer threads.
fn port(
    id: u64,
    conn: UnixStream,
    table: &Arc<Mutex<Table>>,
    stop: &Arc<AtomicBool>,
    frames: &Arc<AtomicU64>,
    dropped: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    let (Ok(()), Ok(mut writer)) = (conn.set_nonblocking(false), conn.try_clone()) else {
        return vec![];
    };
    let _ = conn.set_read_timeout(Some(TICK));
    let _ = writer.set_write_timeout(Some(TICK));
    let (queue, rx) = sync_channel::<Frame>(PORT_QUEUE);
    let stalled = Arc::new(AtomicBool::new(false));
    table.lock().unwrap().ports.insert(
        id,
        Out {
            queue,
            stalled: stalled.clone(),
        },
    );
    let s = stop.clone();
    let write = std::thread::spawn(move || {
        // Ends when the port is removed (its sender dropped) or the peer is gone.
        while let Ok(frame) = rx.recv() {
            if !write_all(&mut writer, &frame, &s) {
                break;
            }
            stalled.store(false, Ordering::Relaxed);
        }
    });
    let (t, s, f, d) = (table.clone(), stop.clone(), frames.clone(), dropped.clone());
    let read = std::thread::spawn(move || {
        let mut conn = conn;
        let mut buf = vec![0u8; FRAME_MAX];
        while let Some(n) = read_frame(&mut conn, &mut buf, &s) {
            f.fetch_add(1, Ordering::Relaxed);
            let out = t.lock().unwrap().out(id, &buf[..n]);
            if out.is_empty() {
                continue;
            }
            let frame: Frame = Arc::new(buf[..n].to_vec());
            for o in out {
                if !o.offer(&frame) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The node powered off (its QEMU gone) or the switch stops.
        t.lock().unwrap().remove(id);
        let _ = conn.shutdown(std::net::Shutdown::Both);
    });
    vec![read, write]
}

/// Reads exactly `buf.len()` bytes, retrying on the tick; false when the peer
/// closed, the stream failed or the switch stops.
fn read_full(conn: &mut UnixStream, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut at = 0;
    while at < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match conn.read(&mut buf[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if is_tick(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

/// One frame's length then the frame; `None` at the end of the port.
fn read_frame(conn: &mut UnixStream, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    let mut len = [0u8; 4];
    if !read_full(conn, &mut len, stop) {
        return None;
    }
    let n = u32::from_be_bytes(len) as usize;
    // A frame longer than any NIC sends: the port speaks something else.
    if n > buf.len() || !read_full(conn, &mut buf[..n], stop) {
        return None;
    }
    Some(n)
}

fn write_all(w: &mut UnixStream, frame: &[u8], stop: &AtomicBool) -> bool {
    let len = (frame.len() as u32).to_be_bytes();
    for part in [&len[..], frame] {
        let mut at = 0;
        while at < part.len() {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            match w.write(&part[at..]) {
                Ok(0) => return false,
                Ok(n) => at += n,
                Err(e) if is_tick(&e) => {}
                Err(_) => return false,
            }
        }
    }
    true
}

fn is_tick(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

impl Drop for Switch {
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
    use std::time::Instant;

    fn mac(n: u8) -> [u8; 6] {
        [0x52, 0x54, 0, 0x77, 0, n]
    }
    const BROADCAST: [u8; 6] = [0xff; 6];

    fn frame(dst: [u8; 6], src: [u8; 6], body: &[u8]) -> Vec<u8> {
        let mut f = [dst, src].concat();
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(body);
        f
    }

    struct Port(UnixStream);

    impl Port {
        fn connect(sw: &Switch) -> Port {
            let s = UnixStream::connect(&sw.path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Port(s)
        }
        fn send(&mut self, f: &[u8]) {
            self.0.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
            self.0.write_all(f).unwrap();
        }
        /// The next frame's body (after the Ethernet header), or None when
        /// nothing came within the read timeout.
        fn recv(&mut self) -> Option<Vec<u8>> {
            let mut len = [0u8; 4];
            self.0.read_exact(&mut len).ok()?;
            let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
            self.0.read_exact(&mut f).ok()?;
            Some(f[14..].to_vec())
        }
        fn quiet(&mut self) -> bool {
            self.0
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let r = self.recv().is_none();
            self.0
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            r
        }
    }

    /// Waits (bounded) until the switch has `n` ports.
    fn wait_ports(sw: &Switch, n: usize) {
        let t = Instant::now();
        while sw.ports() != n {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the switch never had {n} ports (has {})",
                sw.ports()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn switch(name: &str) -> (PathBuf, Switch) {
        let d = std::env::temp_dir().join(format!("qimg-switch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let sw = Switch::start(&d.join("link")).unwrap();
        (d, sw)
    }

    #[test]
    fn floods_until_it_learns_then_sends_unicast_to_one_port_and_never_back() {
        let (d, sw) = switch("learn");
        let (mut a, mut b, mut c) = (Port::connect(&sw), Port::connect(&sw), Port::connect(&sw));
        wait_ports(&sw, 3);
        // a and b say who they are (an ARP broadcast): every other port hears it.
        a.send(&frame(BROADCAST, mac(1), b"a0"));
        assert_eq!(b.recv().as_deref(), Some(&b"a0"[..]));
        assert_eq!(c.recv().as_deref(), Some(&b"a0"[..]));
        b.send(&frame(BROADCAST, mac(2), b"b0"));
        assert_eq!(a.recv().as_deref(), Some(&b"b0"[..]));
        assert_eq!(c.recv().as_deref(), Some(&b"b0"[..]));
        // c has not spoken: a frame for it is flooded to b and c.
        a.send(&frame(mac(3), mac(1), b"to c, unknown"));
        assert_eq!(c.recv().as_deref(), Some(&b"to c, unknown"[..]));
        assert_eq!(b.recv().as_deref(), Some(&b"to c, unknown"[..]));
        // a and b are learned: a unicast goes to its port only.
        c.send(&frame(mac(2), mac(3), b"to b"));
        assert_eq!(b.recv().as_deref(), Some(&b"to b"[..]));
        assert!(a.quiet(), "a unicast frame for b reached a");
        assert!(c.quiet(), "a frame came back to its sender");
        assert_eq!(sw.frames.load(Ordering::Relaxed), 4);
        // A port gone (its QEMU killed) is forgotten; the others go on.
        drop(a);
        wait_ports(&sw, 2);
        b.send(&frame(mac(3), mac(2), b"b1"));
        assert_eq!(c.recv().as_deref(), Some(&b"b1"[..]));
        // A new QEMU for the same node connects again and is learned anew.
        let mut a = Port::connect(&sw);
        wait_ports(&sw, 3);
        a.send(&frame(mac(2), mac(1), b"back"));
        assert_eq!(b.recv().as_deref(), Some(&b"back"[..]));
        assert!(c.quiet(), "b's port was known: the frame went to b only");
        drop(sw);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn carries_a_burst_without_loss_and_a_port_not_reading_stalls_nobody() {
        let (d, sw) = switch("burst");
        let (mut a, mut b, mut c) = (Port::connect(&sw), Port::connect(&sw), Port::connect(&sw));
        wait_ports(&sw, 3);
        // b and c make themselves known; a hears both.
        b.send(&frame(BROADCAST, mac(2), b"b"));
        c.send(&frame(BROADCAST, mac(3), b"c"));
        assert!(a.recv().is_some() && a.recv().is_some());
        let _ = (b.recv(), c.recv());
        // c stops reading (a guest rebooting). a sends 3000 jumbo frames to b and
        // 3000 broadcasts: b gets them in order, c's queue overflows and c loses
        // most of its frames. (b may lose a few if this machine leaves b's
        // reader without a core for the switch's 50 ms patience: a loaded CI.)
        let reader = std::thread::spawn(move || {
            let mut got = vec![];
            while got.len() < 6000 {
                match b.recv() {
                    Some(f) => got.push(u32::from_be_bytes(f[..4].try_into().unwrap())),
                    None => break,
                }
            }
            got
        });
        let t = Instant::now();
        for i in 0..6000u32 {
            let dst = if i % 2 == 0 { mac(2) } else { BROADCAST };
            let mut body = i.to_be_bytes().to_vec();
            body.resize(9000, 7);
            a.send(&frame(dst, mac(1), &body));
        }
        let got = reader.join().unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "b got frames out of order or twice"
        );
        assert!(
            got.len() >= 5700,
            "b, reading, got only {} of 6000",
            got.len()
        );
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
        assert!(
            sw.dropped.load(Ordering::Relaxed) >= 3000 - PORT_QUEUE as u64 - 100,
            "the frames c could not take were dropped: {}",
            sw.dropped.load(Ordering::Relaxed)
        );
        drop(c);
        drop(sw);
        let _ = std::fs::remove_dir_all(&d);
    }
}
