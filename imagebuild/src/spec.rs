//! The release spec (`release.toml`): what goes into a bundle.
//!
//! ```toml
//! product = "qumulo-core"
//! version = "7.1.0.1"
//! platform_version = "7.1.0"
//! target = "onprem"                 # or "cloud"
//! compatible_models = ["q-24t", "q-48t"]
//! min_installed_version = "7.0.0"
//! source_date_epoch = 1700000000    # optional; SOURCE_DATE_EPOCH in the environment wins
//!
//! [settle]                          # optional: a waiting period after the
//! seconds = 86400                   # previous upgrade before this release may be
//! reason = "background restripe"    # prepared (the node reports it as blocked)
//!
//! [compression]                     # optional
//! level = 3                         # zstd level for squashfs blocks and payloads, 1..=19
//! images = "zstd"                   # or "none": store filesystem images (already
//!                                   # zstd inside) without a second compression pass
//!
//! [platform]                        # optional
//! root = "rootfs"                   # directory -> squashfs + dm-verity
//! uki = "platform.efi"              # a prebuilt Unified Kernel Image, or build one:
//! # kernel = "vmlinuz"              #   the UKI is built after the root image, with
//! # initrd = "initrd.img"           #   ` roothash=<verity root hash>` appended to
//! # cmdline = "console=ttyS0"       #   cmdline, so it finds its root in either slot
//! # os_release = "os-release"       #   (Discoverable Partitions Specification)
//! # stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"   # optional
//!
//! [container]                       # optional
//! root = "container"                # directory -> squashfs + dm-verity
//!
//! [[firmware]]                      # zero or more
//! component_id = "bmc"
//! version = "2.14.1"
//! file = "firmware/bmc.bin"
//! # optional, as in the manifest (docs/qimg-format.md):
//! # version_format = "triplet"      # plain (default), triplet, quad, hex
//! # device = { esrt_guid = "…", vendor = "…", model = "…" }
//! # lowest_installed = "2.0.0"
//! # highest_installed = "2.14.0"
//! # compatible_platforms = ["7.0.0", "7.1.0"]
//! # activation = "reboot"           # immediate (default) or reboot
//! ```
//!
//! Relative paths are relative to the spec file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;
use qimg::{Release, Target, Version};

/// Default zstd level: fast enough for development builds, within 10% of level 19's
/// size on already-dense data.
pub const DEFAULT_LEVEL: i32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    product: String,
    version: String,
    platform_version: String,
    target: Target,
    compatible_models: Vec<String>,
    min_installed_version: String,
    source_date_epoch: Option<u64>,
    settle: Option<qimg::Settle>,
    #[serde(default)]
    compression: RawCompression,
    platform: Option<RawPlatform>,
    container: Option<RawContainer>,
    #[serde(default)]
    firmware: Vec<RawFirmware>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    level: Option<i32>,
    images: Option<qimg::Compression>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    root: PathBuf,
    uki: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    os_release: Option<PathBuf>,
    stub: Option<PathBuf>,
}

/// Default systemd stub for UKIs built during bundling.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Where the platform's UKI comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UkiInput {
    /// A prebuilt UKI, carried as is.
    File(PathBuf),
    /// Built during bundling, with `roothash=` appended to `cmdline`.
    Build {
        /// systemd EFI stub.
        stub: PathBuf,
        /// Kernel.
        kernel: PathBuf,
        /// Initrd.
        initrd: Option<PathBuf>,
        /// Command line (without `roothash=`).
        cmdline: String,
        /// os-release for `.osrel`.
        os_release: PathBuf,
    },
}

/// The platform inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformInput {
    /// Root filesystem directory.
    pub root: PathBuf,
    /// The UKI.
    pub uki: UkiInput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    root: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirmware {
    file: PathBuf,
    #[serde(flatten)]
    info: qimg::FirmwareInfo,
}

/// A firmware input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareInput {
    /// What the manifest says about it (component id, version, device match, ...).
    pub info: qimg::FirmwareInfo,
    /// The payload file.
    pub file: PathBuf,
}

/// A validated release spec with absolute input paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseSpec {
    /// What the release is, validated with the manifest's own rules.
    pub release: Release,
    /// SOURCE_DATE_EPOCH from the spec, if given.
    pub source_date_epoch: Option<u64>,
    /// zstd level.
    pub level: i32,
    /// How filesystem image payloads (platform root, container) are stored. Their
    /// squashfs blocks are already compressed, so `None` skips a pass that saves
    /// about 0.01% (measured in docs/benchmarks.md); the default is zstd.
    pub images: qimg::Compression,
    /// Platform root directory and UKI.
    pub platform: Option<PlatformInput>,
    /// Container root directory.
    pub container: Option<PathBuf>,
    /// Firmware inputs.
    pub firmware: Vec<FirmwareInput>,
}

impl ReleaseSpec {
    /// Reads and validates a spec file; checks that every input exists and has the
    /// right type before anything is built.
    pub fn load(path: &Path) -> Result<ReleaseSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Input {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ReleaseSpec::parse(&text, base).map_err(|e| match e {
            Error::SpecInvalid { field, reason, .. } => Error::SpecInvalid {
                path: path.to_owned(),
                field,
                reason,
            },
            Error::SpecParse { source, .. } => Error::SpecParse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses spec text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ReleaseSpec, Error> {
        let raw: RawSpec = toml::from_str(text).map_err(|source| Error::SpecParse {
            path: PathBuf::new(),
            source,
        })?;
        let invalid = |field: &str, reason: String| Error::SpecInvalid {
            path: PathBuf::new(),
            field: field.to_owned(),
            reason,
        };
        let version = |field: &str, s: &str| {
            s.parse::<Version>()
                .map_err(|e| invalid(field, e.to_string()))
        };
        let level = raw.compression.level.unwrap_or(DEFAULT_LEVEL);
        if !(1..=qimg::payload::MAX_ZSTD_LEVEL).contains(&level) {
            return Err(invalid(
                "compression.level",
                format!("{level} is outside 1..={}", qimg::payload::MAX_ZSTD_LEVEL),
            ));
        }
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let release = Release {
            product: raw.product,
            version: version("version", &raw.version)?,
            platform_version: version("platform_version", &raw.platform_version)?,
            target: raw.target,
            compatible_models: raw.compatible_models,
            min_installed_version: version("min_installed_version", &raw.min_installed_version)?,
            settle: raw.settle,
        };
        // The manifest's rules, checked now rather than after the build.
        release.validate().map_err(|e| match e {
            qimg::Error::InvalidManifest { field, reason } => invalid(&field, reason),
            other => invalid("release", other.to_string()),
        })?;
        let spec = ReleaseSpec {
            release,
            source_date_epoch: raw.source_date_epoch,
            level,
            images: raw.compression.images.unwrap_or(qimg::Compression::Zstd),
            platform: raw
                .platform
                .map(|p| platform_input(p, &abs))
                .transpose()
                .map_err(|(field, reason)| invalid(&field, reason))?,
            container: raw.container.map(|c| abs(c.root)),
            firmware: raw
                .firmware
                .into_iter()
                .map(|f| FirmwareInput {
                    info: f.info,
                    file: abs(f.file),
                })
                .collect(),
        };
        spec.check_inputs()
            .map_err(|(field, reason)| invalid(&field, reason))?;
        Ok(spec)
    }

    fn check_inputs(&self) -> Result<(), (String, String)> {
        let dir = |field: &str, p: &Path| check_path(field, p, true);
        let file = |field: &str, p: &Path| check_path(field, p, false);
        if let Some(p) = &self.platform {
            dir("platform.root", &p.root)?;
            match &p.uki {
                UkiInput::File(f) => {
                    file("platform.uki", f)?;
                    check_uki(f).map_err(|reason| ("platform.uki".to_owned(), reason))?;
                }
                UkiInput::Build {
                    stub,
                    kernel,
                    initrd,
                    os_release,
                    cmdline,
                } => {
                    file("platform.stub", stub)?;
                    file("platform.kernel", kernel)?;
                    if let Some(i) = initrd {
                        file("platform.initrd", i)?;
                    }
                    file("platform.os_release", os_release)?;
                    if cmdline.contains("roothash=") {
                        return Err((
                            "platform.cmdline".into(),
                            "roothash= is added by imagebuild".into(),
                        ));
                    }
                }
            }
        }
        if let Some(root) = &self.container {
            dir("container.root", root)?;
        }
        for (i, fw) in self.firmware.iter().enumerate() {
            let field = format!("firmware[{i}]");
            let id = &fw.info.component_id;
            fw.info
                .validate()
                .map_err(|reason| (field.clone(), reason.0))?;
            let ok = !id.is_empty()
                && id.len() <= 60
                && id.as_bytes()[0].is_ascii_alphanumeric()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !ok {
                return Err((
                    format!("{field}.component_id"),
                    format!("{id:?} must match [a-z0-9][a-z0-9._-]* (at most 60 bytes)"),
                ));
            }
            file(&format!("{field}.file"), &fw.file)?;
        }
        if self.platform.is_none() && self.container.is_none() && self.firmware.is_empty() {
            return Err(("platform".into(), "the spec names no inputs".into()));
        }
        Ok(())
    }
}

fn platform_input(
    p: RawPlatform,
    abs: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<PlatformInput, (String, String)> {
    let uki = match (p.uki, p.kernel, p.cmdline, p.os_release) {
        (Some(f), None, None, None) if p.initrd.is_none() && p.stub.is_none() => {
            UkiInput::File(abs(f))
        }
        (None, Some(kernel), Some(cmdline), Some(os_release)) => UkiInput::Build {
            stub: p
                .stub
                .map(abs)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STUB)),
            kernel: abs(kernel),
            initrd: p.initrd.map(abs),
            cmdline,
            os_release: abs(os_release),
        },
        _ => {
            return Err((
                "platform".into(),
                "give either uki, or kernel + cmdline + os_release (+ initrd, stub)".into(),
            ));
        }
    };
    Ok(PlatformInput {
        root: abs(p.root),
        uki,
    })
}

/// Checks that `p` is a directory (`dir`) or a regular file.
/// A prebuilt UKI must be what systemd-boot loads as one: a PE EFI application with
/// a `.linux` (the kernel) and an `.osrel` (the name and version it sorts by) section.
fn check_uki(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let info = bootctl::uki::inspect(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if !info.sections.iter().any(|s| s.name == ".osrel") {
        return Err(format!(
            "{}: not a UKI: no .osrel section (systemd-boot needs its name and version)",
            path.display()
        ));
    }
    Ok(())
}

fn check_path(field: &str, p: &Path, dir: bool) -> Result<(), (String, String)> {
    match std::fs::metadata(p) {
        Ok(m) if (dir && m.is_dir()) || (!dir && m.is_file()) => Ok(()),
        Ok(_) => Err((
            field.to_owned(),
            format!(
                "{} is not {}",
                p.display(),
                if dir { "a directory" } else { "a regular file" }
            ),
        )),
        Err(e) => Err((field.to_owned(), format!("{}: {e}", p.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
product = "qumulo-core"
version = "7.1.0.1"
platform_version = "7.1.0"
target = "onprem"
compatible_models = ["q-24t"]
min_installed_version = "7.0.0"
"#;

    fn setup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("uki.efi"), b"x").unwrap();
        std::fs::write(d.path().join("bmc.bin"), b"x").unwrap();
        d
    }

    /// `setup()` with a real UKI (built from systemd's stub), or `None` when the stub
    /// is missing and QIMG_SKIP_TOOL_TESTS=1 (else the test fails, saying why).
    fn setup_with_uki() -> Option<tempfile::TempDir> {
        let present = Path::new(DEFAULT_STUB).is_file();
        if !qutil::require::require(
            present,
            DEFAULT_STUB,
            "Debian package systemd-boot-efi, which `cargo xtask ci` installs",
            "QIMG_SKIP_TOOL_TESTS",
        ) {
            return None;
        }
        let d = setup();
        crate::sample::write_uki(
            &d.path().join("uki.efi"),
            Path::new(DEFAULT_STUB),
            8192,
            &mut crate::sample::Rng::new(1),
            "qumulo-core",
            "7.1.0",
        )
        .unwrap();
        Some(d)
    }

    #[test]
    fn a_prebuilt_uki_must_be_a_pe_efi_application_with_linux_and_osrel() {
        let d = setup();
        let text = format!("{BASE}\n[platform]\nroot = \"rootfs\"\nuki = \"uki.efi\"\n");
        match ReleaseSpec::parse(&text, d.path()) {
            Err(Error::SpecInvalid { field, reason, .. }) => {
                assert_eq!(field, "platform.uki");
                assert!(
                    reason.contains("uki.efi: not a UKI: not a PE image"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_full_spec_with_relative_paths() {
        let Some(d) = setup_with_uki() else { return };
        let text = format!(
            "{BASE}\n[platform]\nroot = \"rootfs\"\nuki = \"uki.efi\"\n[[firmware]]\ncomponent_id = \"bmc\"\nversion = \"A04\"\nfile = \"bmc.bin\"\n"
        );
        let s = ReleaseSpec::parse(&text, d.path()).unwrap();
        assert_eq!(
            s.platform,
            Some(PlatformInput {
                root: d.path().join("rootfs"),
                uki: UkiInput::File(d.path().join("uki.efi"))
            })
        );
        assert_eq!(s.firmware[0].file, d.path().join("bmc.bin"));
        assert_eq!(s.firmware[0].info, qimg::FirmwareInfo::new("bmc", "A04"));
        assert_eq!(s.level, DEFAULT_LEVEL);
        assert_eq!(s.release.version.to_string(), "7.1.0.1");
    }

    #[test]
    fn bad_specs_name_the_field() {
        let d = setup();
        let cases = [
            (
                "[platform]\nroot = \"nope\"\nuki = \"uki.efi\"\n",
                "platform.root",
            ),
            (
                "[platform]\nroot = \"rootfs\"\nuki = \"rootfs\"\n",
                "platform.uki",
            ),
            ("[compression]\nlevel = 22\n", "compression.level"),
            ("", "platform"),
            (
                "[[firmware]]\ncomponent_id = \"bmc\"\nversion = \"2.1\"\nversion_format = \"triplet\"\nfile = \"bmc.bin\"\n",
                "firmware[0]",
            ),
            (
                "[platform]\nroot = \"rootfs\"\nuki = \"uki.efi\"\nkernel = \"uki.efi\"\n",
                "platform",
            ),
            (
                "[platform]\nroot = \"rootfs\"\nkernel = \"uki.efi\"\ncmdline = \"roothash=1\"\nos_release = \"bmc.bin\"\nstub = \"uki.efi\"\n",
                "platform.cmdline",
            ),
            (
                "[[firmware]]\ncomponent_id = \"B M C\"\nversion = \"1\"\nfile = \"bmc.bin\"\n",
                "firmware[0].component_id",
            ),
        ];
        for (extra, field) in cases {
            match ReleaseSpec::parse(&format!("{BASE}\n{extra}"), d.path()) {
                Err(Error::SpecInvalid { field: f, .. }) => assert_eq!(f, field, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        // The manifest's own rules apply when the spec is read, before any build.
        let bad_product = format!(
            "{}\n[[firmware]]\ncomponent_id = \"bmc\"\nversion = \"1\"\nfile = \"bmc.bin\"\n",
            BASE.replace("qumulo-core", "Qumulo Core")
        );
        assert!(matches!(
            ReleaseSpec::parse(&bad_product, d.path()),
            Err(Error::SpecInvalid { field, .. }) if field == "product"
        ));
        let bad_version = BASE.replace("7.1.0.1", "7.1-rc1");
        assert!(matches!(
            ReleaseSpec::parse(&bad_version, d.path()),
            Err(Error::SpecInvalid { field, .. }) if field == "version"
        ));
        assert!(matches!(
            ReleaseSpec::parse(&format!("{BASE}\nsurprise = 1\n"), d.path()),
            Err(Error::SpecParse { .. })
        ));
    }
}
