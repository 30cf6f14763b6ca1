//! The one error type of the `qimg` library.

use crate::KeyId;

/// Which bytes of a component a size or hash refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The member as stored in the bundle (possibly compressed).
    Stored,
    /// The uncompressed content.
    Content,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Stored => "stored member",
            Part::Content => "uncompressed content",
        })
    }
}

/// Everything that can go wrong reading, writing or verifying a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the bundle failed.
    #[error("reading bundle at offset {offset}")]
    Read {
        /// Byte offset in the bundle.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("writing {what}")]
    Write {
        /// What was being written.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle ends before a structure is complete.
    #[error("bundle truncated at offset {offset}: expected {expected}")]
    Truncated {
        /// Where the data ran out.
        offset: u64,
        /// What was being read.
        expected: String,
    },
    /// Bytes follow the end-of-archive marker and its padding.
    #[error("trailing data after the end of the bundle at offset {offset}")]
    TrailingData {
        /// Offset of the first trailing byte.
        offset: u64,
    },
    /// A tar header is malformed or uses something qimg does not allow.
    #[error("bad tar header at offset {offset}: {reason}")]
    BadHeader {
        /// Offset of the header block.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A member name is absolute, contains `..` or is otherwise unsafe.
    #[error("unsafe member name {name:?} at offset {offset}: {reason}")]
    UnsafeMemberName {
        /// Offset of the header block.
        offset: u64,
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A member appears twice.
    #[error("duplicate member {name:?} at offset {offset}")]
    DuplicateMember {
        /// Offset of the header block.
        offset: u64,
        /// The name.
        name: String,
    },
    /// A member is not the one the format (or manifest order) requires here.
    #[error("unexpected member {found:?} at offset {offset}: expected {expected}")]
    UnexpectedMember {
        /// Offset of the header block.
        offset: u64,
        /// Name found.
        found: String,
        /// What should be here.
        expected: String,
    },
    /// A member is neither the manifest, a signature, nor a payload the manifest lists.
    #[error("member {name:?} at offset {offset} is not in the manifest")]
    MemberNotInManifest {
        /// Offset of the header block.
        offset: u64,
        /// The name.
        name: String,
    },
    /// The archive ends while the manifest still lists payloads.
    #[error("member {name:?} listed in the manifest is missing (archive ends at offset {offset})")]
    MissingMember {
        /// Where the archive ended.
        offset: u64,
        /// The missing member.
        name: String,
    },
    /// Padding that must be zero is not.
    #[error("non-zero padding at offset {offset}")]
    NonZeroPadding {
        /// Offset of the padding.
        offset: u64,
    },
    /// The manifest member is larger than readers accept.
    #[error("manifest is {size} bytes, more than the {max} allowed")]
    ManifestTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest is not valid")]
    ManifestJson {
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest's format version is not one this library reads.
    #[error("unsupported format version {found} (this reader supports versions 1 and 2)")]
    UnsupportedFormatVersion {
        /// The version found.
        found: u64,
    },
    /// A component kind this version of the format does not define.
    #[error("component {name:?} has unknown kind {kind:?}")]
    UnknownComponentKind {
        /// Component name.
        name: String,
        /// The kind.
        kind: String,
    },
    /// Two components share a name.
    #[error("duplicate component name {name:?}")]
    DuplicateComponent {
        /// The name.
        name: String,
    },
    /// A manifest field is invalid.
    #[error("invalid manifest field {field}: {reason}")]
    InvalidManifest {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A version string is not dotted numeric.
    #[error("invalid version {input:?}: {reason}")]
    InvalidVersion {
        /// The text.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A size in the bundle disagrees with the manifest.
    #[error("component {component:?}: {part} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// Component name.
        component: String,
        /// Which bytes.
        part: Part,
        /// Size in the manifest.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Decompression produced more than the manifest's size (a decompression bomb).
    #[error(
        "component {component:?}: decompresses to more than the {limit} bytes the manifest says"
    )]
    DecompressionBomb {
        /// Component name.
        component: String,
        /// The manifest size.
        limit: u64,
    },
    /// Decompression failed.
    #[error("component {component:?}: corrupt compressed data")]
    Decompress {
        /// Component name.
        component: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A hash disagrees with the manifest.
    #[error(
        "component {component:?}: sha256 of the {part} is {actual}, the manifest says {expected}"
    )]
    HashMismatch {
        /// Component name.
        component: String,
        /// Which bytes.
        part: Part,
        /// Hash in the manifest.
        expected: String,
        /// Hash computed.
        actual: String,
    },
    /// The bundle has no signature.
    #[error("bundle is not signed")]
    Unsigned,
    /// None of the signatures is by a trusted key.
    #[error("no signature by a trusted key (signed by: {})", fmt_ids(key_ids))]
    NoTrustedSignature {
        /// Keys that did sign.
        key_ids: Vec<KeyId>,
    },
    /// A signature by a trusted key does not verify.
    #[error("signature by key {key_id} does not verify: {reason}")]
    BadSignature {
        /// The key.
        key_id: KeyId,
        /// What failed.
        reason: String,
    },
    /// A signature member cannot be decoded.
    #[error("malformed signature member {member:?}: {reason}")]
    MalformedSignature {
        /// Member name.
        member: String,
        /// What is wrong.
        reason: String,
    },
    /// A key file cannot be decoded.
    #[error("malformed key: {reason}")]
    MalformedKey {
        /// What is wrong.
        reason: String,
    },
    /// The caller asked to stop.
    #[error("cancelled")]
    Cancelled,
}

/// What is wrong with a value, in words (a field, a signature text, a verity
/// tree): the callers put it into a typed [`Error`] variant with its context.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for String {
    fn from(i: Invalid) -> String {
        i.0
    }
}

impl From<String> for Invalid {
    fn from(s: String) -> Invalid {
        Invalid(s)
    }
}

fn fmt_ids(ids: &[KeyId]) -> String {
    ids.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// A stable, kebab-case identifier of the error variant, for JSON reports and
    /// scripts. Documented in `docs/qimg-format.md`; never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Write { .. } => "write",
            Error::Truncated { .. } => "truncated",
            Error::TrailingData { .. } => "trailing-data",
            Error::BadHeader { .. } => "bad-header",
            Error::UnsafeMemberName { .. } => "unsafe-member-name",
            Error::DuplicateMember { .. } => "duplicate-member",
            Error::UnexpectedMember { .. } => "unexpected-member",
            Error::MemberNotInManifest { .. } => "member-not-in-manifest",
            Error::MissingMember { .. } => "missing-member",
            Error::NonZeroPadding { .. } => "non-zero-padding",
            Error::ManifestTooLarge { .. } => "manifest-too-large",
            Error::ManifestJson { .. } => "manifest-json",
            Error::UnsupportedFormatVersion { .. } => "unsupported-format-version",
            Error::UnknownComponentKind { .. } => "unknown-component-kind",
            Error::DuplicateComponent { .. } => "duplicate-component",
            Error::InvalidManifest { .. } => "invalid-manifest",
            Error::InvalidVersion { .. } => "invalid-version",
            Error::SizeMismatch { .. } => "size-mismatch",
            Error::DecompressionBomb { .. } => "decompression-bomb",
            Error::Decompress { .. } => "decompress",
            Error::HashMismatch { .. } => "hash-mismatch",
            Error::Unsigned => "unsigned",
            Error::NoTrustedSignature { .. } => "no-trusted-signature",
            Error::BadSignature { .. } => "bad-signature",
            Error::MalformedSignature { .. } => "malformed-signature",
            Error::MalformedKey { .. } => "malformed-key",
            Error::Cancelled => "cancelled",
        }
    }

    /// True when the error is about the bundle's content (a negative verification
    /// answer), false when it is about the environment (I/O, keys, cancellation).
    pub fn is_verification_failure(&self) -> bool {
        !matches!(
            self,
            Error::Read { .. }
                | Error::Write { .. }
                | Error::MalformedKey { .. }
                | Error::Cancelled
        )
    }
}
