//! The one engine operation the agent runs at a time, on a blocking thread, and
//! its progress: a percentage of the bundle read, never decreasing within one
//! prepare (Qumulo's client asserts that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use qimg::{Progress, Task};

/// What runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A prepare (and its commit when `auto_commit`).
    Prepare,
    /// A commit.
    Commit,
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobKind::Prepare => "a prepare",
            JobKind::Commit => "a commit",
        })
    }
}

/// Bytes of the bundle read against its size.
#[derive(Debug, Default)]
pub struct Meter {
    total: AtomicU64,
    done: AtomicU64,
    percent: AtomicU64,
}

impl Meter {
    /// Starts counting a prepare of a bundle of `total` bytes.
    pub fn reset(&self, total: u64) {
        self.total.store(total.max(1), Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
        self.percent.store(0, Ordering::SeqCst);
    }

    /// 0–99 while reading (100 is for the prepared state), never decreasing.
    pub fn percent(&self) -> u8 {
        self.percent.load(Ordering::SeqCst).min(99) as u8
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let total = self.total.load(Ordering::SeqCst).max(1);
        let p = (u128::from(done) * 100 / u128::from(total)).min(99) as u64;
        self.percent.fetch_max(p, Ordering::SeqCst);
    }
}

/// The engine's progress observer for a job: bytes into the meter, steps to the log.
#[derive(Clone, Debug)]
pub struct Observer(pub Arc<Meter>);

struct MeterTask(Arc<Meter>);

impl Task for MeterTask {
    fn advance(&self, bytes: u64) {
        self.0.advance(bytes);
    }
}

impl Progress for Observer {
    fn begin(&self, _what: &str, _total: Option<u64>) -> Box<dyn Task> {
        Box::new(MeterTask(self.0.clone()))
    }
    fn step(&self, text: &str) {
        crate::log(text);
    }
}

/// The job slot and the meter.
#[derive(Debug, Default)]
pub struct Jobs {
    slot: Mutex<Option<JobKind>>,
    /// The current prepare's progress.
    pub meter: Arc<Meter>,
    /// Notified when a job ends (a commit that asked for a reboot returns): the
    /// simulated hardware looks at once instead of at its next poll.
    pub ended: tokio::sync::Notify,
    /// How many jobs ended so far (what the node runs may have changed).
    pub ends: std::sync::atomic::AtomicU64,
    /// The same count, for whoever waits on it (the node's registration).
    pub ended_count: tokio::sync::watch::Sender<u64>,
}

/// The slot, held until dropped.
#[derive(Debug)]
pub struct Claim {
    jobs: Arc<Jobs>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        *self.jobs.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let n = self
            .jobs
            .ends
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.jobs.ended_count.send_replace(n + 1);
        self.jobs.ended.notify_one();
    }
}

impl Jobs {
    /// Takes the slot for `kind`, or says what holds it.
    pub fn claim(self: &Arc<Self>, kind: JobKind) -> Result<Claim, JobKind> {
        let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            Some(running) => Err(running),
            None => {
                *s = Some(kind);
                Ok(Claim { jobs: self.clone() })
            }
        }
    }

    /// What runs now.
    pub fn running(&self) -> Option<JobKind> {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_at_a_time() {
        let j = Arc::new(Jobs::default());
        let c = j.claim(JobKind::Prepare).unwrap();
        assert_eq!(j.claim(JobKind::Commit).unwrap_err(), JobKind::Prepare);
        assert_eq!(j.running(), Some(JobKind::Prepare));
        drop(c);
        assert!(j.claim(JobKind::Commit).is_ok());
    }

    #[test]
    fn percent_never_decreases_and_stops_below_100() {
        let m = Arc::new(Meter::default());
        m.reset(1000);
        let o = Observer(m.clone());
        let t = o.begin("x", None);
        t.advance(500);
        assert_eq!(m.percent(), 50);
        t.advance(600);
        assert_eq!(m.percent(), 99);
        m.reset(10);
        assert_eq!(m.percent(), 0);
    }
}
