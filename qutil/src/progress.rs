//! How long-running library work reports progress and is cancelled: the
//! [`Progress`]/[`Task`] traits (libraries never print; binaries render them with
//! [`crate::cli::Bars`]) and the [`Cancel`] flag shared with a signal handler.

/// How long-running library work reports progress. The CLI renders it; libraries
/// never print. Tasks may run on several threads at once, each with its own handle.
pub trait Progress: Sync {
    /// A task begins; `total` bytes are expected when known. The task ends when the
    /// handle is dropped.
    fn begin(&self, what: &str, total: Option<u64>) -> Box<dyn Task>;

    /// A step of the work begins (`"writing slot b"`, `"stopping container"`): one
    /// line of what is going on, beside the byte counts of tasks.
    fn step(&self, _text: &str) {}
}

/// One running task of a [`Progress`].
pub trait Task: Send + Sync {
    /// `bytes` more bytes are done.
    fn advance(&self, bytes: u64);
}

/// A cancellation flag shared between a CLI's signal handler and library work
/// (`imagebuild`'s builds, `qq`'s prepare). [`Cancel::check`]'s error converts into
/// each library's own `Cancelled` variant with `?`.
#[derive(Clone, Debug, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

/// The work was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks running work to stop.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _what: &str, _total: Option<u64>) -> Box<dyn Task> {
        Box::new(NoProgress)
    }
}

impl Task for NoProgress {
    fn advance(&self, _bytes: u64) {}
}
