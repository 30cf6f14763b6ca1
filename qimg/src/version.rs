//! Dotted numeric release versions (`5.1.0.1`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The most parts a version may have (`major.minor.patch.build`).
pub const MAX_VERSION_PARTS: usize = 4;

/// A release version: one to four dot-separated decimal parts, each fitting in a `u32`.
///
/// Ordering is numeric, part by part; missing trailing parts count as zero, so
/// `5.1` == `5.1.0` for comparison, while `Display` keeps the text as written.
#[derive(Clone, Debug)]
pub struct Version {
    parts: Vec<u32>,
}

impl Version {
    /// The parts as written.
    pub fn parts(&self) -> &[u32] {
        &self.parts
    }

    fn padded(&self) -> [u32; MAX_VERSION_PARTS] {
        let mut out = [0; MAX_VERSION_PARTS];
        out[..self.parts.len()].copy_from_slice(&self.parts);
        out
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidVersion {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let mut parts = Vec::with_capacity(MAX_VERSION_PARTS);
        for part in s.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("each part must be a decimal number"));
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err(bad("parts must not have leading zeros"));
            }
            let n = part
                .parse::<u32>()
                .map_err(|_| bad("part does not fit in 32 bits"))?;
            parts.push(n);
        }
        if parts.len() > MAX_VERSION_PARTS {
            return Err(bad("at most 4 parts"));
        }
        Ok(Version { parts })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.padded().cmp(&other.padded())
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_orders_numerically() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("5.1.0.1") > v("5.1.0"));
        assert!(v("10.0") > v("9.99.99.99"));
        assert_eq!(v("4.1"), v("4.1.0.0"));
        assert_eq!(v("5.1.0.1").to_string(), "5.1.0.1");
        assert_eq!(v("5.1.0.1").parts(), &[5, 1, 0, 1]);
    }

    #[test]
    fn rejects_bad_versions() {
        for bad in [
            "",
            "1..2",
            "1.2.3.4.5",
            "v1",
            "1.a",
            "01.2",
            "1.2-rc1",
            "4294967296",
            " 1",
            ".1",
        ] {
            let err = bad.parse::<Version>().unwrap_err();
            assert!(
                matches!(err, Error::InvalidVersion { ref input, .. } if input == bad),
                "{bad:?}: {err}"
            );
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(parts in proptest::collection::vec(any::<u32>(), 1..=4)) {
            let text = parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(".");
            let v: Version = text.parse().unwrap();
            prop_assert_eq!(v.to_string(), text);
            prop_assert_eq!(v.parts(), &parts[..]);
        }

        #[test]
        fn order_matches_padded_tuple(a in proptest::collection::vec(0u32..4, 1..=4),
                                      b in proptest::collection::vec(0u32..4, 1..=4)) {
            let va = Version { parts: a.clone() };
            let vb = Version { parts: b.clone() };
            let pad = |v: &[u32]| { let mut x = v.to_vec(); x.resize(4, 0); x };
            prop_assert_eq!(va.cmp(&vb), pad(&a).cmp(&pad(&b)));
        }
    }
}
