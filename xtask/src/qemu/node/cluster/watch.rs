//! The host's watch on the nodes' consoles: when each node went down (the
//! kernel's restart) and came back (its boot report).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::vm;

/// When each node went down (the kernel's restart) and came up again (its boot
/// report), as the host saw the consoles during a run.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    pub(super) down: Option<Instant>,
    pub(super) up: Option<Instant>,
}

/// Watches the consoles of `serials` from now on, every 200 ms.
pub(super) struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The kernel's restart and the node's boot report, as counted on a console.
const RESTART: &str = "reboot: Restarting";
pub(super) const BOOT_REPORT: &str = "QIMG-NODE-BOOT";

/// How many restarts and boot reports `serial` shows so far (one read).
pub(super) fn restarts_and_boots(serial: &Path) -> (usize, usize) {
    let text = vm::console_of(serial);
    (
        vm::count_in(&text, RESTART),
        vm::count_in(&text, BOOT_REPORT),
    )
}

impl Watch {
    pub(super) fn start(serials: Vec<PathBuf>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![Seen::default(); serials.len()]));
        let (s, w) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let base: Vec<(usize, usize)> = serials.iter().map(|p| restarts_and_boots(p)).collect();
            while !s.load(Ordering::Relaxed) {
                for (i, p) in serials.iter().enumerate() {
                    let (restarts, boots) = restarts_and_boots(p);
                    let mut w = w.lock().expect("not poisoned");
                    if w[i].down.is_none() && restarts > base[i].0 {
                        w[i].down = Some(Instant::now());
                    }
                    if w[i].up.is_none() && boots > base[i].1 {
                        w[i].up = Some(Instant::now());
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub(super) fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().expect("not poisoned").clone()
    }
}
