//! Support for the cross-crate integration tests in `tests/tests/`.
//!
//! - [`tool`]: outside tools (unsquashfs, veritysetup, minisign, tar, zstd) are
//!   required: a missing tool fails the test with the reason and the package to
//!   install. A person may opt out with `QIMG_SKIP_TOOL_TESTS=1`, which makes those
//!   tests print that they were skipped.
//! - [`Members`]: splits a bundle into tar members and joins them again, so tests
//!   can craft reordered, duplicated, renamed or resized members.
//! - [`Fixture`]: a small signed bundle built from content generated at test time.

pub mod etcd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imagebuild::bundle::{self, BuildOptions};
use imagebuild::spec::ReleaseSpec;
use imagebuild::{Cancel, sample};
use qimg::tar::{self, Header};
use qimg::{KeyId, NoProgress, SecretKey};

/// Environment variable that lets a person skip tests needing outside tools.
pub const SKIP_ENV: &str = "QIMG_SKIP_TOOL_TESTS";

/// The one list of what the project needs from the system (xtask installs from
/// it; here it names the package in a missing tool's message).
#[path = "../../xtask/src/deps/list.rs"]
#[allow(dead_code)]
mod system;

/// Debian package that provides each tool the tests use, from the one list.
pub fn package_of(tool: &str) -> &'static str {
    system::package_of_tool(tool).unwrap_or("?")
}

/// Returns true if `name` is on PATH. If it is not: panics with the reason (the
/// test fails), unless `QIMG_SKIP_TOOL_TESTS=1`, in which case it prints why the
/// test is skipped and returns false.
pub fn tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    qutil::require::require(
        found,
        &format!("the tool {name}"),
        &format!(
            "Debian package {}, which `cargo xtask ci` installs (`cargo xtask deps` lists them)",
            package_of(name)
        ),
        SKIP_ENV,
    )
}

/// The systemd EFI stub, from Debian's systemd-boot-efi.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Like [`tool`], for a file a Debian package provides.
pub fn file_from_package(path: &str, package: &str) -> bool {
    qutil::require::require(
        Path::new(path).is_file(),
        path,
        &format!("Debian package {package}, which `cargo xtask ci` installs"),
        SKIP_ENV,
    )
}

/// Runs a command and returns its output, failing the test with its stderr if it
/// does not exit 0.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One tar member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset of its header in the bundle.
    pub offset: u64,
    /// Its header.
    pub header: Header,
    /// Its data.
    pub data: Vec<u8>,
}

/// A bundle split into members.
#[derive(Clone, Debug)]
pub struct Members(pub Vec<Member>);

impl Members {
    /// Splits a well-formed bundle.
    pub fn parse(bytes: &[u8]) -> Members {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            let block: &[u8; tar::BLOCK] = bytes[at..at + tar::BLOCK].try_into().unwrap();
            if block.iter().all(|&b| b == 0) {
                break;
            }
            let header = Header::decode(block).unwrap();
            let start = at + tar::BLOCK;
            let data = bytes[start..start + header.size as usize].to_vec();
            out.push(Member {
                offset: at as u64,
                header,
                data,
            });
            at = start + header_span(out.last().unwrap());
        }
        Members(out)
    }

    /// Joins members into an archive with the standard end-of-archive padding.
    /// Each header's size is taken as is (so tests can make it disagree).
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in &self.0 {
            out.extend_from_slice(&m.header.encode());
            out.extend_from_slice(&m.data);
            out.resize(out.len() + tar::padding(m.data.len() as u64) as usize, 0);
        }
        let end = (out.len() as u64 + 1024).div_ceil(tar::RECORD) * tar::RECORD;
        out.resize(end as usize, 0);
        out
    }

    /// Index of the member with this name.
    pub fn index(&self, name: &str) -> usize {
        self.0
            .iter()
            .position(|m| m.header.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }
}

fn header_span(m: &Member) -> usize {
    (m.header.size + tar::padding(m.header.size)) as usize
}

/// A deterministic test key.
pub fn test_key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32], KeyId([n; 8]))
}

/// A small signed bundle built from generated content.
pub struct Fixture {
    /// Holds inputs and outputs.
    pub dir: tempfile::TempDir,
    /// The inputs' spec.
    pub spec: ReleaseSpec,
    /// The bundle.
    pub bundle: PathBuf,
    /// The bundle's bytes.
    pub bytes: Vec<u8>,
    /// The key that signed it.
    pub key: SecretKey,
}

/// SOURCE_DATE_EPOCH used by fixtures.
pub const EPOCH: u64 = 1_700_000_000;

/// Writes sample inputs (platform root, UKI, container, one firmware file) and a
/// spec into `dir`; `tree_bytes` sizes each tree.
pub fn write_inputs(dir: &Path, tree_bytes: u64) -> PathBuf {
    sample::generate_tree(&dir.join("rootfs"), tree_bytes, 11, "2.0").unwrap();
    sample::generate_tree(&dir.join("container"), tree_bytes / 2, 12, "2.0").unwrap();
    let mut rng = sample::Rng::new(13);
    sample::write_uki(
        &dir.join("uki.efi"),
        Path::new(STUB),
        100_000,
        &mut rng,
        "qumulo-core",
        "2.0",
    )
    .unwrap();
    sample::write_text(&dir.join("bmc.bin"), 50_000, &mut rng).unwrap();
    let spec = dir.join("release.toml");
    std::fs::write(
        &spec,
        r#"product = "qumulo-core"
version = "2.0.0"
platform_version = "2.0"
target = "onprem"
compatible_models = ["q-24t"]
min_installed_version = "1.0"
[platform]
root = "rootfs"
uki = "uki.efi"
[container]
root = "container"
[[firmware]]
component_id = "bmc"
version = "7.1"
file = "bmc.bin"
"#,
    )
    .unwrap();
    spec
}

/// Builds a bundle from the spec at `spec` into `out`, signed by `keys`.
pub fn build(
    spec: &Path,
    out: &Path,
    keys: &[SecretKey],
) -> Result<qimg::Manifest, imagebuild::Error> {
    let spec = ReleaseSpec::load(spec)?;
    bundle::build(&BuildOptions {
        spec: &spec,
        source_date_epoch: EPOCH,
        keys,
        out,
        progress: &NoProgress,
        cancel: &Cancel::new(),
        staging_memory: bundle::DEFAULT_STAGING_MEMORY,
    })
}

impl Fixture {
    /// Builds a fixture with trees of about `tree_bytes` each.
    pub fn new(tree_bytes: u64) -> Fixture {
        Fixture::with_spec(tree_bytes, "")
    }

    /// Like [`Fixture::new`], with `extra` TOML appended to the spec.
    pub fn with_spec(tree_bytes: u64, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let spec_path = write_inputs(dir.path(), tree_bytes);
        let mut text = std::fs::read_to_string(&spec_path).unwrap();
        text.push_str(extra);
        std::fs::write(&spec_path, text).unwrap();
        let key = test_key(1);
        let bundle = dir.path().join("out.qimg");
        build(&spec_path, &bundle, std::slice::from_ref(&key)).unwrap();
        let bytes = std::fs::read(&bundle).unwrap();
        Fixture {
            spec: ReleaseSpec::load(&spec_path).unwrap(),
            dir,
            bundle,
            bytes,
            key,
        }
    }

    /// The trusted key set for this fixture.
    pub fn trusted(&self) -> qimg::TrustedKeys {
        qimg::TrustedKeys::new([self.key.public()])
    }
}

/// Reads and fully verifies bundle bytes with `keys`; returns the error code on failure.
pub fn verify_bytes(bytes: &[u8], keys: &qimg::TrustedKeys) -> Result<usize, qimg::Error> {
    let (reader, _) = qimg::BundleReader::open_verified(bytes, keys)?;
    Ok(reader.finish(&NoProgress)?.len())
}

/// A small UKI built from the real systemd stub, with `IMAGE_ID=<product>` and
/// `IMAGE_VERSION=<version>` (the kernel is a stand-in: enough for the loader's model,
/// not for booting).
pub fn small_uki(product: &str, version: &str) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("uki.efi");
    sample::write_uki(
        &p,
        Path::new(STUB),
        8192,
        &mut sample::Rng::new(1),
        product,
        version,
    )
    .expect("building a UKI");
    std::fs::read(p).unwrap()
}

/// A small node layout for tests: 64 MiB ESP, 40 MiB roots, 2 MiB verity.
pub fn small_layout(product: &str) -> bootctl::layout::LayoutSpec {
    bootctl::layout::LayoutSpec {
        product: product.into(),
        esp_mib: 64,
        root_mib: 40,
        verity_mib: 2,
        min_data_mib: 8,
    }
}

/// A sparse disk image `dir/name` of `size` bytes with `spec`'s layout written.
pub fn layout_disk(
    dir: &Path,
    name: &str,
    size: u64,
    spec: &bootctl::layout::LayoutSpec,
) -> (PathBuf, std::fs::File, bootctl::table::Table) {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(size).unwrap();
    let t = bootctl::table::create(&mut f, &spec.plan(size).unwrap()).unwrap();
    assert_eq!(t.recovered, None);
    (path, f, t)
}

/// The ESP's byte range (start, length) in a table with the standard layout.
pub fn esp_range(t: &bootctl::table::Table) -> (u64, u64) {
    t.esp_range().expect("the standard layout has an ESP")
}

/// Formats the ESP of a standard-layout disk and mounts it.
pub fn formatted_esp(
    mut f: std::fs::File,
    t: &bootctl::table::Table,
    volume_id: u32,
) -> bootctl::esp::ImageEsp<std::fs::File> {
    let (start, len) = esp_range(t);
    bootctl::esp::format(&mut f, start, len, volume_id).unwrap();
    bootctl::esp::ImageEsp::open(f, start, len).unwrap()
}

/// fsck.vfat -n on the ESP cut out of the image (dosfstools cannot take an offset).
pub fn fsck(path: &Path, start: u64, len: u64) {
    let mut buf = vec![0u8; len as usize];
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    f.read_exact(&mut buf).unwrap();
    let cut = path.with_extension("esp");
    std::fs::write(&cut, &buf).unwrap();
    let out = run(Command::new("fsck.vfat").arg("-n").arg(&cut));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Fix") && !text.contains("Expected") && !text.contains("uninitialized"),
        "{text}"
    );
}

/// `mdir` of `dir` on the FAT file system at byte `start` of the image.
pub fn mdir(path: &Path, start: u64, dir: &str) -> String {
    let out = run(Command::new("mdir")
        .arg("-i")
        .arg(format!("{}@@{start}", path.display()))
        .arg(format!("::/{dir}")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
