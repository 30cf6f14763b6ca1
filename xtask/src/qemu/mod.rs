//! `cargo xtask qemu-test`: the boot chain proven on real firmware. OVMF →
//! Debian's systemd-boot → our UKIs (Debian kernel + busybox test init), on disk
//! images built with this project's tools, one QEMU process per boot attempt so the
//! ESP can be checked between boots. Every boot checks that the selection model
//! predicted the entry the real loader booted.

mod assets;
mod cpio;
mod node;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bootctl::entries::{self, EntryState};
use bootctl::esp::ImageEsp;
use bootctl::layout::Slot;
use bootctl::model::EfiVars;
use bootctl::{slot, table};
use imagebuild::Cancel;
use imagebuild::bundle::{self, BuildOptions, DEFAULT_STAGING_MEMORY};
use imagebuild::disk::{self, DiskOptions};
use imagebuild::spec::ReleaseSpec;
use qimg::{NoProgress, Target, TrustedKeys};

use crate::target_dir;

const PRODUCT: &str = "qimg-test";
/// Every QEMU run is killed after this long.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

struct Ctx {
    work: PathBuf,
    firmware: PathBuf,
    accel: String,
    bundles: Vec<(String, PathBuf)>,
    keys: TrustedKeys,
    boots: usize,
}

/// One boot's outcome, from the serial console.
#[derive(Debug, PartialEq, Eq)]
struct Marker {
    slot: String,
    version: String,
    ok: bool,
}

fn clean(log: &str) -> String {
    // Strip OVMF's ANSI escapes and CRs.
    let mut out = String::new();
    let mut chars = log.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            while let Some(&n) = chars.peek() {
                chars.next();
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// TCG's translated-code cache, in MiB. QEMU 7.2's default is 1 GiB; on this 2-core
/// machine the test node then booted in 28 s from power on and 46 s after an
/// in-guest reboot (firmware, kernel and initrd each 2-3x slower after the reset).
/// With 128 MiB: 19 s and 20 s; 16 MiB thrashes (44 s), 512 MiB gives 26 s and 27 s
/// (docs/qemu-node.md).
const TCG_TB_MIB: u32 = 128;

/// QEMU on the q35 machine with `accel`, the machine options `machine` (memory,
/// CPUs), the firmware's writable flash `vars` and `disk` on virtio: what every
/// test boot shares.
fn qemu_command(accel: &str, machine: &[&str], disk: &Path, vars: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let accel = if accel == "tcg" {
        format!("tcg,tb-size={TCG_TB_MIB}")
    } else {
        accel.to_owned()
    };
    c.args(["-machine", "q35", "-accel", &accel])
        .args(machine)
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("if=virtio,format=raw,file={}", disk.display()));
    c
}

/// The value of the word `key=value` on a console line.
fn word(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(str::to_owned)
}

fn marker(log: &str) -> Option<Marker> {
    clean(log).lines().find_map(|l| {
        let ok = l.contains("BOOT-OK");
        if !ok && !l.contains("BOOT-FAIL") {
            return None;
        }
        Some(Marker {
            slot: word(l, "SLOT=")?,
            version: word(l, "VERSION=")?,
            ok,
        })
    })
}

impl Ctx {
    fn qemu(&self, disk: &Path, vars: &Path) -> Command {
        let mut c = qemu_command(&self.accel, &["-m", "512", "-smp", "1"], disk, vars);
        c.args(["-nic", "none", "-nographic", "-serial", "mon:stdio"]);
        c
    }

    /// One boot attempt: QEMU with `-no-reboot`, under a timeout; returns the marker.
    fn boot(&mut self, disk: &Path, vars: &Path, log: &Path) -> Result<Marker, String> {
        self.boots += 1;
        let out = File::create(log).map_err(|e| e.to_string())?;
        let mut child = self
            .qemu(disk, vars)
            .arg("-no-reboot")
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let start = Instant::now();
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if start.elapsed() > BOOT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "boot timed out after {BOOT_TIMEOUT:?}; serial log: {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text =
            String::from_utf8_lossy(&std::fs::read(log).map_err(|e| e.to_string())?).into_owned();
        marker(&text)
            .ok_or_else(|| format!("no BOOT-OK/BOOT-FAIL marker; serial log: {}", log.display()))
    }

    fn esp(&self, disk: &Path) -> Result<ImageEsp<File>, String> {
        let mut f = File::options()
            .read(true)
            .write(true)
            .open(disk)
            .map_err(|e| e.to_string())?;
        let t = table::read(&mut f).map_err(|e| e.to_string())?;
        let (start, len) = t.esp_range().ok_or("no ESP")?;
        ImageEsp::open(f, start, len).map_err(|e| e.to_string())
    }

    /// Boots once and checks that the model predicted what the loader booted and how it
    /// renamed the entry. Returns the marker and the booted entry's name after the boot.
    fn checked_boot(
        &mut self,
        disk: &Path,
        vars: &Path,
        label: &str,
    ) -> Result<(Marker, String), String> {
        let (predicted, after) = {
            let mut esp = self.esp(disk)?;
            let (found, sel) =
                entries::next(&mut esp, PRODUCT, &EfiVars::default()).map_err(|e| e.to_string())?;
            let e = &found[sel.chosen.ok_or("the model predicts no entry")?];
            (e.clone(), e.entry.file_after_boot())
        };
        let log = disk.with_file_name(format!("{label}.log"));
        let m = self.boot(disk, vars, &log)?;
        let want_slot = predicted
            .slot
            .map(|s| s.letter().to_string())
            .unwrap_or_default();
        if m.slot != want_slot || Some(&m.version) != predicted.name_version.as_ref() {
            return Err(format!(
                "{label}: the loader booted slot {} version {}, the model predicted {} ({})",
                m.slot, m.version, predicted.entry.file, want_slot
            ));
        }
        let names = {
            let mut esp = self.esp(disk)?;
            esp_list(&mut esp)?
        };
        if !names.contains(&after) {
            return Err(format!(
                "{label}: expected {after} on the ESP after the boot, found {names:?}"
            ));
        }
        eprintln!(
            "xtask: qemu: {label}: slot {} {} {} (model agreed), entry now {after}",
            m.slot,
            m.version,
            if m.ok { "BOOT-OK" } else { "BOOT-FAIL" }
        );
        Ok((m, after))
    }

    fn bundle(&self, version: &str) -> &Path {
        &self
            .bundles
            .iter()
            .find(|(v, _)| v == version)
            .expect("built")
            .1
    }

    /// A fresh scenario directory with a disk built from `version` and a firmware copy.
    fn fresh(&self, name: &str, version: &str) -> Result<(PathBuf, PathBuf), String> {
        fresh_disk(
            &self.work.join(name),
            self.bundle(version),
            &self.keys,
            &self.firmware,
            (64, 32, 16),
        )
    }

    fn install(
        &self,
        disk_path: &Path,
        version: &str,
        slot: Slot,
        tries: u32,
    ) -> Result<String, String> {
        disk::install_slot(
            disk_path,
            self.bundle(version),
            Some(&self.keys),
            slot,
            Some(tries),
            &NoProgress,
        )
        .map_err(|e| format!("install-slot: {e:#}"))
    }
}

/// A fresh directory `dir` with `disk.raw` built from `bundle` by `imagebuild disk`
/// (ESP, root and data sizes in MiB) and a writable copy of the firmware; returns both
/// paths.
fn fresh_disk(
    dir: &Path,
    bundle: &Path,
    keys: &TrustedKeys,
    firmware: &Path,
    (esp_mib, root_mib, data_mib): (u64, u64, u64),
) -> Result<(PathBuf, PathBuf), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let disk_path = dir.join("disk.raw");
    disk::build(&DiskOptions {
        bundle,
        keys: Some(keys),
        out: &disk_path,
        size: None,
        systemd_boot: Path::new(disk::SYSTEMD_BOOT),
        target: Target::Onprem,
        esp_mib,
        root_mib: Some(root_mib),
        data_mib,
        progress: &NoProgress,
        cancel: &Cancel::new(),
    })
    .map_err(|e| format!("imagebuild disk: {e:#}"))?;
    let vars = dir.join("ovmf.fd");
    std::fs::copy(firmware, &vars).map_err(|e| e.to_string())?;
    Ok((disk_path, vars))
}

fn esp_list(esp: &mut ImageEsp<File>) -> Result<Vec<String>, String> {
    use bootctl::esp::Esp;
    esp.list(entries::LINUX_DIR).map_err(|e| e.to_string())
}

fn expect(cond: bool, what: &str) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

/// The slots as `qbootctl --image DISK --json status` reads them from a disk image.
fn qbootctl_status(disk: &Path) -> Result<bootctl::status::Status, String> {
    let out = Command::new(target_dir().join("debug/qbootctl"))
        .arg("--image")
        .arg(disk)
        .args(["--json", "status"])
        .output()
        .map_err(|e| format!("qbootctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qbootctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("qbootctl status JSON: {e}"))
}

/// A slot's entry state and reason, as `qbootctl --image DISK --json status` reports it.
fn slot_state(
    _ctx: &Ctx,
    disk: &Path,
    slot: Slot,
) -> Result<(Option<EntryState>, Option<String>), String> {
    let s = qbootctl_status(disk)?;
    let r = &s.slots[if slot == Slot::A { 0 } else { 1 }];
    Ok((r.state, r.reason.clone()))
}

fn fresh_disk_boots_slot_a(ctx: &mut Ctx) -> Result<(), String> {
    let (d, v) = ctx.fresh("a-fresh", "1.0.0")?;
    let (m, _) = ctx.checked_boot(&d, &v, "boot1")?;
    expect(
        m.ok && m.slot == "a" && m.version == "1.0.0",
        "a fresh disk must boot slot A",
    )
}

fn healthy_upgrade_is_blessed(ctx: &mut Ctx) -> Result<(), String> {
    let (d, v) = ctx.fresh("b-healthy", "1.0.0")?;
    ctx.install(&d, "2.0.0", Slot::B, 3)?;
    let (m, booted) = ctx.checked_boot(&d, &v, "boot1")?;
    expect(m.ok && m.slot == "b", "the new slot B must boot first")?;
    expect(
        booted.ends_with("+2-1.efi"),
        "the loader must count the try",
    )?;
    // Blessed by the harness between boots, with the project's bless logic.
    let mut esp = ctx.esp(&d)?;
    let blessed = entries::bless(&mut esp, PRODUCT, &booted).map_err(|e| e.to_string())?;
    drop(esp);
    for i in 2..=3 {
        let (m, after) = ctx.checked_boot(&d, &v, &format!("boot{i}"))?;
        expect(
            m.ok && m.slot == "b" && after == blessed,
            "a blessed slot keeps booting, uncounted",
        )?;
    }
    expect(
        slot_state(ctx, &d, Slot::B)?.0 == Some(EntryState::Good),
        "status: B good",
    )?;
    expect(
        slot_state(ctx, &d, Slot::A)?.0 == Some(EntryState::Good),
        "status: A kept as fallback",
    )
}

fn broken_upgrade_falls_back_to_a(ctx: &mut Ctx) -> Result<(), String> {
    let (d, v) = ctx.fresh("c-broken", "1.0.0")?;
    ctx.install(&d, "2.1.0", Slot::B, 3)?;
    let mut seen = vec![];
    for i in 1..=3 {
        let (m, after) = ctx.checked_boot(&d, &v, &format!("boot{i}"))?;
        expect(!m.ok && m.slot == "b", "the broken slot B is tried")?;
        seen.push(after);
    }
    let want: Vec<String> = ["+2-1", "+1-2", "+0-3"]
        .iter()
        .map(|c| format!("qimg-test-b-2.1.0{c}.efi"))
        .collect();
    expect(
        seen == want,
        &format!("counter series {seen:?}, expected {want:?}"),
    )?;
    for i in 4..=5 {
        let (m, _) = ctx.checked_boot(&d, &v, &format!("boot{i}"))?;
        expect(
            m.ok && m.slot == "a",
            "after three failed tries slot A boots by itself",
        )?;
    }
    let (state, reason) = slot_state(ctx, &d, Slot::B)?;
    expect(
        state == Some(EntryState::Bad { done: 3 }) && reason.as_deref() == Some("tries exhausted"),
        "status: B bad, tries exhausted",
    )
}

/// The writer of slot B is killed at a crash point; the next boot must be A and the
/// status consistent.
fn writer_killed_mid_install_leaves_a_booting(ctx: &mut Ctx, exe: &Path) -> Result<(), String> {
    for point in ["slot-write", "entry-write"] {
        let (d, v) = ctx.fresh(&format!("d-killed-{point}"), "1.0.0")?;
        let mut child = Command::new(exe)
            .args([
                "install-slot",
                "-q",
                "--slot",
                "b",
                "--tries",
                "3",
                "--image",
            ])
            .arg(&d)
            .arg("--bundle")
            .arg(ctx.bundle("2.0.0"))
            .env(bootctl::crashpoint::ENV, point)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut err = child.stderr.take().expect("piped");
        let mut text = String::new();
        let mut buf = [0u8; 256];
        let start = Instant::now();
        while !text.contains("paused at") {
            use std::io::Read;
            let n = err.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 || start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                return Err(format!("install-slot never reached {point}: {text}"));
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        child.kill().map_err(|e| e.to_string())?; // SIGKILL: no cleanup at all
        let _ = child.wait();
        let (m, _) = ctx.checked_boot(&d, &v, "boot1")?;
        expect(
            m.ok && m.slot == "a",
            &format!("killed at {point}: slot A must boot"),
        )?;
        let (state, _) = slot_state(ctx, &d, Slot::B)?;
        expect(
            state.is_none(),
            &format!("killed at {point}: slot B must have no entry"),
        )?;
        let mut f = File::open(&d).map_err(|e| e.to_string())?;
        let t = table::read(&mut f).map_err(|e| e.to_string())?;
        let label = slot::label(&t, Slot::B).map_err(|e| e.to_string())?;
        if point == "slot-write" {
            expect(
                label == bootctl::layout::EMPTY,
                "a half-written slot B stays _empty",
            )?;
        }
        eprintln!("xtask: qemu: killed at {point}: A booted, B label {label:?}, no B entry");
    }
    Ok(())
}

/// Builds the test bundles: version → (mode).
fn build_bundles(
    work: &Path,
    a: &assets::Assets,
    key: &qimg::SecretKey,
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = vec![];
    for (version, mode) in [
        ("1.0.0", "good"),
        ("2.0.0", "good"),
        ("2.1.0", "bad"),
        ("0.0.1", "shell"),
    ] {
        let dir = work.join(format!("bundle-{version}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/etc")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("rootfs/etc/version"), version).map_err(|e| e.to_string())?;
        imagebuild::sample::generate_tree(&dir.join("rootfs"), 64 << 10, 1, version)
            .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("initrd.cpio"),
            assets::initramfs(a, PRODUCT, version, mode)?,
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("os-release"),
            format!("ID={PRODUCT}\nIMAGE_ID={PRODUCT}\nIMAGE_VERSION={version}\nPRETTY_NAME=\"qimg test {version}\"\n"),
        )
        .map_err(|e| e.to_string())?;
        let spec = format!(
            "product = \"{PRODUCT}\"\nversion = \"{version}\"\nplatform_version = \"{version}\"\ntarget = \"onprem\"\n\
             compatible_models = [\"qemu\"]\nmin_installed_version = \"0.0.1\"\n[platform]\nroot = \"rootfs\"\n\
             kernel = \"{}\"\ninitrd = \"initrd.cpio\"\ncmdline = \"console=ttyS0 panic=1 loglevel=4\"\nos_release = \"os-release\"\n",
            a.vmlinuz.display()
        );
        std::fs::write(dir.join("release.toml"), spec).map_err(|e| e.to_string())?;
        let spec = ReleaseSpec::load(&dir.join("release.toml")).map_err(|e| format!("{e:#}"))?;
        let path = dir.join(format!("{version}.qimg"));
        bundle::build(&BuildOptions {
            spec: &spec,
            source_date_epoch: 1_700_000_000,
            keys: std::slice::from_ref(key),
            out: &path,
            progress: &NoProgress,
            cancel: &Cancel::new(),
            staging_memory: DEFAULT_STAGING_MEMORY,
        })
        .map_err(|e| format!("bundle {version}: {e:#}"))?;
        out.push((version.to_owned(), path));
    }
    Ok(out)
}

/// KVM is listed on these machines but fails at the reset vector: probe, don't assume.
fn probe_accel(firmware: &Path, work: &Path) -> String {
    if !Path::new("/dev/kvm").exists() {
        return "tcg".into();
    }
    let vars = work.join("probe.fd");
    if std::fs::copy(firmware, &vars).is_err() {
        return "tcg".into();
    }
    let out = Command::new("timeout")
        .args([
            "15",
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nographic",
            "-nic",
            "none",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,file={}",
            vars.display()
        ))
        .args(["-serial", "mon:stdio", "-no-reboot"])
        .stdin(Stdio::null())
        .output();
    let ok = out.is_ok_and(|o| clean(&String::from_utf8_lossy(&o.stdout)).contains("BdsDxe"));
    if ok { "kvm".into() } else { "tcg".into() }
}

struct Opts {
    shell: bool,
    debian_firmware: bool,
    /// Run only the boot-chain scenarios, or only the node's.
    only: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        shell: false,
        debian_firmware: false,
        only: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shell" => o.shell = true,
            "--firmware" => match it.next().map(String::as_str) {
                Some("prebuilt") => o.debian_firmware = false,
                Some("debian") => o.debian_firmware = true,
                other => return Err(format!("--firmware prebuilt|debian, not {other:?}")),
            },
            "--only" => match it.next().map(String::as_str) {
                Some(w @ ("boot" | "node")) => o.only = Some(w.to_owned()),
                other => return Err(format!("--only boot|node, not {other:?}")),
            },
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// `cargo xtask qemu-cluster [--quick | --only N,M…]`: three real nodes as one
/// cluster (`node/cluster/`); `--quick`, CI's, runs the scenarios without
/// reboots; `--only` the numbered ones, in the suite's order.
pub fn cluster(args: &[String]) -> Result<(), String> {
    let pick = cluster_pick(args)?;
    let total = Instant::now();
    let firmware = ovmf_prebuilt::ovmf_pure_efi();
    let work = target_dir().join("qemu-cluster");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let accel = probe_accel(&firmware, &work);
    eprintln!("xtask: qemu: accelerator {accel}");
    let times = node::cluster_main(&work, &accel, &firmware, &pick)?;
    report("qemu-cluster", &times, total);
    Ok(())
}

/// The cluster's scenarios `args` asks for.
fn cluster_pick(args: &[String]) -> Result<Vec<usize>, String> {
    use node::cluster::{COUNT, QUICK};
    let usage = || format!("usage: cargo xtask qemu-cluster [--quick | --only N,M…], not {args:?}");
    match args {
        [] => Ok((1..=COUNT).collect()),
        [q] if q == "--quick" => Ok(QUICK.to_vec()),
        [o, list] if o == "--only" => list
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if (1..=COUNT).contains(&n) => Ok(n),
                _ => Err(format!("--only: scenarios are 1 to {}, not {n:?}", COUNT)),
            })
            .collect(),
        _ => Err(usage()),
    }
}

/// Each scenario's time, then the total since `total`.
fn report(what: &str, times: &[(String, Duration)], total: Instant) {
    for (name, d) in times {
        eprintln!("xtask: qemu:   {name}: {:.1} s", d.as_secs_f64());
    }
    eprintln!("xtask: {what} total {:.1} s", total.elapsed().as_secs_f64());
}

pub fn main(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let total = Instant::now();
    let firmware = if o.debian_firmware {
        PathBuf::from("/usr/share/ovmf/OVMF.fd")
    } else {
        ovmf_prebuilt::ovmf_pure_efi()
    };
    let a = assets::fetch(&target_dir().join("qemu-assets"))?;
    eprintln!(
        "xtask: qemu: kernel {} ({}), firmware {}",
        a.release,
        a.kernel_package,
        firmware.display()
    );
    let work = target_dir().join("qemu-test");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let key_files = imagebuild::keys::generate(&work.join("test")).map_err(|e| e.to_string())?;
    let key = imagebuild::keys::load_secret(&key_files.secret).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let bundles = build_bundles(&work, &a, &key)?;
    eprintln!(
        "xtask: qemu: 4 bundles built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let accel = probe_accel(&firmware, &work);
    eprintln!("xtask: qemu: accelerator {accel}");
    if o.only.as_deref() == Some("node") {
        node::main(&work, &accel, &firmware)?;
        eprintln!(
            "xtask: qemu-test total {:.1} s",
            total.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let mut ctx = Ctx {
        work,
        firmware,
        accel,
        bundles,
        keys: TrustedKeys::new([key.public()]),
        boots: 0,
    };
    if o.shell {
        let (d, v) = ctx.fresh("shell", "0.0.1")?;
        eprintln!(
            "xtask: qemu: interactive boot of {} (Ctrl-A X quits)",
            d.display()
        );
        let status = ctx.qemu(&d, &v).status().map_err(|e| e.to_string())?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("qemu: {status}"))
        };
    }
    // install-slot runs as its own process so it can be killed; qbootctl reads the
    // ESP state after the boots.
    crate::build_bins("imagebuild and qbootctl binaries")?;
    let exe = target_dir().join("debug/imagebuild");
    let mut times = vec![];
    type Scenario = fn(&mut Ctx) -> Result<(), String>;
    let list: [(&str, Scenario); 3] = [
        ("fresh disk boots slot A", fresh_disk_boots_slot_a),
        ("healthy upgrade, blessed", healthy_upgrade_is_blessed),
        ("broken upgrade falls back", broken_upgrade_falls_back_to_a),
    ];
    for (name, f) in list {
        let t = Instant::now();
        f(&mut ctx).map_err(|e| format!("scenario {name}: {e}"))?;
        times.push((name.to_owned(), t.elapsed()));
    }
    let t = Instant::now();
    writer_killed_mid_install_leaves_a_booting(&mut ctx, &exe)
        .map_err(|e| format!("scenario writer killed mid-install: {e}"))?;
    times.push(("writer killed mid-install".to_owned(), t.elapsed()));
    eprintln!(
        "xtask: qemu-test passed: {} boots, model agreed with the loader on every one",
        ctx.boots
    );
    if o.only.as_deref() != Some("boot") {
        let node_times = node::main(&ctx.work, &ctx.accel, &ctx.firmware)?;
        times.extend(node_times);
    }
    report("qemu-test", &times, total);
    Ok(())
}
