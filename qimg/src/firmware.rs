//! What a `firmware` component says about itself, and firmware version syntax.
//!
//! Version formats follow fwupd's names for how a device reports its version; ESRT
//! reports a `u32`, which each format renders differently:
//!
//! | format | text | from an ESRT u32 `v` |
//! |---|---|---|
//! | `plain` | any text; only equality is meaningful | decimal `v` |
//! | `triplet` | `a.b.c` | `v>>24 . (v>>16)&0xff . v&0xffff` |
//! | `quad` | `a.b.c.d` | the four bytes, most significant first |
//! | `hex` | `0x` + hex digits | `0x%08x` |

use crate::Invalid;
use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::Version;

/// How a device's firmware version is written and compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionFormat {
    /// Opaque text: versions are equal or not, never older or newer.
    #[default]
    Plain,
    /// `a.b.c`.
    Triplet,
    /// `a.b.c.d`.
    Quad,
    /// `0x1234abcd`.
    Hex,
}

/// A firmware version parsed under its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FwVersion {
    /// Opaque text.
    Plain(String),
    /// Numeric parts, most significant first.
    Parts(Vec<u64>),
}

impl VersionFormat {
    /// Parses `text`; `None` if it is not written in this format.
    pub fn parse(self, text: &str) -> Option<FwVersion> {
        let parts = |n: usize| {
            let p: Vec<u64> = text
                .split('.')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            (p.len() == n
                && text
                    .split('.')
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit())))
            .then_some(FwVersion::Parts(p))
        };
        match self {
            VersionFormat::Plain => (!text.is_empty()).then(|| FwVersion::Plain(text.to_owned())),
            VersionFormat::Triplet => parts(3),
            VersionFormat::Quad => parts(4),
            VersionFormat::Hex => {
                let h = text
                    .strip_prefix("0x")
                    .or_else(|| text.strip_prefix("0X"))?;
                u64::from_str_radix(h, 16)
                    .ok()
                    .map(|v| FwVersion::Parts(vec![v]))
            }
        }
    }

    /// Renders an ESRT `u32` version the way this format writes it.
    pub fn from_u32(self, v: u32) -> String {
        match self {
            VersionFormat::Plain => v.to_string(),
            VersionFormat::Triplet => format!("{}.{}.{}", v >> 24, (v >> 16) & 0xff, v & 0xffff),
            VersionFormat::Quad => format!(
                "{}.{}.{}.{}",
                v >> 24,
                (v >> 16) & 0xff,
                (v >> 8) & 0xff,
                v & 0xff
            ),
            VersionFormat::Hex => format!("0x{v:08x}"),
        }
    }
}

impl FwVersion {
    /// Orders two versions of one format; `None` for plain versions that differ
    /// (they are neither older nor newer).
    pub fn compare(&self, other: &FwVersion) -> Option<Ordering> {
        match (self, other) {
            (FwVersion::Plain(a), FwVersion::Plain(b)) => (a == b).then_some(Ordering::Equal),
            (FwVersion::Parts(a), FwVersion::Parts(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// Which device a payload is for. Empty means "the device with the component id".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMatch {
    /// The device's ESRT firmware class GUID (UEFI capsule updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esrt_guid: Option<String>,
    /// Vendor, as the device reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Model, as the device reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl DeviceMatch {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.esrt_guid.is_none() && self.vendor.is_none() && self.model.is_none()
    }
}

/// When a flashed firmware takes effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// As soon as it is written.
    #[default]
    Immediate,
    /// At the next reboot (UEFI capsules, some BMCs).
    Reboot,
}

/// The fields of a `firmware` component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareInfo {
    /// Which device component it is for (e.g. `bmc`, `bios`, `nic0`).
    pub component_id: String,
    /// The firmware's own version.
    pub version: String,
    /// How `version` and the device's version are written.
    #[serde(default)]
    pub version_format: VersionFormat,
    /// Which device it matches.
    #[serde(default, skip_serializing_if = "DeviceMatch::is_empty")]
    pub device: DeviceMatch,
    /// Oldest installed version it may be flashed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowest_installed: Option<String>,
    /// Newest installed version it may be flashed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_installed: Option<String>,
    /// Platform versions that run with this firmware (empty: any). A node refuses to
    /// flash it when its fallback slot's platform is not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compatible_platforms: Vec<Version>,
    /// When it takes effect.
    #[serde(default)]
    pub activation: Activation,
}

impl FirmwareInfo {
    /// A payload for `component_id` at `version`, with every other field at its default.
    pub fn new(component_id: &str, version: &str) -> FirmwareInfo {
        FirmwareInfo {
            component_id: component_id.to_owned(),
            version: version.to_owned(),
            version_format: VersionFormat::Plain,
            device: DeviceMatch::default(),
            lowest_installed: None,
            highest_installed: None,
            compatible_platforms: vec![],
            activation: Activation::Immediate,
        }
    }

    /// Checks that every version is written in `version_format`.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (what, v) in [
            ("version", Some(&self.version)),
            ("lowest_installed", self.lowest_installed.as_ref()),
            ("highest_installed", self.highest_installed.as_ref()),
        ] {
            if let Some(v) = v
                && self.version_format.parse(v).is_none()
            {
                return Err(Invalid(format!(
                    "{what} {v:?} is not a {:?} version",
                    self.version_format
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats() {
        use VersionFormat::*;
        assert_eq!(
            Triplet.parse("1.2.300"),
            Some(FwVersion::Parts(vec![1, 2, 300]))
        );
        assert_eq!(Triplet.parse("1.2"), None);
        assert_eq!(
            Quad.parse("1.2.3.4"),
            Some(FwVersion::Parts(vec![1, 2, 3, 4]))
        );
        assert_eq!(
            Hex.parse("0x0001000a"),
            Some(FwVersion::Parts(vec![0x1000a]))
        );
        assert_eq!(Hex.parse("1000a"), None);
        assert_eq!(Plain.parse("A04"), Some(FwVersion::Plain("A04".into())));
        assert_eq!(Triplet.from_u32(0x0102_0304), "1.2.772");
        assert_eq!(Quad.from_u32(0x0102_0304), "1.2.3.4");
        assert_eq!(Hex.from_u32(0x0102_0304), "0x01020304");
        let (a, b) = (
            Triplet.parse("1.10.0").unwrap(),
            Triplet.parse("1.9.9").unwrap(),
        );
        assert_eq!(a.compare(&b), Some(Ordering::Greater));
        let (p, q) = (Plain.parse("A04").unwrap(), Plain.parse("A05").unwrap());
        assert_eq!(p.compare(&q), None);
        assert_eq!(p.compare(&p), Some(Ordering::Equal));
    }

    #[test]
    fn defaults_keep_minimal_components_short() {
        let f = FirmwareInfo::new("bmc", "2.14.1");
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(
            json,
            r#"{"component_id":"bmc","version":"2.14.1","version_format":"plain","activation":"immediate"}"#
        );
        let back: FirmwareInfo =
            serde_json::from_str(r#"{"component_id":"bmc","version":"2.14.1"}"#).unwrap();
        assert_eq!(back, f);
    }

    proptest! {
        #[test]
        fn esrt_rendering_parses_back_in_order(a in any::<u32>(), b in any::<u32>()) {
            for f in [VersionFormat::Triplet, VersionFormat::Quad, VersionFormat::Hex] {
                let (va, vb) = (f.parse(&f.from_u32(a)).unwrap(), f.parse(&f.from_u32(b)).unwrap());
                prop_assert_eq!(va.compare(&vb), Some(a.cmp(&b)));
            }
        }
    }
}
