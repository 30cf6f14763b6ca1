//! `cargo xtask bench cloud`: `qcloud publish` of a generated 8 GiB sparse image
//! holding 1 GiB of data to a local moto server (fresh per run, through
//! `cloud/tests/moto_launch.py` so EBS reports the real block size), against
//! coldsnap's `upload` of the same image to the same emulator (the standard tool;
//! installed with `cargo install` into `~/.cache/qimg/coldsnap` when missing) and the
//! time to merely read and hash the data (`qcloud scan`, the limit on this side of
//! the wire). moto is single-threaded Python (~160 MiB/s on loopback,
//! notes/aws-emulator.md), so upload figures are the emulator's as much as ours.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};

use crate::harness::{Opts, measure, median, release_build, settle};
use crate::{deps, target_dir};

fn io(e: std::io::Error) -> String {
    e.to_string()
}

struct Moto(std::process::Child, String);

impl Moto {
    fn start(server: &std::path::Path) -> Result<Moto, String> {
        let mut child = Command::new(server.with_file_name("python3"))
            .arg(crate::root().join("cloud/tests/moto_launch.py"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", server.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(u) = l.split("Running on ").nth(1) {
                        break u.trim().to_owned();
                    }
                }
                _ => return Err("moto_server exited before listening".into()),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Moto(child, url))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// coldsnap, installed with cargo into the user's cache when missing.
fn coldsnap() -> Result<std::path::PathBuf, String> {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let root = std::path::Path::new(&home).join(".cache/qimg/coldsnap");
    let bin = root.join("bin/coldsnap");
    if !bin.is_file() {
        eprintln!(
            "xtask: installing coldsnap with cargo into {}",
            root.display()
        );
        let ok = crate::cargo()
            .args(["install", "--locked", "coldsnap", "--root"])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("cargo install coldsnap failed".into());
        }
    }
    Ok(bin)
}

pub fn cloud(o: &Opts) -> Result<(), String> {
    let server = deps::ensure_moto()?;
    let coldsnap = coldsnap()?;
    release_build(&["cloud"])?;
    let qcloud = target_dir().join("release/qcloud");
    let w = o.dir.join("cloud");
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(&w).map_err(io)?;
    let img = w.join("disk.raw");
    let data_mib = o.size_mib.min(8192);
    {
        // 8 GiB, data in 16 runs spread over the image.
        let mut f = std::fs::File::create(&img).map_err(io)?;
        f.set_len(8 << 30).map_err(io)?;
        let mut rng = imagebuild::sample::Rng::new(9);
        let run = (data_mib << 20) / 16;
        let mut buf = vec![0u8; run as usize];
        for i in 0..16u64 {
            rng.fill(&mut buf);
            f.seek(SeekFrom::Start(i * (512 << 20))).map_err(io)?;
            f.write_all(&buf).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
    }
    let (mut up, mut cs, mut hash, mut blocks) = (vec![], vec![], vec![], 0);
    for run in 1..=o.runs {
        eprintln!("xtask: run {run}/{}", o.runs);
        let moto = Moto::start(&server)?;
        settle();
        let out = w.join(format!("ami-{run}.json"));
        let u = measure(
            Command::new(&qcloud)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .args(["-q", "publish", "--endpoint-url", &moto.1, "--poll", "1"])
                .arg("--image")
                .arg(&img)
                .args(["--product", "bench", "--version", "1.0", "--name", "bench"])
                .args(["--regions", "us-east-1", "--output"])
                .arg(&out)
                .stdout(Stdio::null()),
        )?;
        settle();
        // coldsnap to the same (fresh state) emulator: upload only, no AMI.
        let c = measure(
            Command::new(&coldsnap)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL", &moto.1)
                .args(["upload", "--no-progress", "--omit-zero-blocks"])
                .arg(&img)
                .stdout(Stdio::null()),
        )?;
        cs.push(c.wall);
        drop(moto);
        let p: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).map_err(io)?).map_err(|e| e.to_string())?;
        blocks = p["blocks_sent"].as_u64().ok_or("no blocks_sent")?;
        up.push(u.wall);
        settle();
        let h = measure(
            Command::new(&qcloud)
                .args(["scan", "--image"])
                .arg(&img)
                .stdout(Stdio::null()),
        )?;
        hash.push(h.wall);
    }
    let (a, c, b) = (median(up), median(cs), median(hash));
    let mib = (blocks * (512 << 10)) as f64 / (1 << 20) as f64;
    println!(
        "cloud upload, 8 GiB sparse image with {data_mib} MiB of data, median of {} runs:\n  qcloud publish to moto on 127.0.0.1 (scan, {blocks} blocks sent, complete, register): {a:.2} s ({:.0} MiB/s)\n  coldsnap upload to the same emulator (upload only): {c:.2} s\n  ratio qcloud/coldsnap: {:.2}x\n  qcloud scan (read + SHA-256 of the same blocks, no network): {b:.2} s ({:.0} MiB/s)\n  upload / read-and-hash: {:.1}x",
        o.runs,
        mib / a,
        a / c,
        mib / b,
        a / b
    );
    let _ = std::fs::remove_dir_all(&w);
    Ok(())
}
