//! The SHA-256 digest type of the format: hex in JSON and in text, 32 bytes in
//! memory. Its own module because the manifest and the dm-verity code both use it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-256 digest, hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("a sha256 digest is 64 lower-case hex digits".into());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
        Ok(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What identifies one bundle file among those of the same name: the SHA-256 of
/// its signed manifest (which holds every payload's digest) and its size. A
/// cluster's plan pins the bundle it installs so that every node prepares the
/// same bytes, whichever copy of the file it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePin {
    /// SHA-256 of the manifest bytes the signatures cover.
    pub manifest_sha256: Sha256,
    /// The bundle file's size in bytes.
    pub size: u64,
}

impl BundlePin {
    /// The pin of a bundle of `size` bytes whose signed manifest is `manifest`.
    pub fn of(manifest: &[u8], size: u64) -> BundlePin {
        use sha2::Digest;
        BundlePin {
            manifest_sha256: Sha256(sha2::Sha256::digest(manifest).into()),
            size,
        }
    }
}

impl fmt::Display for BundlePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "manifest SHA-256 {}, {} bytes",
            self.manifest_sha256, self.size
        )
    }
}
