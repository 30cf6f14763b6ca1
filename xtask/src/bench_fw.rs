//! `cargo xtask bench firmware`: `qfirmware flash` of a firmware payload from a
//! signed bundle onto a flash device file, against the same work with standard
//! tools (tar, minisign, zstd, sha256sum, dd with fsync, cmp), on the same input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Opts, bundle_cmd, measure, median, release_build, settle};
use crate::{deps, step, target_dir};

/// The one file in `dir` (the bundle has one signature and one payload).
fn only_file(dir: &Path) -> Result<PathBuf, String> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    match &files[..] {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "{}: expected one file, found {files:?}",
            dir.display()
        )),
    }
}

pub fn firmware(o: &Opts) -> Result<(), String> {
    deps::ensure(&[("minisign", "minisign"), ("zstd", "zstd"), ("tar", "tar")])?;
    release_build(&["imagebuild", "firmware"])?;
    let io = |e: std::io::Error| e.to_string();
    let rel = target_dir().join("release");
    let w = o.dir.join("firmware");
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(&w).map_err(io)?;
    let size = o.size_mib << 20;
    let mut rng = imagebuild::sample::Rng::new(7);
    imagebuild::sample::write_random(&w.join("fw.bin"), size, &mut rng).map_err(io)?;
    std::fs::write(
        w.join("release.toml"),
        "product = \"bench\"\nversion = \"1.0\"\nplatform_version = \"1.0\"\ntarget = \"onprem\"\n\
         compatible_models = [\"bench\"]\nmin_installed_version = \"1.0\"\n\
         [[firmware]]\ncomponent_id = \"dev\"\nversion = \"2.0.0\"\nversion_format = \"triplet\"\nfile = \"fw.bin\"\n",
    )
    .map_err(io)?;
    imagebuild::keys::generate(&w.join("k")).map_err(|e| e.to_string())?;
    step(
        "bundle",
        &mut bundle_cmd(
            &rel.join("imagebuild"),
            &w.join("release.toml"),
            &w.join("k.key"),
            &w.join("fw.qimg"),
        ),
    )?;
    let dev = w.join("mtd.img");
    let ver = w.join("version");
    let cfg = serde_json::json!({"dev": {
        "probe": ["cat", ver],
        "backend": {"kind": "flash-file", "path": dev, "erase_block": 65536}
    }});
    std::fs::write(w.join("devices.json"), cfg.to_string()).map_err(io)?;
    let x = w.join("x");

    let (mut ours, mut theirs, mut rss) = (vec![], vec![], vec![]);
    for run in 1..=o.runs {
        eprintln!("xtask: run {run}/{}", o.runs);
        let fresh = || -> Result<(), String> {
            let mut f = std::fs::File::create(&dev).map_err(io)?;
            let mib = vec![0xffu8; 1 << 20];
            for _ in 0..=o.size_mib {
                f.write_all(&mib).map_err(io)?;
            }
            std::fs::write(&ver, "1.0.0\n").map_err(io)?;
            let _ = std::fs::remove_dir_all(w.join("journal"));
            let _ = std::fs::remove_dir_all(&x);
            settle();
            Ok(())
        };
        fresh()?;
        let u = measure(
            Command::new(rel.join("qfirmware"))
                .arg("--root")
                .arg(&w)
                .arg("--journal")
                .arg(w.join("journal"))
                .arg("--devices")
                .arg(w.join("devices.json"))
                .arg("--esp")
                .arg(w.join("no-esp"))
                .args(["flash", "--bundle"])
                .arg(w.join("fw.qimg"))
                .arg("--pubkey")
                .arg(w.join("k.pub"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )?;
        // Checked with cmp, not in this process: a child's peak RSS as wait4 reports
        // it starts from its parent's (posix_spawn shares the address space until
        // exec), so the parent must stay small.
        let same = Command::new("cmp")
            .arg("-s")
            .arg("-n")
            .arg(size.to_string())
            .arg(w.join("fw.bin"))
            .arg(&dev)
            .status()
            .map_err(io)?;
        if !same.success() {
            return Err("qfirmware did not write the payload".into());
        }
        ours.push(u.wall);
        rss.push(u.max_rss_kib as f64 / 1024.0);

        fresh()?;
        std::fs::create_dir_all(&x).map_err(io)?;
        let mut t = measure(
            Command::new("tar")
                .arg("-xf")
                .arg(w.join("fw.qimg"))
                .arg("-C")
                .arg(&x),
        )?;
        let s = only_file(&x.join("signatures"))?;
        t = t.add(measure(
            Command::new("minisign")
                .args(["-Vq", "-p"])
                .arg(w.join("k.pub"))
                .arg("-m")
                .arg(x.join("manifest.json"))
                .arg("-x")
                .arg(&s),
        )?);
        let stored = only_file(&x.join("payload"))?;
        let plain = x.join("fw.plain");
        t = t.add(measure(
            Command::new("sha256sum")
                .arg(&stored)
                .stdout(std::process::Stdio::null()),
        )?);
        t = t.add(measure(
            Command::new("zstd")
                .args(["-d", "-q", "-f"])
                .arg(&stored)
                .arg("-o")
                .arg(&plain),
        )?);
        t = t.add(measure(
            Command::new("sha256sum")
                .arg(&plain)
                .stdout(std::process::Stdio::null()),
        )?);
        t = t.add(measure(
            Command::new("dd")
                .arg(format!("if={}", plain.display()))
                .arg(format!("of={}", dev.display()))
                .args(["bs=64K", "conv=notrunc,fsync", "status=none"]),
        )?);
        t = t.add(measure(
            Command::new("cmp")
                .arg("-n")
                .arg(size.to_string())
                .arg(&plain)
                .arg(&dev),
        )?);
        theirs.push(t.wall);
    }
    let (a, b) = (median(ours), median(theirs));
    println!(
        "firmware flash, {} MiB payload, median of {} runs:\n  qfirmware flash (verify bundle, write, fsync, read back, journal): {a:.2} s, peak RSS {:.0} MiB\n  tar + minisign + sha256sum + zstd -d + sha256sum + dd fsync + cmp: {b:.2} s\n  ratio ours/standard: {:.2}x",
        o.size_mib,
        o.runs,
        median(rss),
        a / b
    );
    let _ = std::fs::remove_dir_all(&w);
    Ok(())
}
