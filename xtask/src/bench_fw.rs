//! `cargo xtask bench firmware`: `qfirmware flash` of a firmware payload from a
//! signed bundle onto a flash device file, against the same work as one streaming
//! pipeline of standard tools on the same input (minisign -V of the manifest; `tar
//! -xOf | tee >(openssl dgst) | zstd -dc | tee >(openssl dgst) | dd conv=fsync`;
//! the device read back and hashed).

use std::io::Write;
use std::process::Command;

use crate::harness::{
    Opts, bundle_cmd, measure, median, release_build, settle, sh_check_manifest, sh_quote,
    sh_stream_member,
};
use crate::{step, target_dir};

pub fn firmware(o: &Opts) -> Result<(), String> {
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
        // One streaming pass, as a release engineer scripts it: the manifest's
        // signature, then tar to a pipe, SHA-256 of the stored bytes, zstd -dc,
        // SHA-256 of the content, dd with fsync onto the device; then the device
        // read back and hashed (qfirmware reads back what it wrote).
        let m = qimg::BundleReader::open(std::io::BufReader::new(
            std::fs::File::open(w.join("fw.qimg")).map_err(io)?,
        ))
        .map_err(|e| e.to_string())?
        .manifest()
        .clone();
        let c = m.components.first().ok_or("no payload")?;
        let member = c.member_name();
        let script = format!(
            "set -euo pipefail\ncd {}\n{}{}head -c {size} {} | openssl dgst -sha256 > readback.sha256\n",
            sh_quote(&x),
            sh_check_manifest(&w.join("fw.qimg"), &w.join("k.pub")),
            sh_stream_member(
                &w.join("fw.qimg"),
                &member,
                member.ends_with(".zst"),
                "fw",
                &format!(
                    "dd of={} bs=64K conv=notrunc,fsync status=none",
                    sh_quote(&dev)
                ),
            ),
            sh_quote(&dev),
        );
        let t = measure(Command::new("bash").arg("-c").arg(&script))?;
        let (a, b) = (
            std::fs::read_to_string(x.join("fw.sha256")).map_err(io)?,
            std::fs::read_to_string(x.join("readback.sha256")).map_err(io)?,
        );
        let hex = |l: &str| l.rsplit(' ').next().unwrap_or("").trim().to_owned();
        if hex(&a) != hex(&b) || hex(&a) != c.sha256.to_string() {
            return Err(format!("the pipeline's write differs: {a} {b}"));
        }
        theirs.push(t.wall);
    }
    let (a, b) = (median(ours), median(theirs));
    println!(
        "firmware flash, {} MiB payload, median of {} runs:\n  qfirmware flash (verify bundle, write, fsync, read back, journal): {a:.2} s, peak RSS {:.0} MiB\n  streaming pipeline (minisign -V; tar -xOf | tee >(openssl dgst) | zstd -dc | tee >(openssl dgst) | dd conv=fsync; read back | openssl dgst): {b:.2} s\n  ratio ours/pipeline: {:.2}x",
        o.size_mib,
        o.runs,
        median(rss),
        a / b
    );
    let _ = std::fs::remove_dir_all(&w);
    Ok(())
}
