//! `cargo xtask bench bundle`: our bundle build and verify against the same work
//! done with the standard tools, on the same input, in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{
    Opts, Usage, bundle_cmd, first_line, host, measure, median, parse, release_build, settle,
};
use crate::{root, step, target_dir};

pub fn main(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("bundle") => bundle(&parse(&args[1..])?),
        Some("firmware") => crate::bench_fw::firmware(&parse(&args[1..])?),
        Some("upgrade") => crate::bench_upgrade::upgrade(&parse(&args[1..])?),
        Some("cloud") => crate::bench_cloud::cloud(&parse(&args[1..])?),
        Some("agent") => crate::bench_agent::agent(&parse(&args[1..])?),
        Some("cluster") => crate::bench_cluster::cluster(&args[1..]),
        Some("distribute") => crate::bench_distribute::distribute(&args[1..]),
        Some("eta") => crate::bench_eta::eta(&args[1..]),
        _ => Err(
            "usage: cargo xtask bench bundle|firmware|upgrade|cloud|agent|cluster|distribute|eta [--size MIB] [--nodes N] [--level N] [--runs N] [--dir DIR]"
                .into(),
        ),
    }
}

fn machine() -> String {
    format!(
        "{}; {}; {}; {}; {}",
        host(),
        first_line(Command::new("mksquashfs").arg("-version")),
        first_line(Command::new("veritysetup").arg("--version")),
        first_line(Command::new("zstd").arg("--version")),
        first_line(Command::new("openssl").arg("version")),
    )
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The bench's input in `o.dir`: a generated `--size` MiB tree and a 16 MiB UKI
/// (made once, kept across runs: `.complete` marks it whole), and the two release
/// specs (every payload zstd; filesystem images stored as is).
fn bench_input(o: &Opts, exe: &Path) -> Result<PathBuf, String> {
    let io = |e: std::io::Error| e.to_string();
    let input = o.dir.join(format!("input-{}m", o.size_mib));
    if !input.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&input);
        eprintln!(
            "xtask: generating a {} MiB tree in {}",
            o.size_mib,
            input.display()
        );
        let n =
            imagebuild::sample::generate_tree(&input.join("rootfs"), o.size_mib << 20, 42, "1.0")
                .map_err(io)?;
        // A 16 MiB UKI, built by `imagebuild uki` in its own process: building it in
        // this one would raise the peak RSS wait4 reports for every later child
        // (posix_spawn children start from the parent's).
        let mut rng = imagebuild::sample::Rng::new(43);
        let kernel = input.join("vmlinuz");
        imagebuild::sample::write_random(&kernel, 16 << 20, &mut rng).map_err(io)?;
        let mut header = imagebuild::sample::stand_in_kernel(0, &mut rng);
        header.truncate(1024);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&kernel)
                .map_err(io)?;
            f.write_all(&header).map_err(io)?;
        }
        std::fs::write(input.join("os-release"), "ID=bench\nIMAGE_VERSION=1.0\n").map_err(io)?;
        step(
            "uki",
            Command::new(exe)
                .args([
                    "-q",
                    "uki",
                    "--cmdline",
                    "console=ttyS0",
                    "--uname",
                    "6.1.0-0-amd64",
                ])
                .arg("--kernel")
                .arg(&kernel)
                .arg("--os-release")
                .arg(input.join("os-release"))
                .arg("--out")
                .arg(input.join("uki.efi")),
        )?;
        std::fs::write(input.join(".complete"), n.to_string()).map_err(io)?;
    }
    // Two specs: the default (every payload zstd) and filesystem images stored as is.
    for (file, images) in [("release.toml", "zstd"), ("release-none.toml", "none")] {
        std::fs::write(
            input.join(file),
            format!(
                "product = \"bench\"\nversion = \"1.0\"\nplatform_version = \"1.0\"\ntarget = \"onprem\"\n\
                 compatible_models = [\"bench\"]\nmin_installed_version = \"1.0\"\n\
                 [compression]\nlevel = {}\nimages = \"{images}\"\n\
                 [platform]\nroot = \"rootfs\"\nuki = \"uki.efi\"\n",
                o.level
            ),
        )
        .map_err(io)?;
    }
    Ok(input)
}

/// The fastest honest pipeline a release engineer scripts for the same job, each
/// step measured: squashfs on both cores, dm-verity appended in place, OpenSSL's
/// SHA-256 (SHA-NI) of the image and the UKI, a minisign signature of a manifest
/// of those digests, tar. No second compression of the compressed image.
fn standard_pipeline(
    input: &Path,
    work: &Path,
    level: i32,
    minisign_key: &Path,
    sde: &str,
) -> Result<Vec<(String, Usage)>, String> {
    let io = |e: std::io::Error| e.to_string();
    // The fastest honest pipeline a release engineer scripts for the same job:
    // squashfs on both cores, dm-verity appended in place, OpenSSL's SHA-256
    // (SHA-NI) of the image and the UKI, a minisign signature of a manifest of
    // those digests, tar. No second compression of the compressed image.
    let sq = work.join("root.img");
    for f in ["root.img", "manifest.json", "manifest.minisig", "std.tar"] {
        let _ = std::fs::remove_file(work.join(f));
    }
    settle();
    let mut steps = vec![];
    steps.push((
        "mksquashfs".to_owned(),
        measure(
            Command::new("mksquashfs")
                .arg(input.join("rootfs"))
                .arg(&sq)
                .args(["-comp", "zstd", "-Xcompression-level", &level.to_string()])
                .args([
                    "-b",
                    "131072",
                    "-all-root",
                    "-noappend",
                    "-quiet",
                    "-no-progress",
                ])
                .args(["-mkfs-time", sde, "-all-time", sde]),
        )?,
    ));
    let data = file_size(&sq);
    steps.push((
        "veritysetup format".to_owned(),
        measure(
            Command::new("veritysetup")
                .arg("format")
                .arg(&sq)
                .arg(&sq)
                .arg(format!("--hash-offset={data}"))
                .arg(format!("--salt={}", "ab".repeat(32)))
                .arg("--uuid=01234567-89ab-8def-8123-456789abcdef")
                .stdout(std::process::Stdio::null()),
        )?,
    ));
    let digests = work.join("digests.txt");
    steps.push((
        "openssl dgst -sha256".to_owned(),
        measure(
            Command::new("openssl")
                .args(["dgst", "-sha256"])
                .arg(&sq)
                .arg(input.join("uki.efi"))
                .stdout(std::fs::File::create(&digests).map_err(io)?),
        )?,
    ));
    // The manifest: the digests as JSON (microseconds of work, untimed).
    let manifest: Vec<String> = std::fs::read_to_string(&digests)
        .map_err(io)?
        .lines()
        .map(|l| format!("{:?}", l.rsplit(' ').next().unwrap_or("")))
        .collect();
    std::fs::write(
        work.join("manifest.json"),
        format!("{{\"sha256\": [{}]}}\n", manifest.join(", ")),
    )
    .map_err(io)?;
    steps.push((
        "minisign -S".to_owned(),
        measure(
            Command::new("minisign")
                .args(["-S", "-s"])
                .arg(minisign_key)
                .arg("-m")
                .arg(work.join("manifest.json"))
                .arg("-x")
                .arg(work.join("manifest.minisig"))
                .stdout(std::process::Stdio::null()),
        )?,
    ));
    std::fs::copy(input.join("uki.efi"), work.join("uki.efi")).map_err(io)?;
    steps.push((
        "tar -cf".to_owned(),
        measure(
            Command::new("tar")
                .arg("-cf")
                .arg(work.join("std.tar"))
                .arg("-C")
                .arg(work)
                .args(["manifest.json", "manifest.minisig", "root.img", "uki.efi"]),
        )?,
    ));
    Ok(steps)
}

fn bundle(o: &Opts) -> Result<(), String> {
    release_build(&["imagebuild"])?;
    let exe = target_dir().join("release/imagebuild");
    let io = |e: std::io::Error| e.to_string();
    let input = bench_input(o, &exe)?;
    let work = o.dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io)?;
    let key = work.join("bench");
    imagebuild::keys::generate(&key).map_err(|e| e.to_string())?;
    // The pipeline's minisign key (no password: -W).
    let minisign_key = work.join("pipeline.key");
    step(
        "minisign key",
        Command::new("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(work.join("pipeline.pub"))
            .arg("-s")
            .arg(&minisign_key)
            .stdout(std::process::Stdio::null()),
    )?;
    let ours = work.join("ours.qimg");
    let sde = "1700000000";

    let mut build_ours = vec![];
    let mut build_none = vec![];
    let mut build_std = vec![];
    let mut steps_std: Vec<Vec<(String, Usage)>> = vec![];
    let mut verify_ours = vec![];
    let mut sha = vec![];
    let mut ossl = vec![];
    for run in 1..=o.runs {
        eprintln!("xtask: run {run}/{}", o.runs);
        let _ = std::fs::remove_file(&ours);
        // Each build starts with no dirty pages left by the previous one.
        settle();
        build_ours.push(measure(&mut bundle_cmd(
            &exe,
            &input.join("release.toml"),
            &key.with_extension("key"),
            &ours,
        ))?);

        let none = work.join("none.qimg");
        let _ = std::fs::remove_file(&none);
        settle();
        build_none.push(measure(&mut bundle_cmd(
            &exe,
            &input.join("release-none.toml"),
            &key.with_extension("key"),
            &none,
        ))?);
        let _ = std::fs::remove_file(&none);

        let steps = standard_pipeline(&input, &work, o.level, &minisign_key, sde)?;
        build_std.push(steps.iter().fold(Usage::default(), |a, (_, u)| a.add(*u)));
        steps_std.push(steps);

        let quiet = |c: &mut Command| {
            c.stdout(std::process::Stdio::null());
        };
        let mut v = Command::new(&exe);
        v.args(["verify", "-q"])
            .arg(&ours)
            .arg("--pubkey")
            .arg(key.with_extension("pub"));
        quiet(&mut v);
        verify_ours.push(measure(&mut v)?);
        let mut s = Command::new("sha256sum");
        s.arg(&ours);
        quiet(&mut s);
        sha.push(measure(&mut s)?);
        let mut s = Command::new("openssl");
        s.args(["dgst", "-sha256"]).arg(&ours);
        quiet(&mut s);
        ossl.push(measure(&mut s)?);
    }

    // The machine's limit for this job: the CPU of compression and hashing over
    // the cores, or writing the bundle once, whichever is longer.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let compress = measure(
        Command::new("zstd")
            .args(["-q", "-T1", "-c", "-r", &format!("-{}", o.level)])
            .arg(input.join("rootfs"))
            .stdout(std::process::Stdio::null()),
    )?;
    let hash = measure(
        Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(work.join("root.img"))
            .stdout(std::process::Stdio::null()),
    )?;
    let bundle_mib = file_size(&ours) >> 20;
    let dd_out = work.join("dd.bin");
    settle();
    let dd = measure(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "conv=fdatasync", "status=none"])
            .arg(format!("of={}", dd_out.display()))
            .arg(format!("count={bundle_mib}")),
    )?;
    let _ = std::fs::remove_file(&dd_out);
    let bundle_size = file_size(&ours);
    let mib = bundle_size as f64 / (1 << 20) as f64;
    let wall = |v: &[Usage]| median(v.iter().map(|u| u.wall).collect());
    let cpu = |v: &[Usage]| median(v.iter().map(|u| u.cpu).collect());
    let rss = |v: &[Usage]| v.iter().map(|u| u.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let written =
        |v: &[Usage]| median(v.iter().map(|u| u.written as f64).collect()) / (1 << 20) as f64;
    let (ours_b, std_b) = (wall(&build_ours), wall(&build_std));
    let (ver, sha_t, ossl_t) = (wall(&verify_ours), wall(&sha), wall(&ossl));
    let fastest_sha = sha_t.min(ossl_t);
    let tp = |t: f64| mib / t;
    let verdict = |ok: bool| if ok { "meets target" } else { "MISSES target" };

    let mut r = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(r, "machine: {}", machine());
    let _ = writeln!(
        r,
        "input: {} MiB tree + 16 MiB UKI, zstd level {}, {} run(s), medians; bundle {:.1} MiB",
        o.size_mib, o.level, o.runs, mib
    );
    let _ = writeln!(
        r,
        "\n| build | wall s | CPU s | peak RSS MiB | written MiB |\n|---|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        r,
        "| imagebuild bundle | {ours_b:.2} | {:.2} | {:.0} | {:.0} |",
        cpu(&build_ours),
        rss(&build_ours),
        written(&build_ours)
    );
    let _ = writeln!(
        r,
        "| imagebuild bundle, `images = \"none\"` | {:.2} | {:.2} | {:.0} | {:.0} |",
        wall(&build_none),
        cpu(&build_none),
        rss(&build_none),
        written(&build_none)
    );
    for (i, (name, _)) in steps_std[0].iter().enumerate() {
        let col: Vec<Usage> = steps_std.iter().map(|s| s[i].1).collect();
        let _ = writeln!(
            r,
            "| {name} | {:.2} | {:.2} | {:.0} | {:.0} |",
            wall(&col),
            cpu(&col),
            rss(&col),
            written(&col)
        );
    }
    let _ = writeln!(
        r,
        "| **fastest pipeline total** | {std_b:.2} | {:.2} | {:.0} | {:.0} |",
        cpu(&build_std),
        rss(&build_std),
        written(&build_std)
    );
    let (none_b, none_cpu) = (wall(&build_none), cpu(&build_none));
    let ratio = none_b / std_b;
    let _ = writeln!(
        r,
        "\nbuild (`images = \"none\"`, the pipeline's output) / fastest pipeline: wall {ratio:.2} (target <= 0.80: {}), CPU {:.2}; with zstd images: wall {:.2}",
        verdict(ratio <= 0.8),
        none_cpu / cpu(&build_std),
        ours_b / std_b
    );
    let w = written(&build_none);
    let _ = writeln!(
        r,
        "bytes written by the build: {w:.0} MiB for a {mib:.0} MiB bundle ({:.2}x; target 1.00: {}); peak RSS {:.0} MiB (target <= 256: {})",
        w / mib,
        verdict(w <= mib * 1.01),
        rss(&build_none),
        verdict(rss(&build_none) <= 256.0)
    );
    let cpu_limit = (compress.cpu + 2.0 * hash.cpu) / cores;
    let bw = bundle_mib as f64 / dd.wall;
    let io_limit = mib / bw;
    let limit = cpu_limit.max(io_limit);
    let _ = writeln!(
        r,
        "machine limit: CPU {cpu_limit:.2} s (zstd -{} of the tree {:.2} CPU s + SHA-256 of the image twice, verity and digest, {:.2} CPU s, over {cores} cores), write {io_limit:.2} s ({mib:.0} MiB at {bw:.0} MiB/s, dd conv=fdatasync): {limit:.2} s; the build takes {:.2}x that",
        o.level,
        compress.cpu,
        2.0 * hash.cpu,
        none_b / limit
    );
    let _ = writeln!(
        r,
        "\n| verify (same {mib:.0} MiB) | wall s | MiB/s | peak RSS MiB |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        r,
        "| imagebuild verify | {ver:.2} | {:.0} | {:.1} |",
        tp(ver),
        rss(&verify_ours)
    );
    let _ = writeln!(
        r,
        "| sha256sum | {sha_t:.2} | {:.0} | {:.1} |",
        tp(sha_t),
        rss(&sha)
    );
    let _ = writeln!(
        r,
        "| openssl dgst -sha256 | {ossl_t:.2} | {:.0} | {:.1} |",
        tp(ossl_t),
        rss(&ossl)
    );
    let vr = fastest_sha / ver;
    let _ = writeln!(
        r,
        "\nverify throughput / fastest sha256: {vr:.2} (target >= 0.90: {}); verify peak RSS {:.1} MiB (target <= 64: {})",
        verdict(vr >= 0.9),
        rss(&verify_ours),
        verdict(rss(&verify_ours) <= 64.0)
    );
    println!("{r}");
    let _ = root();
    Ok(())
}
