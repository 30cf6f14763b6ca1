//! Building release artifacts: signed `.qimg` bundles from a release spec. The
//! `imagebuild uki` command uses `bootctl::uki::build`.
//!
//! The pipeline ([`bundle::build`]) stages each component in a private directory next
//! to the output (squashfs + dm-verity for root directories, zstd for everything),
//! writes the manifest, signs it, writes the bundle to a temporary file and renames
//! it into place. Nothing partial is ever left at the output path; on an error or a
//! cancellation the staging directory is removed.
//!
//! The `imagebuild` binary is a thin CLI over this library.
#![deny(missing_docs)]

use std::path::PathBuf;

pub mod bundle;
pub mod demo;
pub mod disk;
pub mod keys;
pub mod place;
pub mod report;
pub mod sample;
pub mod spec;
pub mod spill;
pub mod squashfs;

/// Name and version of this tool, recorded in every manifest.
pub const TOOL: &str = concat!("imagebuild ", env!("CARGO_PKG_VERSION"));

pub use qimg::Cancel;

impl From<qimg::Cancelled> for Error {
    fn from(_: qimg::Cancelled) -> Error {
        Error::Cancelled
    }
}

/// Errors of the `imagebuild` library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The release spec is not valid TOML of the expected shape.
    #[error("release spec {path} cannot be parsed")]
    SpecParse {
        /// The spec file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A release spec field is invalid.
    #[error("release spec {path}: field {field}: {reason}")]
    SpecInvalid {
        /// The spec file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An input file or directory cannot be read.
    #[error("reading input {path}")]
    Input {
        /// The input.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An input tree holds a file of a type squashfs cannot store.
    #[error("unsupported file type at {path}")]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
    },
    /// backhand failed to build an image.
    #[error("building squashfs image of {root}")]
    Squashfs {
        /// The tree.
        root: PathBuf,
        /// The cause.
        #[source]
        source: backhand::BackhandError,
    },
    /// Writing a staged payload or the output failed.
    #[error("writing {path}")]
    Output {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An output already exists and is not overwritten.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A key file is invalid.
    #[error("key file {path}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: qimg::Error,
    },
    /// A bundle could not be written, read or verified.
    #[error("bundle {path}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: qimg::Error,
    },
    /// A boot-slot operation (layout, ESP, slot write) failed.
    #[error("disk image")]
    Boot {
        /// The cause.
        #[source]
        source: bootctl::Error,
    },
    /// Invalid build options.
    #[error("{0}")]
    Usage(String),
    /// The build was cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A stable identifier of the kind of error, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::SpecParse { .. } => "spec-parse",
            Error::SpecInvalid { .. } => "spec-invalid",
            Error::Input { .. } => "input",
            Error::UnsupportedFile { .. } => "unsupported-file",
            Error::Squashfs { .. } => "squashfs",
            Error::Output { .. } => "output",
            Error::Exists { .. } => "exists",
            Error::Key { .. } => "key",
            Error::Bundle { .. } => "bundle",
            Error::Boot { .. } => "boot",
            Error::Usage(_) => "usage",
            Error::Cancelled => "cancelled",
        }
    }
}
