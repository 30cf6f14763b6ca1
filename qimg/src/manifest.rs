//! The signed manifest (`manifest.json`): what a bundle contains and where it may go.
//!
//! The JSON schema is specified in `docs/qimg-format.md`. Reading is strict:
//! unknown fields, unknown kinds, duplicate names and inconsistent sizes are errors.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub use crate::digest::Sha256;
use crate::firmware::FirmwareInfo;
use crate::verity::{self, VerityInfo};
use crate::{Error, Version};

/// The format version this library writes.
pub const FORMAT_VERSION: u64 = 2;
/// The format versions this library reads: 1, and 2, whose manifest may be padded
/// with spaces to a length reserved before the payloads were built
/// ([`Manifest::reserved_len`]).
pub const READ_FORMAT_VERSIONS: std::ops::RangeInclusive<u64> = 1..=FORMAT_VERSION;
/// Name of the manifest member, always the first member of a bundle.
pub const MANIFEST_MEMBER: &str = "manifest.json";
/// Largest manifest a reader accepts.
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;
/// Longest component name.
pub const MAX_NAME_LEN: usize = 64;

/// Where a release may be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Physical appliances.
    Onprem,
    /// Cloud instances.
    Cloud,
}

/// How a payload member is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    None,
    /// One or more zstd frames.
    Zstd,
}

/// Who built the bundle, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// Name and version of the building tool.
    pub tool: String,
    /// The SOURCE_DATE_EPOCH every timestamp in the bundle is set to.
    pub source_date_epoch: u64,
}

/// What a component is, with the fields specific to its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentKind {
    /// Read-only root filesystem image for an A/B slot, with its dm-verity hash tree
    /// appended at `verity.hash_offset`.
    PlatformRoot {
        /// Filesystem type of the data area (`squashfs`).
        filesystem: String,
        /// dm-verity parameters.
        verity: VerityInfo,
    },
    /// A Unified Kernel Image (PE/EFI application).
    BootUki,
    /// The image the product container runs from, with its dm-verity hash tree appended.
    Container {
        /// Filesystem type of the data area (`squashfs`).
        filesystem: String,
        /// dm-verity parameters.
        verity: VerityInfo,
    },
    /// A firmware payload for one device component.
    Firmware(FirmwareInfo),
}

impl ComponentKind {
    /// The kind's name in the manifest.
    pub fn name(&self) -> &'static str {
        match self {
            ComponentKind::PlatformRoot { .. } => "platform-root",
            ComponentKind::BootUki => "boot-uki",
            ComponentKind::Container { .. } => "container",
            ComponentKind::Firmware { .. } => "firmware",
        }
    }

    /// dm-verity parameters, for kinds that carry a hash tree.
    pub fn verity(&self) -> Option<&VerityInfo> {
        match self {
            ComponentKind::PlatformRoot { verity, .. }
            | ComponentKind::Container { verity, .. } => Some(verity),
            _ => None,
        }
    }
}

/// The kinds this version of the format knows.
pub const KNOWN_KINDS: [&str; 4] = ["platform-root", "boot-uki", "container", "firmware"];

/// One payload of the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Unique name, `[a-z0-9][a-z0-9._-]*`, at most 64 bytes.
    pub name: String,
    /// Kind and kind-specific fields.
    pub kind: ComponentKind,
    /// Size of the uncompressed content.
    pub size: u64,
    /// SHA-256 of the uncompressed content.
    pub sha256: Sha256,
    /// How the member is stored.
    pub compression: Compression,
    /// Size of the member as stored in the bundle.
    pub stored_size: u64,
    /// SHA-256 of the member as stored in the bundle.
    pub stored_sha256: Sha256,
}

impl Component {
    /// Name of the tar member holding this component.
    pub fn member_name(&self) -> String {
        match self.compression {
            Compression::None => format!("payload/{}", self.name),
            Compression::Zstd => format!("payload/{}.zst", self.name),
        }
    }
}

/// What a release is and where it may be installed: the manifest fields a release
/// spec sets (serialized flat in the manifest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Product name, `[a-z0-9][a-z0-9._-]*`.
    pub product: String,
    /// Release version.
    pub version: Version,
    /// Version of the host-OS layer this release carries. Equal platform versions
    /// allow an instant upgrade; different ones need a platform upgrade.
    pub platform_version: Version,
    /// Where the release may be installed.
    pub target: Target,
    /// Hardware models the release supports.
    pub compatible_models: Vec<String>,
    /// Oldest installed version this release may be installed over.
    pub min_installed_version: Version,
    /// A waiting period the node must have spent on its installed release before
    /// this one may be prepared (background work of the previous upgrade).
    pub settle: Option<Settle>,
}

/// A release's required waiting period after the previous upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settle {
    /// Seconds since the previous upgrade's commit.
    pub seconds: u64,
    /// Why, shown to the operator while the upgrade is blocked.
    pub reason: String,
}

impl Release {
    /// Checks the product name, the models and the version order.
    pub fn validate(&self) -> Result<(), Error> {
        check_name("product", &self.product)?;
        if self.compatible_models.is_empty() {
            return Err(invalid("compatible_models", "must name at least one model"));
        }
        let mut models = HashSet::new();
        for m in &self.compatible_models {
            check_text("compatible_models", m)?;
            if !models.insert(m) {
                return Err(invalid("compatible_models", format!("{m:?} listed twice")));
            }
        }
        if let Some(settle) = &self.settle {
            check_text("settle.reason", &settle.reason)?;
        }
        if self.min_installed_version > self.version {
            return Err(invalid(
                "min_installed_version",
                format!(
                    "{} is newer than the release version {}",
                    self.min_installed_version, self.version
                ),
            ));
        }
        Ok(())
    }
}

/// The manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The release.
    pub release: Release,
    /// Build metadata.
    pub build: BuildInfo,
    /// Payloads, in the order their members appear in the bundle.
    pub components: Vec<Component>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format_version: u64,
    product: String,
    version: Version,
    platform_version: Version,
    target: Target,
    compatible_models: Vec<String>,
    min_installed_version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settle: Option<Settle>,
    build: BuildInfo,
    components: Vec<RawComponent>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    name: String,
    kind: String,
    size: u64,
    sha256: Sha256,
    compression: Compression,
    stored_size: u64,
    stored_sha256: Sha256,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filesystem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verity: Option<VerityInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firmware: Option<FirmwareInfo>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidManifest {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} must match [a-z0-9][a-z0-9._-]* and be at most {MAX_NAME_LEN} bytes"),
        ))
    }
}

fn check_text(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(invalid(field, "must be 1 to 256 printable characters"));
    }
    Ok(())
}

impl RawComponent {
    fn into_component(self) -> Result<Component, Error> {
        let field = |f: &str| format!("components[{}].{f}", self.name);
        let kind = match self.kind.as_str() {
            "platform-root" | "container" => {
                if self.firmware.is_some() {
                    return Err(invalid(
                        field("firmware"),
                        "only firmware components have it",
                    ));
                }
                let filesystem = self
                    .filesystem
                    .ok_or_else(|| invalid(field("filesystem"), "missing"))?;
                if filesystem != "squashfs" {
                    return Err(invalid(field("filesystem"), "only squashfs is defined"));
                }
                let verity = self
                    .verity
                    .ok_or_else(|| invalid(field("verity"), "missing"))?;
                if self.kind == "platform-root" {
                    ComponentKind::PlatformRoot { filesystem, verity }
                } else {
                    ComponentKind::Container { filesystem, verity }
                }
            }
            "boot-uki" | "firmware" => {
                if self.filesystem.is_some() || self.verity.is_some() {
                    return Err(invalid(
                        field("verity"),
                        "only filesystem images have filesystem and verity",
                    ));
                }
                if self.kind == "boot-uki" {
                    if self.firmware.is_some() {
                        return Err(invalid(
                            field("firmware"),
                            "only firmware components have it",
                        ));
                    }
                    ComponentKind::BootUki
                } else {
                    let fw = self
                        .firmware
                        .ok_or_else(|| invalid(field("firmware"), "missing"))?;
                    check_text(&field("firmware.component_id"), &fw.component_id)?;
                    check_text(&field("firmware.version"), &fw.version)?;
                    ComponentKind::Firmware(fw)
                }
            }
            other => {
                return Err(Error::UnknownComponentKind {
                    name: self.name.clone(),
                    kind: other.to_owned(),
                });
            }
        };
        Ok(Component {
            name: self.name,
            kind,
            size: self.size,
            sha256: self.sha256,
            compression: self.compression,
            stored_size: self.stored_size,
            stored_sha256: self.stored_sha256,
        })
    }

    fn from_component(c: &Component) -> RawComponent {
        let (filesystem, verity, firmware) = match &c.kind {
            ComponentKind::PlatformRoot { filesystem, verity }
            | ComponentKind::Container { filesystem, verity } => {
                (Some(filesystem.clone()), Some(verity.clone()), None)
            }
            ComponentKind::BootUki => (None, None, None),
            ComponentKind::Firmware(fw) => (None, None, Some(fw.clone())),
        };
        RawComponent {
            name: c.name.clone(),
            kind: c.kind.name().to_owned(),
            size: c.size,
            sha256: c.sha256,
            compression: c.compression,
            stored_size: c.stored_size,
            stored_sha256: c.stored_sha256,
            filesystem,
            verity,
            firmware,
        }
    }
}

impl Manifest {
    /// Parses and validates manifest bytes. Checks, in order: JSON syntax, format
    /// version, component kinds, then every field strictly.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, Error> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| Error::ManifestJson { source })?;
        let format_version = value
            .get("format_version")
            .ok_or_else(|| invalid("format_version", "missing"))?;
        match format_version.as_u64() {
            Some(v) if READ_FORMAT_VERSIONS.contains(&v) => {}
            Some(found) => return Err(Error::UnsupportedFormatVersion { found }),
            None => return Err(invalid("format_version", "not an unsigned integer")),
        }
        if let Some(components) = value.get("components").and_then(|c| c.as_array()) {
            for c in components {
                let kind = c.get("kind").and_then(|k| k.as_str());
                if let Some(kind) = kind.filter(|k| !KNOWN_KINDS.contains(k)) {
                    return Err(Error::UnknownComponentKind {
                        name: c
                            .get("name")
                            .and_then(|n| n.as_str())
                            .unwrap_or("?")
                            .to_owned(),
                        kind: kind.to_owned(),
                    });
                }
            }
        }
        let raw: RawManifest =
            serde_json::from_value(value).map_err(|source| Error::ManifestJson { source })?;
        let manifest = Manifest {
            release: Release {
                product: raw.product,
                version: raw.version,
                platform_version: raw.platform_version,
                target: raw.target,
                compatible_models: raw.compatible_models,
                min_installed_version: raw.min_installed_version,
                settle: raw.settle,
            },
            build: raw.build,
            components: raw
                .components
                .into_iter()
                .map(RawComponent::into_component)
                .collect::<Result<_, _>>()?,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Serializes the manifest: pretty JSON with a trailing newline. The output is a
    /// pure function of the manifest, so signing it is reproducible.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let mut out = serde_json::to_vec_pretty(&self.raw())
            .map_err(|source| Error::ManifestJson { source })?;
        out.push(b'\n');
        Ok(out)
    }

    /// The manifest's length reserved by a writer that places payloads before their
    /// sizes and digests are known: its bytes with every number at its widest
    /// (`u64::MAX`). It depends only on the strings and the component list, so it
    /// can be computed from a placeholder manifest of the same shape (any sizes,
    /// any digests), and the final manifest always fits
    /// ([`Manifest::to_bytes_padded`]). Not validated: placeholders need not be.
    pub fn reserved_len(&self) -> Result<usize, Error> {
        fn widen(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Number(_) => *v = serde_json::Value::from(u64::MAX),
                serde_json::Value::Array(a) => a.iter_mut().for_each(widen),
                serde_json::Value::Object(o) => o.values_mut().for_each(widen),
                _ => {}
            }
        }
        let mut v =
            serde_json::to_value(self.raw()).map_err(|source| Error::ManifestJson { source })?;
        widen(&mut v);
        // Key order does not change the length of the pretty form.
        let out = serde_json::to_vec_pretty(&v).map_err(|source| Error::ManifestJson { source })?;
        Ok(out.len() + 1)
    }

    /// [`Manifest::to_bytes`] padded to exactly `len` bytes with spaces before the
    /// final newline (JSON whitespace: readers parse it unchanged), for a `len`
    /// from [`Manifest::reserved_len`].
    pub fn to_bytes_padded(&self, len: usize) -> Result<Vec<u8>, Error> {
        let mut out = self.to_bytes()?;
        if out.len() > len {
            return Err(invalid(
                "manifest",
                format!("{} bytes, more than the {len} reserved", out.len()),
            ));
        }
        out.pop();
        out.resize(len - 1, b' ');
        out.push(b'\n');
        Ok(out)
    }

    fn raw(&self) -> RawManifest {
        let r = &self.release;
        RawManifest {
            format_version: FORMAT_VERSION,
            product: r.product.clone(),
            version: r.version.clone(),
            platform_version: r.platform_version.clone(),
            target: r.target,
            compatible_models: r.compatible_models.clone(),
            min_installed_version: r.min_installed_version.clone(),
            settle: r.settle.clone(),
            build: self.build.clone(),
            components: self
                .components
                .iter()
                .map(RawComponent::from_component)
                .collect(),
        }
    }

    /// Checks everything serde cannot: names, uniqueness, version order, size and
    /// hash consistency, and which kinds may appear together.
    pub fn validate(&self) -> Result<(), Error> {
        self.release.validate()?;
        check_text("build.tool", &self.build.tool)?;
        if self.components.is_empty() {
            return Err(invalid(
                "components",
                "a bundle carries at least one component",
            ));
        }
        let mut names = HashSet::new();
        let mut firmware_ids = HashSet::new();
        let count = |kind: &str| {
            self.components
                .iter()
                .filter(|c| c.kind.name() == kind)
                .count()
        };
        for c in &self.components {
            check_name("components[].name", &c.name)?;
            if !names.insert(c.name.as_str()) {
                return Err(Error::DuplicateComponent {
                    name: c.name.clone(),
                });
            }
            let field = |f: &str| format!("components[{}].{f}", c.name);
            if c.compression == Compression::None
                && (c.stored_size != c.size || c.stored_sha256 != c.sha256)
            {
                return Err(invalid(
                    field("stored_size"),
                    "an uncompressed member must have the content's size and sha256",
                ));
            }
            if let Some(v) = c.kind.verity() {
                v.validate()
                    .map_err(|reason| invalid(field("verity"), reason))?;
                if c.size != v.hash_offset + verity::hash_area_size(v.data_blocks) {
                    return Err(invalid(
                        field("size"),
                        "must equal verity.hash_offset plus the size of the hash area",
                    ));
                }
            }
            if let ComponentKind::Firmware(fw) = &c.kind {
                if !firmware_ids.insert(fw.component_id.as_str()) {
                    return Err(invalid(
                        field("firmware.component_id"),
                        format!("two payloads for {:?}", fw.component_id),
                    ));
                }
                fw.validate()
                    .map_err(|reason| invalid(field("firmware"), reason))?;
            }
        }
        for kind in ["platform-root", "boot-uki", "container"] {
            if count(kind) > 1 {
                return Err(invalid("components", format!("more than one {kind}")));
            }
        }
        if count("platform-root") != count("boot-uki") {
            return Err(invalid(
                "components",
                "a platform-root and a boot-uki go together: both or neither",
            ));
        }
        Ok(())
    }

    /// True when moving from an installed platform version needs a reboot into the
    /// other slot (a platform upgrade) rather than only a container swap.
    pub fn needs_platform_upgrade(&self, installed_platform: &Version) -> bool {
        &self.release.platform_version != installed_platform
    }

    /// The platform root component and its dm-verity parameters, if the bundle has one.
    pub fn platform_root(&self) -> Option<(&Component, &VerityInfo)> {
        self.components.iter().find_map(|c| match &c.kind {
            ComponentKind::PlatformRoot { verity, .. } => Some((c, verity)),
            _ => None,
        })
    }

    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests;
