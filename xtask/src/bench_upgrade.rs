//! `cargo xtask bench upgrade`: the prepare of a platform upgrade on a simulated
//! node (`qq upgrade_cluster prepare`: verify the bundle, stream the platform root
//! into slot B, stage and extract the container, stage the UKI) against the same
//! work as one streaming pipeline of standard tools on the same input (minisign -V
//! of the manifest; per payload `tar -xOf | tee >(openssl dgst) | zstd -dc | tee
//! >(openssl dgst) | dd conv=fsync` into the slot, or a file; unsquashfs of the
//! container), which reads the bundle once; then the downtime of instant upgrades
//! (container swaps) as `qq` measures and reports it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{
    Opts, bundle_cmd, measure, median, release_build, settle, sh_check_manifest, sh_quote,
    sh_stream_member,
};
use crate::{step, target_dir};

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
        self.poweroff_node(&self.node);
    }

    /// Powers off the simulated node in `dir` (its container process ends).
    pub(crate) fn poweroff_node(&self, dir: &Path) {
        if dir.exists() {
            let _ = Command::new(&self.qq)
                .arg("--node")
                .arg(dir)
                .arg("sim_poweroff")
                .status();
        }
    }

    /// A simulated node in `dir` from the factory disk image [`Lab::fresh_node`]
    /// made last.
    pub(crate) fn sim_node(&self, dir: &Path) -> Result<(), String> {
        step(
            "node",
            Command::new(&self.qq)
                .args(["sim_create", "--model", "bench", "--dir"])
                .arg(dir)
                .arg("--disk")
                .arg(self.w.join("disk.img"))
                .arg("--bundle")
                .arg(&self.factory)
                .arg("--key")
                .arg(self.w.join("k.pub"))
                .stdout(Stdio::null()),
        )
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
        self.sim_node(&self.node)?;
        settle();
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.poweroff();
    }
}

/// The streaming baseline for a prepare of `bundle` (manifest `m`) into the slot
/// at byte `root_at` of `disk`, as one bash script run in `x`.
fn streaming_script(
    bundle: &Path,
    m: &qimg::Manifest,
    x: &Path,
    public: &Path,
    disk: &Path,
    root_at: u64,
) -> String {
    let mut s = format!(
        "set -euo pipefail\ncd {}\n{}",
        sh_quote(x),
        sh_check_manifest(bundle, public)
    );
    for c in &m.components {
        let member = c.member_name();
        let sink = if c.kind.name() == "platform-root" {
            format!(
                "dd of={} bs=1M seek={root_at} oflag=seek_bytes conv=notrunc,fsync status=none",
                sh_quote(disk)
            )
        } else {
            format!("cat > '{}.plain'", c.name)
        };
        s.push_str(&sh_stream_member(
            bundle,
            &member,
            member.ends_with(".zst"),
            &c.name,
            &sink,
        ));
    }
    if let Some(c) = m.components.iter().find(|c| c.kind.name() == "container") {
        s.push_str(&format!(
            "unsquashfs -q -n -d rootfs '{}.plain' > /dev/null\n",
            c.name
        ));
    }
    s
}

pub fn upgrade(o: &Opts) -> Result<(), String> {
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
        let root_at = {
            let mut f = std::fs::File::open(&disk).map_err(io)?;
            let t = bootctl::table::read(&mut f).map_err(|e| e.to_string())?;
            let p =
                bootctl::slot::parts(&t, bootctl::layout::Slot::B).map_err(|e| e.to_string())?;
            p.root.1
        };
        let m = qimg::BundleReader::open(std::io::BufReader::new(
            std::fs::File::open(&big).map_err(io)?,
        ))
        .map_err(|e| e.to_string())?
        .manifest()
        .clone();
        let _ = std::fs::remove_dir_all(&x);
        std::fs::create_dir_all(&x).map_err(io)?;
        settle();
        // One streaming pass per payload, as a release engineer scripts it: tar
        // extracts the member to a pipe, openssl hashes the stored bytes, zstd
        // decompresses (compressed payloads only), openssl hashes the content, dd
        // writes the slot with fsync. The manifest's signature is checked first.
        let script = streaming_script(&big, &m, &x, &w.join("k.pub"), &disk, root_at);
        let t = measure(Command::new("bash").arg("-c").arg(&script))?;
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
        "platform prepare, {} MiB platform root + 8 MiB container, median of {} runs:\n  qq upgrade_cluster prepare (verify, slot B, stage + extract container, stage entry): {a:.2} s, peak RSS {:.0} MiB\n  streaming pipeline (minisign -V; per payload tar -xOf | tee >(openssl dgst) | zstd -dc | tee >(openssl dgst) | dd conv=fsync; unsquashfs of the container): {b:.2} s\n  ratio ours/pipeline: {:.2}x (target <= 1.00)\ninstant upgrades ({} swaps, process runtime): downtime median {:.1} ms, max {max:.1} ms (reference: < 30 s)",
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
