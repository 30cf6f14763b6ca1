//! The `.qimg` bundle format, version 1: one signed file per release that release
//! engineers build and storage nodes verify and install.
//!
//! A bundle is a POSIX ustar archive, read front to back in one pass:
//! `manifest.json` (the signed metadata), `signatures/<KEYID>.minisig` (Ed25519,
//! minisign format), then one `payload/<name>[.zst]` member per component, in
//! manifest order. The full specification is `docs/qimg-format.md`.
//!
//! This crate holds the format only: encoding, decoding, signing and verification,
//! and the dm-verity hash tree. It has no knowledge of how images are built
//! (`imagebuild`) or installed (the upgrade engine), and pulls in nothing a node does
//! not need.
//!
//! ```no_run
//! # fn main() -> Result<(), qimg::Error> {
//! use qimg::{BundleReader, NoProgress, PublicKey, TrustedKeys};
//! let key = PublicKey::from_file_text(&std::fs::read_to_string("release.pub").unwrap())?;
//! let file = std::io::BufReader::new(std::fs::File::open("release.qimg").unwrap());
//! let (reader, _signers) = BundleReader::open_verified(file, &TrustedKeys::new([key]))?;
//! let checked = reader.finish(&NoProgress)?;
//! println!("{} components verified", checked.len());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
pub mod firmware;
pub mod manifest;
pub mod payload;
pub mod reader;
pub mod sign;
pub mod tar;
pub mod verity;
mod version;
pub mod writer;

pub use error::{Error, Part};
pub use firmware::{Activation, DeviceMatch, FirmwareInfo, VersionFormat};
pub use manifest::{
    BuildInfo, Component, ComponentKind, Compression, Manifest, Release, Settle, Sha256, Target,
};
pub use payload::{PayloadInfo, PayloadWriter};
pub use reader::BundleReader;
pub use sign::{KeyId, PublicKey, SecretKey, Signature, TrustedKeys};
pub use verity::{VerityBuilder, VerityInfo};
pub use version::Version;
pub use writer::write_bundle;

/// How long-running library work reports progress. The CLI renders it; libraries
/// never print. Tasks may run on several threads at once, each with its own handle.
pub trait Progress: Sync {
    /// A task begins; `total` bytes are expected when known. The task ends when the
    /// handle is dropped.
    fn begin(&self, what: &str, total: Option<u64>) -> Box<dyn Task>;
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
