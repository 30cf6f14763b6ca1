//! `cargo xtask bench upgrade`: the prepare of a platform upgrade on a simulated
//! node (`qq upgrade_cluster prepare`: verify the bundle, stream the platform root
//! into slot B, stage and extract the container, stage the UKI) against the same
//! work with standard tools on the same input (tar, minisign, sha256sum, zstd -d,
//! dd with fsync into the slot's partitions, unsquashfs of the container); then the
//! downtime of instant upgrades (container swaps) as `qq` measures and reports it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{Opts, bundle_cmd, measure, median, release_build, settle};
use crate::{deps, step, target_dir};

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// Release inputs: `tree_mib` of platform root, a small container with an /entry.
fn inputs(dir: &Path, version: &str, platform: &str, tree_mib: u64) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(dir);
    imagebuild::sample::generate_tree(&dir.join("rootfs"), tree_mib << 20, 5, platform)
        .map_err(io)?;
    imagebuild::sample::generate_tree(&dir.join("container"), 8 << 20, 6, version).map_err(io)?;
    let entry = dir.join("container/entry");
    std::fs::write(
        &entry,
        "#!/bin/sh\necho ok > \"$QIMG_HEALTH_FILE\"\nexec sleep 1000000\n",
    )
    .map_err(io)?;
    std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io)?;
    let mut kernel = vec![0u8; 8192];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.join("vmlinuz"), kernel).map_err(io)?;
    std::fs::write(
        dir.join("os-release"),
        format!("ID=bench\nIMAGE_ID=bench\nIMAGE_VERSION={platform}\n"),
    )
    .map_err(io)?;
    let spec = dir.join("release.toml");
    std::fs::write(
        &spec,
        format!(
            "product = \"bench\"\nversion = \"{version}\"\nplatform_version = \"{platform}\"\n\
             target = \"onprem\"\ncompatible_models = [\"bench\"]\nmin_installed_version = \"1.0\"\n\
             [platform]\nroot = \"rootfs\"\nkernel = \"vmlinuz\"\nos_release = \"os-release\"\n\
             cmdline = \"console=ttyS0\"\n[container]\nroot = \"container\"\n"
        ),
    )
    .map_err(io)?;
    Ok(spec)
}

/// The one file under `dir` whose name starts with `prefix`.
fn member(dir: &Path, prefix: &str) -> Result<PathBuf, String> {
    std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .ok_or_else(|| format!("no {prefix}* in {}", dir.display()))
}

/// A workspace with a signing key, a small factory release and a simulated node
/// made from it (fresh on demand); the node's container stops when it is dropped.
pub(crate) struct Lab {
    /// The working directory.
    pub w: PathBuf,
    /// Release binaries.
    pub imagebuild: PathBuf,
    pub qq: PathBuf,
    /// The simulated node's directory.
    pub node: PathBuf,
    pub factory: PathBuf,
    root_mib: String,
}

impl Lab {
    /// In `dir`, for releases up to `size_mib` of platform tree, with release builds.
    pub(crate) fn new(dir: &Path, size_mib: u64) -> Result<Lab, String> {
        Lab::with_bins(dir, size_mib, &target_dir().join("release"))
    }

    /// The same with the binaries in `rel`.
    pub(crate) fn with_bins(dir: &Path, size_mib: u64, rel: &Path) -> Result<Lab, String> {
        let w = dir.to_owned();
        let _ = std::fs::remove_dir_all(&w);
        std::fs::create_dir_all(&w).map_err(io)?;
        imagebuild::keys::generate(&w.join("k")).map_err(|e| e.to_string())?;
        let mut lab = Lab {
            node: w.join("node"),
            w,
            imagebuild: rel.join("imagebuild"),
            qq: rel.join("qq"),
            factory: PathBuf::new(),
            root_mib: (size_mib + size_mib / 3 + 16).to_string(),
        };
        lab.factory = lab.build("factory", "1.0.0", "1.0", 4)?;
        Ok(lab)
    }

    /// A signed release bundle `name`.
    pub(crate) fn build(&self, name: &str, v: &str, p: &str, mib: u64) -> Result<PathBuf, String> {
        let spec = inputs(&self.w.join(format!("src-{name}")), v, p, mib)?;
        let out = self.w.join(format!("{name}.qimg"));
        step(
            &format!("bundle {name}"),
            &mut bundle_cmd(&self.imagebuild, &spec, &self.w.join("k.key"), &out),
        )?;
        Ok(out)
    }

    fn poweroff(&self) {
        if self.node.exists() {
            let _ = Command::new(&self.qq)
                .arg("--node")
                .arg(&self.node)
                .arg("sim_poweroff")
                .status();
        }
    }

    /// A new simulated node of the factory release.
    pub(crate) fn fresh_node(&self) -> Result<(), String> {
        if self.node.exists() {
            self.poweroff();
            std::fs::remove_dir_all(&self.node).map_err(io)?;
        }
        step(
            "disk",
            Command::new(&self.imagebuild)
                .args([
                    "-q",
                    "disk",
                    "--esp-mib",
                    "64",
                    "--data-mib",
                    "16",
                    "--root-mib",
                ])
                .arg(&self.root_mib)
                .arg("--pubkey")
                .arg(self.w.join("k.pub"))
                .arg("--bundle")
                .arg(&self.factory)
                .arg("--out")
                .arg(self.w.join("disk.img"))
                .stdout(Stdio::null()),
        )?;
        step(
            "node",
            Command::new(&self.qq)
                .args(["sim_create", "--model", "bench", "--dir"])
                .arg(&self.node)
                .arg("--disk")
                .arg(self.w.join("disk.img"))
                .arg("--bundle")
                .arg(&self.factory)
                .arg("--key")
                .arg(self.w.join("k.pub"))
                .stdout(Stdio::null()),
        )?;
        settle();
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.poweroff();
    }
}

pub fn upgrade(o: &Opts) -> Result<(), String> {
    deps::ensure(&[
        ("minisign", "minisign"),
        ("zstd", "zstd"),
        ("tar", "tar"),
        ("squashfs-tools", "unsquashfs"),
    ])?;
    deps::ensure_files(deps::TEST_FILES)?;
    release_build(&["imagebuild", "qq"])?;
    let lab = Lab::new(&o.dir.join("upgrade"), o.size_mib)?;
    let (w, qq, node) = (lab.w.clone(), lab.qq.clone(), lab.node.clone());
    let build = |name: &str, v: &str, p: &str, mib: u64| lab.build(name, v, p, mib);
    let fresh_node = || lab.fresh_node();
    let big = build("platform", "2.0.0", "2.0", o.size_mib)?;
    let x = w.join("x");
    let (mut ours, mut theirs, mut rss) = (vec![], vec![], vec![]);
    for run in 1..=o.runs {
        eprintln!("xtask: run {run}/{}", o.runs);
        fresh_node()?;
        let u = measure(
            Command::new(&qq)
                .arg("--node")
                .arg(&node)
                .args(["--quiet", "upgrade_cluster", "prepare", "--path"])
                .arg(&big)
                .stdout(Stdio::null()),
        )?;
        ours.push(u.wall);
        rss.push(u.max_rss_kib as f64 / 1024.0);

        // The standard tools on the same bundle and disk.
        fresh_node()?;
        let disk = node.join("disk.img");
        let (root_at, verity_at) = {
            let mut f = std::fs::File::open(&disk).map_err(io)?;
            let t = bootctl::table::read(&mut f).map_err(|e| e.to_string())?;
            let p =
                bootctl::slot::parts(&t, bootctl::layout::Slot::B).map_err(|e| e.to_string())?;
            (p.root.1, p.verity.1)
        };
        let m = qimg::BundleReader::open(std::io::BufReader::new(
            std::fs::File::open(&big).map_err(io)?,
        ))
        .map_err(|e| e.to_string())?
        .manifest()
        .clone();
        let (root_c, verity) = m.platform_root().ok_or("no platform root")?;
        let hash_offset = verity.hash_offset;
        let _ = std::fs::remove_dir_all(&x);
        std::fs::create_dir_all(&x).map_err(io)?;
        settle();
        let mut t = measure(Command::new("tar").arg("-xf").arg(&big).arg("-C").arg(&x))?;
        t = t.add(measure(
            Command::new("minisign")
                .args(["-Vq", "-p"])
                .arg(w.join("k.pub"))
                .arg("-m")
                .arg(x.join("manifest.json"))
                .arg("-x")
                .arg(member(&x.join("signatures"), "")?),
        )?);
        let payload = x.join("payload");
        for c in &m.components {
            let stored = member(&payload, &c.name)?;
            t = t.add(measure(
                Command::new("sha256sum").arg(&stored).stdout(Stdio::null()),
            )?);
            let plain = x.join(format!("{}.plain", c.name));
            if stored.extension().is_some_and(|e| e == "zst") {
                t = t.add(measure(
                    Command::new("zstd")
                        .args(["-d", "-q", "-f", "-T0"])
                        .arg(&stored)
                        .arg("-o")
                        .arg(&plain),
                )?);
                t = t.add(measure(
                    Command::new("sha256sum").arg(&plain).stdout(Stdio::null()),
                )?);
            } else {
                std::fs::rename(&stored, &plain).map_err(io)?;
            }
        }
        let rootfs = x.join(format!("{}.plain", root_c.name));
        let dd = |skip_bytes: u64, count: Option<u64>, seek: u64| {
            let mut c = Command::new("dd");
            c.arg(format!("if={}", rootfs.display()))
                .arg(format!("of={}", disk.display()))
                .args(["bs=1M", "conv=notrunc,fsync", "status=none"])
                .arg("iflag=skip_bytes,count_bytes")
                .arg("oflag=seek_bytes")
                .arg(format!("skip={skip_bytes}"))
                .arg(format!("seek={seek}"));
            if let Some(n) = count {
                c.arg(format!("count={n}"));
            }
            c
        };
        t = t.add(measure(&mut dd(0, Some(hash_offset), root_at))?);
        t = t.add(measure(&mut dd(hash_offset, None, verity_at))?);
        let container = m
            .components
            .iter()
            .find(|c| c.kind.name() == "container")
            .ok_or("no container")?;
        t = t.add(measure(
            Command::new("unsquashfs")
                .args(["-q", "-n", "-d"])
                .arg(x.join("rootfs"))
                .arg(x.join(format!("{}.plain", container.name)))
                .stdout(Stdio::null()),
        )?);
        theirs.push(t.wall);
    }
    let (a, b) = (median(ours), median(theirs));

    // Instant upgrades: the downtime qq measures (old container stopped → new healthy).
    fresh_node()?;
    let mut downtimes = vec![];
    for i in 1..=o.runs.max(5) {
        let v = format!("1.0.{i}");
        let b = build(&format!("instant-{i}"), &v, "1.0", 4)?;
        let out = Command::new(&qq)
            .arg("--node")
            .arg(&node)
            .args(["--quiet", "upgrade_cluster", "--path"])
            .arg(&b)
            .output()
            .map_err(io)?;
        let s: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("qq output: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        if s["state"] != "UPGRADE_COMMITTED" {
            return Err(format!("instant upgrade to {v} did not commit: {s}"));
        }
        downtimes.push(s["downtime_ms"].as_f64().ok_or("no downtime_ms")?);
    }
    let _ = Command::new(&qq)
        .arg("--node")
        .arg(&node)
        .arg("sim_poweroff")
        .status();
    let max = downtimes.iter().copied().fold(0.0, f64::max);
    println!(
        "platform prepare, {} MiB platform root + 8 MiB container, median of {} runs:\n  qq upgrade_cluster prepare (verify, slot B, stage + extract container, stage entry): {a:.2} s, peak RSS {:.0} MiB\n  tar + minisign + sha256sum + zstd -d + sha256sum + dd fsync + unsquashfs: {b:.2} s\n  ratio ours/standard: {:.2}x\ninstant upgrades ({} swaps, process runtime): downtime median {:.1} ms, max {max:.1} ms (reference: < 30 s)",
        o.size_mib,
        o.runs,
        median(rss),
        a / b,
        downtimes.len(),
        median(downtimes.clone()),
    );
    let _ = std::fs::remove_dir_all(&w);
    Ok(())
}
