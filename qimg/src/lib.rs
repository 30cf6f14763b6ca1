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

mod digest;
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

pub use digest::BundlePin;
pub use error::{Error, Invalid, Part};
pub use firmware::{Activation, DeviceMatch, FirmwareInfo, VersionFormat};
pub use manifest::{
    BuildInfo, Component, ComponentKind, Compression, Manifest, Release, Settle, Sha256, Target,
};
pub use payload::{PayloadInfo, PayloadWriter};
pub use reader::BundleReader;
pub use sign::{KeyId, PublicKey, SecretKey, Signature, TrustedKeys};
pub use verity::{VerityBuilder, VerityInfo};
pub use version::Version;
pub use writer::{PayloadSource, write_bundle, write_bundle_file};

pub use qutil::progress::{Cancel, Cancelled, NoProgress, Progress, Task};
