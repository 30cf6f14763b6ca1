//! `inspect` and `verify`: what they find, as typed reports with a versioned JSON
//! form (documented in `docs/imagebuild-cli.md`) and a human rendering.

use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use qimg::{BundleReader, ComponentKind, Manifest, Progress, TrustedKeys};

use crate::Error;

/// Schema id of `inspect --json`.
pub const INSPECT_SCHEMA: &str = "imagebuild.inspect/1";
/// Schema id of `verify --json`.
pub const VERIFY_SCHEMA: &str = "imagebuild.verify/1";

/// A signature as `inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureReport {
    /// Key id, 16 hex digits as minisign prints it.
    pub key_id: String,
    /// The signed trusted comment.
    pub trusted_comment: String,
}

/// What `inspect` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectReport {
    /// Always [`INSPECT_SCHEMA`].
    pub schema: String,
    /// The bundle.
    pub file: PathBuf,
    /// Its size in bytes.
    pub file_size: u64,
    /// The manifest, exactly as in the bundle (see `docs/qimg-format.md`).
    pub manifest: serde_json::Value,
    /// Signatures in archive order (not checked by `inspect`).
    pub signatures: Vec<SignatureReport>,
}

fn open(path: &Path) -> Result<BufReader<File>, Error> {
    File::open(path)
        .map(|f| BufReader::with_capacity(64 << 10, f))
        .map_err(|source| Error::Input {
            path: path.to_owned(),
            source,
        })
}

/// Reads a bundle's manifest and signatures without verifying anything.
pub fn inspect(path: &Path) -> Result<InspectReport, Error> {
    let file_size = std::fs::metadata(path)
        .map_err(|source| Error::Input {
            path: path.to_owned(),
            source,
        })?
        .len();
    let reader = BundleReader::open(open(path)?).map_err(|source| Error::Bundle {
        path: path.to_owned(),
        source,
    })?;
    let manifest = serde_json::from_slice(reader.manifest_bytes())
        .expect("the reader already parsed the manifest as JSON");
    Ok(InspectReport {
        schema: INSPECT_SCHEMA.into(),
        file: path.to_owned(),
        file_size,
        manifest,
        signatures: reader
            .signatures()
            .iter()
            .map(|s| SignatureReport {
                key_id: s.key_id.to_string(),
                trusted_comment: s.trusted_comment.clone(),
            })
            .collect(),
    })
}

/// Outcome of one component in `verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Size and digests verified.
    Ok,
    /// Verification failed here.
    Failed,
    /// Not reached because verification stopped earlier.
    Unchecked,
}

/// One component in a `verify` report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentReport {
    /// Component name.
    pub name: String,
    /// Component kind.
    pub kind: String,
    /// Content size.
    pub size: u64,
    /// Content SHA-256 (hex).
    pub sha256: String,
    /// Outcome.
    pub status: Status,
}

/// Why verification failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    /// Stable error code (`qimg::Error::code`).
    pub code: String,
    /// Human-readable message with its causes.
    pub message: String,
}

/// What `verify` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Always [`VERIFY_SCHEMA`].
    pub schema: String,
    /// The bundle.
    pub file: PathBuf,
    /// True only if the signature and every component verified.
    pub ok: bool,
    /// Trusted keys whose signatures verified.
    pub signed_by: Vec<String>,
    /// Components in manifest order (empty if the manifest could not be trusted).
    pub components: Vec<ComponentReport>,
    /// Present when `ok` is false.
    pub failure: Option<FailureReport>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// Verifies signatures and every component of a bundle. Verification failures are
/// a report with `ok == false`; only environmental problems (unreadable file, I/O
/// errors) are `Err`.
pub fn verify(
    path: &Path,
    keys: &TrustedKeys,
    progress: &dyn Progress,
) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport {
        schema: VERIFY_SCHEMA.into(),
        file: path.to_owned(),
        ok: false,
        signed_by: vec![],
        components: vec![],
        failure: None,
    };
    let fail = |mut report: VerifyReport, e: qimg::Error| {
        if e.is_verification_failure() {
            report.failure = Some(FailureReport {
                code: e.code().into(),
                message: chain(&e),
            });
            Ok(report)
        } else {
            Err(Error::Bundle {
                path: path.to_owned(),
                source: e,
            })
        }
    };
    let (mut reader, signers) = match BundleReader::open_verified(open(path)?, keys) {
        Ok(x) => x,
        Err(e) => return fail(report, e),
    };
    report.signed_by = signers.iter().map(|k| k.to_string()).collect();
    report.components = components_of(reader.manifest());
    let mut index = 0;
    loop {
        match reader.next_component(std::io::sink(), progress) {
            Ok(Some(_)) => {
                report.components[index].status = Status::Ok;
                index += 1;
            }
            Ok(None) => break,
            Err(e) => {
                if let Some(c) = report.components.get_mut(index) {
                    c.status = Status::Failed;
                }
                return fail(report, e);
            }
        }
    }
    report.ok = true;
    Ok(report)
}

fn components_of(m: &Manifest) -> Vec<ComponentReport> {
    m.components
        .iter()
        .map(|c| ComponentReport {
            name: c.name.clone(),
            kind: c.kind.name().into(),
            size: c.size,
            sha256: c.sha256.to_string(),
            status: Status::Unchecked,
        })
        .collect()
}

/// Binary-prefixed size: `12.3 MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl InspectReport {
    /// Renders the report for a person.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let manifest = Manifest::parse(&serde_json::to_vec(&self.manifest).expect("json"))
            .expect("the manifest was validated when read");
        let m = &manifest.release;
        let _ = writeln!(
            s,
            "bundle:     {} ({})",
            self.file.display(),
            human_size(self.file_size)
        );
        let _ = writeln!(
            s,
            "release:    {} {} (platform {}, target {})",
            m.product,
            m.version,
            m.platform_version,
            serde_json::to_value(m.target)
                .expect("json")
                .as_str()
                .unwrap_or("?")
        );
        let _ = writeln!(s, "models:     {}", m.compatible_models.join(", "));
        let _ = writeln!(s, "installs over: {} or newer", m.min_installed_version);
        let _ = writeln!(
            s,
            "built by:   {} (SOURCE_DATE_EPOCH {})",
            manifest.build.tool, manifest.build.source_date_epoch
        );
        if self.signatures.is_empty() {
            let _ = writeln!(s, "signatures: none");
        }
        for sig in &self.signatures {
            let _ = writeln!(
                s,
                "signature:  key {} \"{}\"",
                sig.key_id, sig.trusted_comment
            );
        }
        let _ = writeln!(s, "components:");
        let _ = writeln!(
            s,
            "  {:<14} {:<14} {:>11} {:>11}  {:<6} sha256",
            "name", "kind", "size", "stored", "codec"
        );
        for c in &manifest.components {
            let _ = writeln!(
                s,
                "  {:<14} {:<14} {:>11} {:>11}  {:<6} {}",
                c.name,
                c.kind.name(),
                human_size(c.size),
                human_size(c.stored_size),
                serde_json::to_value(c.compression)
                    .expect("json")
                    .as_str()
                    .unwrap_or("?"),
                c.sha256
            );
            match &c.kind {
                ComponentKind::PlatformRoot { filesystem, verity }
                | ComponentKind::Container { filesystem, verity } => {
                    let _ = writeln!(
                        s,
                        "  {:<14} {filesystem} + dm-verity: root hash {}, hash offset {}",
                        "", verity.root_hash, verity.hash_offset
                    );
                }
                ComponentKind::Firmware(fw) => {
                    let _ = writeln!(
                        s,
                        "  {:<14} firmware for {}, version {} ({:?}, activates {:?})",
                        "", fw.component_id, fw.version, fw.version_format, fw.activation
                    );
                }
                ComponentKind::BootUki => {}
            }
        }
        s
    }
}

impl VerifyReport {
    /// Renders the report for a person.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.signed_by.is_empty() {
            let _ = writeln!(s, "signature: ok (key {})", self.signed_by.join(", "));
        }
        for c in &self.components {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Failed => "FAILED",
                Status::Unchecked => "not checked",
            };
            let _ = writeln!(
                s,
                "{:<14} {:<14} {:>11}  {status}",
                c.name,
                c.kind,
                human_size(c.size)
            );
        }
        match &self.failure {
            None => {
                let _ = writeln!(s, "{}: verified", self.file.display());
            }
            Some(f) => {
                let _ = writeln!(
                    s,
                    "{}: verification FAILED [{}]: {}",
                    self.file.display(),
                    f.code,
                    f.message
                );
            }
        }
        s
    }
}
