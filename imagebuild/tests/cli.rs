//! The `imagebuild` binary: exit codes, JSON output parsed back, atomic output.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use imagebuild::report::{INSPECT_SCHEMA, InspectReport, Status, VERIFY_SCHEMA, VerifyReport};
use imagebuild::sample;

fn imagebuild() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imagebuild"));
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

/// `imagebuild bundle -q [extra...] --spec SPEC --key KEY --out OUT`.
fn bundle_cmd(spec: &Path, key: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = imagebuild();
    c.args(["bundle", "-q"])
        .args(extra)
        .arg("--spec")
        .arg(spec)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out);
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("imagebuild runs")
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sample inputs and a spec in `dir`; trees of about `size` bytes.
fn inputs(dir: &Path, size: u64) -> PathBuf {
    sample::generate_tree(&dir.join("rootfs"), size, 1, "3.0").unwrap();
    sample::generate_tree(&dir.join("container"), size / 4, 2, "3.0").unwrap();
    let mut rng = sample::Rng::new(3);
    sample::write_uki(
        &dir.join("uki.efi"),
        Path::new(imagebuild::spec::DEFAULT_STUB),
        64 << 10,
        &mut rng,
        "qumulo-core",
        "3.0",
    )
    .unwrap();
    let spec = dir.join("release.toml");
    std::fs::write(
        &spec,
        "product = \"qumulo-core\"\nversion = \"3.0.1\"\nplatform_version = \"3.0\"\n\
         target = \"cloud\"\ncompatible_models = [\"aws-m6i\"]\nmin_installed_version = \"2.0\"\n\
         [platform]\nroot = \"rootfs\"\nuki = \"uki.efi\"\n[container]\nroot = \"container\"\n",
    )
    .unwrap();
    spec
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = ok(imagebuild().arg("keygen").arg("--out").arg(dir.join(name)));
    let id = String::from_utf8(out.stdout).unwrap();
    assert_eq!(id.trim().len(), 16, "key id on stdout: {id:?}");
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// Files in `dir` whose names start with a dot (staging and partial outputs).
fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn keygen_bundle_inspect_verify() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = keygen(d.path(), "release");
    assert_eq!(
        std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // keygen never overwrites
    let again = run(imagebuild()
        .arg("keygen")
        .arg("--out")
        .arg(d.path().join("release")));
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let spec = inputs(d.path(), 300_000);
    let bundle = d.path().join("r.qimg");
    ok(&mut bundle_cmd(&spec, &sk, &bundle, &[]));
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(
        hidden_files(d.path()).is_empty(),
        "{:?}",
        hidden_files(d.path())
    );

    let out = ok(imagebuild().arg("inspect").arg("--json").arg(&bundle));
    let r: InspectReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.schema, INSPECT_SCHEMA);
    assert_eq!(r.file_size, std::fs::metadata(&bundle).unwrap().len());
    let m = qimg::Manifest::parse(&serde_json::to_vec(&r.manifest).unwrap()).unwrap();
    assert_eq!(m.release.version.to_string(), "3.0.1");
    assert_eq!(m.release.target, qimg::Target::Cloud);
    let names: Vec<_> = m.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["rootfs", "uki", "container"]);
    assert_eq!(r.signatures.len(), 1);
    let human = String::from_utf8(ok(imagebuild().arg("inspect").arg(&bundle)).stdout).unwrap();
    assert!(
        human.contains("qumulo-core 3.0.1 (platform 3.0, target cloud)"),
        "{human}"
    );

    let out = ok(imagebuild()
        .arg("verify")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(&pk)
        .arg("--json"));
    let v: VerifyReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.schema, VERIFY_SCHEMA);
    assert!(v.ok);
    assert!(v.failure.is_none());
    assert!(v.components.iter().all(|c| c.status == Status::Ok));
    assert_eq!(v.signed_by, [r.signatures[0].key_id.clone()]);

    // Tampered: exit 1, failure names the component.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let bad = d.path().join("bad.qimg");
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(imagebuild()
        .arg("verify")
        .arg(&bad)
        .arg("--pubkey")
        .arg(&pk)
        .arg("--json"));
    assert_eq!(out.status.code(), Some(1));
    let v: VerifyReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v.ok);
    let failure = v.failure.unwrap();
    assert_eq!(failure.code, "hash-mismatch");
    let failed: Vec<_> = v
        .components
        .iter()
        .filter(|c| c.status == Status::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failure.message.contains(&failed[0].name),
        "{}",
        failure.message
    );
    let human = run(imagebuild()
        .arg("verify")
        .arg(&bad)
        .arg("--pubkey")
        .arg(&pk));
    assert_eq!(human.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&human.stdout).contains("verification FAILED [hash-mismatch]"));

    // Untrusted key: exit 1.
    let (_, other) = keygen(d.path(), "other");
    let out = run(imagebuild()
        .arg("verify")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(&other)
        .arg("--json"));
    assert_eq!(out.status.code(), Some(1));
    let v: VerifyReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.failure.unwrap().code, "no-trusted-signature");

    // Errors, not answers: exit 2.
    let out = run(imagebuild()
        .arg("verify")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(d.path().join("nope.pub")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.pub"));
    let out = run(imagebuild()
        .arg("verify")
        .arg(d.path().join("nope.qimg"))
        .arg("--pubkey")
        .arg(&pk));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn same_inputs_give_identical_bytes() {
    let d = tempfile::tempdir().unwrap();
    let (sk, _) = keygen(d.path(), "k");
    let a = d.path().join("a");
    let b = d.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    let spec_a = inputs(&a, 500_000);
    // Wait so that the second copy's mtimes differ, then generate it again elsewhere.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::create_dir_all(&b).unwrap();
    let spec_b = inputs(&b, 500_000);
    let build = |spec: &Path, out: &Path| {
        ok(&mut bundle_cmd(spec, &sk, out, &[]));
        std::fs::read(out).unwrap()
    };
    let one = build(&spec_a, &d.path().join("1.qimg"));
    let two = build(&spec_b, &d.path().join("2.qimg"));
    let three = build(&spec_a, &d.path().join("3.qimg"));
    assert!(
        one == two,
        "different bundles from the same content in another place"
    );
    assert!(one == three, "different bundles from the same inputs");
    // Staging in a temporary file instead of memory changes nothing.
    let spilled = d.path().join("5.qimg");
    ok(&mut bundle_cmd(
        &spec_a,
        &sk,
        &spilled,
        &["--staging-memory", "0"],
    ));
    assert!(
        std::fs::read(&spilled).unwrap() == one,
        "spilled staging differs"
    );
    // Images stored as is (copied into the bundle straight from the staging
    // buffer, hashed on the way): the same bytes from memory and from a spill file.
    let none = a.join("none.toml");
    std::fs::write(
        &none,
        std::fs::read_to_string(&spec_a).unwrap() + "[compression]\nimages = \"none\"\n",
    )
    .unwrap();
    let in_memory = build(&none, &d.path().join("6.qimg"));
    ok(&mut bundle_cmd(
        &none,
        &sk,
        &d.path().join("7.qimg"),
        &["--staging-memory", "0"],
    ));
    assert!(in_memory != one, "stored as is differs from compressed");
    assert!(
        std::fs::read(d.path().join("7.qimg")).unwrap() == in_memory,
        "spilled staging differs for images stored as is"
    );
    // A different SOURCE_DATE_EPOCH changes the bytes.
    ok(bundle_cmd(&spec_a, &sk, &d.path().join("4.qimg"), &[])
        .env("SOURCE_DATE_EPOCH", "1700000001"));
    assert!(std::fs::read(d.path().join("4.qimg")).unwrap() != one);
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let (sk, _) = keygen(d.path(), "k");
    let spec = inputs(d.path(), 100_000);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("x.qimg");

    // A spec naming a missing input: refused before anything is built.
    let broken = d.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("uki.efi", "missing.efi"),
    )
    .unwrap();
    let out = run(&mut bundle_cmd(&broken, &sk, &target, &[]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("platform.uki") && err.contains("missing.efi"),
        "{err}"
    );
    assert!(!target.exists());
    assert!(hidden_files(&out_dir).is_empty());

    // An existing bundle is replaced only by a complete new one.
    std::fs::write(&target, b"previous release").unwrap();
    let out = run(&mut bundle_cmd(&broken, &sk, &target, &[]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&target).unwrap(), b"previous release");
}

#[test]
fn ctrl_c_removes_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let (sk, _) = keygen(d.path(), "k");
    // Big enough that a debug build takes several seconds.
    let spec = inputs(d.path(), 200 << 20);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("x.qimg");
    let mut child = bundle_cmd(&spec, &sk, &target, &[])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until staging has begun.
    let start = Instant::now();
    while hidden_files(&out_dir).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "staging never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SIGINT, as Ctrl-C sends.
    let rc = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(rc.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(!target.exists());
    assert!(
        hidden_files(&out_dir).is_empty(),
        "{:?}",
        hidden_files(&out_dir)
    );
}

#[test]
fn demo_runs_on_a_fresh_directory() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("demo");
    let out = ok(imagebuild()
        .arg("demo")
        .arg("--quiet")
        .arg("--out")
        .arg(&dir));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("qimg-demo 7.1.0.1"), "{text}");
    let bundle = dir.join("qimg-demo-7.1.0.1.qimg");
    let out = ok(imagebuild()
        .arg("verify")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(dir.join("demo.pub")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    // Running it again reuses the key and gives the same bundle.
    let first = std::fs::read(&bundle).unwrap();
    ok(imagebuild().arg("demo").arg("-q").arg("--out").arg(&dir));
    assert!(std::fs::read(&bundle).unwrap() == first);

    // Its disk boots: the loader lists slot A's entry (the UKI is a real one).
    if !tests_need_boot_files() {
        return;
    }
    let disk = dir.join("disk.raw");
    ok(imagebuild()
        .args(["disk", "-q", "--bundle"])
        .arg(&bundle)
        .arg("--pubkey")
        .arg(dir.join("demo.pub"))
        .arg("--out")
        .arg(&disk));
    let mut f = std::fs::File::open(&disk).unwrap();
    let t = bootctl::table::read(&mut f).unwrap();
    let (start, len) = t.esp_range().unwrap();
    let mut esp = bootctl::esp::ImageEsp::open(f, start, len).unwrap();
    let s = bootctl::status::status(&mut esp, "qimg-demo", None, None).unwrap();
    let a = &s.slots[0];
    assert_eq!(a.slot, bootctl::layout::Slot::A);
    assert_eq!(a.entry.as_deref(), Some("qimg-demo-a-7.1.0.efi"), "{s:?}");
    assert_eq!(a.state, Some(bootctl::entries::EntryState::Good), "{s:?}");
    let next = s.next.expect("the disk has an entry to boot");
    assert_eq!(next.slot, Some(bootctl::layout::Slot::A));
}

#[test]
fn a_bundle_refuses_a_uki_that_is_not_one() {
    let d = tempfile::tempdir().unwrap();
    let spec = inputs(d.path(), 1 << 20);
    std::fs::write(d.path().join("uki.efi"), vec![7u8; 4096]).unwrap();
    let out = imagebuild()
        .args(["bundle", "-q", "--spec"])
        .arg(&spec)
        .arg("--key")
        .arg(keygen(d.path(), "k").0)
        .arg("--out")
        .arg(d.path().join("x.qimg"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("platform.uki") && err.contains("not a UKI: not a PE image"),
        "{err}"
    );
    assert!(!d.path().join("x.qimg").exists(), "no bundle is written");
}

/// The systemd-boot files the disk needs, by the one test policy.
fn tests_need_boot_files() -> bool {
    qutil::require::require(
        std::path::Path::new(imagebuild::disk::SYSTEMD_BOOT).is_file()
            && std::path::Path::new(imagebuild::spec::DEFAULT_STUB).is_file(),
        "systemd-boot (Debian package systemd-boot-efi)",
        "`cargo xtask ci` installs it",
        "QIMG_SKIP_TOOL_TESTS",
    )
}
