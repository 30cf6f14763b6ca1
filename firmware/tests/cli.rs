//! `qfirmware` end to end on a generated node root with a real signed bundle:
//! plan, dry run, flash (simulated device + UEFI capsule), idempotence, results
//! after a simulated reboot, exit codes, and a kill -9 at each journal crash point.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bootctl::efivars::EFI_GLOBAL_GUID;
use imagebuild::bundle::{self, BuildOptions};
use imagebuild::spec::ReleaseSpec;
use qimg::{KeyId, NoProgress, SecretKey};

const GUID: &str = "6a2b1f7e-36c2-4b0e-9f2a-2b7c3a1d5e10";
const BIN: &str = env!("CARGO_BIN_EXE_qfirmware");

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, format!("{text}\n")).unwrap();
}

struct Node {
    d: tempfile::TempDir,
    bmc_payload: Vec<u8>,
    bios_payload: Vec<u8>,
}

impl Node {
    fn p(&self, rel: &str) -> PathBuf {
        self.d.path().join(rel)
    }

    /// `qfirmware` with this node's root, journal and device config.
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root")
            .arg(self.p("root"))
            .arg("--journal")
            .arg(self.p("journal"))
            .arg("--devices")
            .arg(self.p("devices.json"))
            .arg("--esp")
            .arg(self.p("esp"))
            .args(args);
        if args.iter().any(|a| *a == "plan" || *a == "flash") {
            c.arg("--bundle")
                .arg(self.p("fw.qimg"))
                .arg("--pubkey")
                .arg(self.p("release.pub"));
        }
        c
    }

    fn json(&self, args: &[&str], want_code: i32) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        assert_eq!(
            o.status.code(),
            Some(want_code),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn dev_contents(&self) -> Vec<u8> {
        std::fs::read(self.p("dev/contents")).unwrap()
    }
}

/// A node with a simulated BMC at 7.0.0 (probe: cat) and a capsule-updatable BIOS at
/// ESRT 1.0.0, and a bundle offering BMC `bmc_version` and BIOS 1.1.0.
fn node(bmc_version: &str) -> Node {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "dev/version", "7.0.0");
    std::fs::write(r.join("dev/contents"), b"old").unwrap();
    let e = "root/sys/firmware/efi/esrt/entries/entry0";
    write(r, &format!("{e}/fw_class"), GUID);
    write(r, &format!("{e}/fw_version"), &0x0100_0000u32.to_string());
    write(r, &format!("{e}/last_attempt_version"), "0");
    write(r, &format!("{e}/last_attempt_status"), "0");
    write(r, "root/proc/sys/kernel/random/boot_id", "boot-1");
    std::fs::create_dir_all(r.join("esp")).unwrap();
    let vars = r.join("root/sys/firmware/efi/efivars");
    std::fs::create_dir_all(&vars).unwrap();
    let mut v = 7u32.to_le_bytes().to_vec();
    v.extend_from_slice(&4u64.to_le_bytes());
    std::fs::write(
        vars.join(format!("OsIndicationsSupported-{EFI_GLOBAL_GUID}")),
        v,
    )
    .unwrap();
    let devices = serde_json::json!({
        "bmc": {
            "probe": ["cat", r.join("dev/version")],
            "backend": {"kind": "simulated", "dir": r.join("dev")}
        }
    });
    std::fs::write(r.join("devices.json"), devices.to_string()).unwrap();

    let bmc_payload: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    let bios_payload: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(r.join("bmc.bin"), &bmc_payload).unwrap();
    std::fs::write(r.join("bios.cap"), &bios_payload).unwrap();
    std::fs::write(
        r.join("release.toml"),
        format!(
            r#"product = "qumulo-core"
version = "2.0.0"
platform_version = "2.0"
target = "onprem"
compatible_models = ["q-24t"]
min_installed_version = "1.0"
[[firmware]]
component_id = "bmc"
version = "{bmc_version}"
version_format = "triplet"
file = "bmc.bin"
[[firmware]]
component_id = "bios"
version = "1.1.0"
version_format = "triplet"
device = {{ esrt_guid = "{GUID}" }}
activation = "reboot"
file = "bios.cap"
"#
        ),
    )
    .unwrap();
    let key = SecretKey::from_seed([3; 32], KeyId([3; 8]));
    std::fs::write(r.join("release.pub"), key.public().to_file_text()).unwrap();
    let spec = ReleaseSpec::load(&r.join("release.toml")).unwrap();
    bundle::build(&BuildOptions {
        spec: &spec,
        source_date_epoch: 1_700_000_000,
        keys: &[key],
        out: &r.join("fw.qimg"),
        progress: &NoProgress,
        cancel: &imagebuild::Cancel::new(),
        staging_memory: bundle::DEFAULT_STAGING_MEMORY,
    })
    .unwrap();
    Node {
        d,
        bmc_payload,
        bios_payload,
    }
}

fn action_of(items: &serde_json::Value, id: &str) -> String {
    let i = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["component_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {items}"));
    i["action"]["action"].as_str().unwrap().to_owned()
}

fn capsule(n: &Node) -> Option<Vec<u8>> {
    let dir = n.p("esp/EFI/UpdateCapsule");
    let f = std::fs::read_dir(dir).ok()?.next()?.unwrap().path();
    std::fs::read(f).ok()
}

#[test]
fn plan_dry_run_flash_and_results_after_reboot() {
    let n = node("7.1.0");
    let plan = n.json(&["plan"], 0);
    assert_eq!(plan["schema"], "qfirmware.plan/1");
    assert_eq!(action_of(&plan["items"], "bmc"), "flash");
    assert_eq!(action_of(&plan["items"], "bios"), "flash");

    let dry = n.json(&["flash", "--dry-run"], 0);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["items"].as_array().unwrap().len(), 2);
    assert_eq!(n.dev_contents(), b"old");
    assert_eq!(capsule(&n), None);
    assert!(!n.p("journal").exists() || std::fs::read_dir(n.p("journal")).unwrap().count() == 0);

    let f = n.json(&["flash"], 0);
    assert_eq!(f["schema"], "qfirmware.flash/1");
    let outcome = |v: &serde_json::Value, c: &str| {
        v["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["component"].as_str().unwrap().contains(c))
            .unwrap()["result"]["outcome"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(outcome(&f, "bmc"), "activated");
    assert_eq!(outcome(&f, "bios"), "staged");
    assert_eq!(n.dev_contents(), n.bmc_payload);
    assert_eq!(capsule(&n).unwrap(), n.bios_payload);
    let ind = std::fs::read(n.p(&format!(
        "root/sys/firmware/efi/efivars/OsIndications-{EFI_GLOBAL_GUID}"
    )))
    .unwrap();
    assert_eq!(ind[4], 0x4);

    // The BMC now reports 7.1.0: the plan skips it; a second flash writes nothing.
    assert_eq!(action_of(&n.json(&["plan"], 0)["items"], "bmc"), "skip");
    let again = n.json(&["flash"], 0);
    assert_eq!(outcome(&again, "bios"), "already-done");

    // Same boot: the capsule is pending, not judged.
    let st = n.json(&["results"], 0);
    assert_eq!(st["schema"], "qfirmware.results/1");
    let step = |v: &serde_json::Value, c: &str| {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["component"].as_str().unwrap().contains(c))
            .unwrap()["step"]["step"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(step(&st, "bios"), "verified");
    // Reboot: the firmware applied the capsule.
    write(n.d.path(), "root/proc/sys/kernel/random/boot_id", "boot-2");
    write(
        n.d.path(),
        "root/sys/firmware/efi/esrt/entries/entry0/fw_version",
        &0x0101_0000u32.to_string(),
    );
    let st = n.json(&["results"], 0);
    assert_eq!(step(&st, "bios"), "activated");
    assert_eq!(step(&st, "bmc"), "activated");
    // The applied capsule is removed from the ESP.
    assert_eq!(capsule(&n), None);
    let status = n.json(&["status"], 0);
    assert_eq!(status["schema"], "qfirmware.status/1");
    assert!(status["devices"].as_array().unwrap().len() >= 2, "{status}");
}

#[test]
fn refusals_failures_and_bad_bundles_have_their_exit_codes() {
    // Offered 6.9.0 over the installed 7.0.0: a downgrade, refused → exit 1.
    let n = node("6.9.0");
    let o = n.run(&["plan"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("--allow-older"), "{text}");
    let o = n.run(&["plan", "--allow-older"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // A device that fails mid-write → exit 1, reason on stdout, journal says failed.
    let n = node("7.1.0");
    std::fs::write(n.p("dev/fault.json"), r#"{"fault":"fail-at","byte":1000}"#).unwrap();
    let o = n.run(&["flash"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("FAILED: device error after 1000 bytes"),
        "{text}"
    );
    let st = n.json(&["status"], 0);
    let rec = st["journal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device"] == "bmc")
        .unwrap()
        .clone();
    assert_eq!(rec["step"]["step"], "failed");

    // A tampered bundle → exit 2, nothing flashed, nothing journaled.
    let n = node("7.1.0");
    let mut b = std::fs::read(n.p("fw.qimg")).unwrap();
    let at = b.windows(4).position(|w| w == [0, 1, 2, 3]).unwrap();
    b[at + 2] ^= 1;
    std::fs::write(n.p("fw.qimg"), b).unwrap();
    let o = n.run(&["flash"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("qfirmware: error: bundle"), "{err}");
    assert_eq!(n.dev_contents(), b"old");
    assert_eq!(capsule(&n), None);
}

#[test]
fn kill_at_each_crash_point_then_resume() {
    for point in ["firmware-write", "firmware-written"] {
        let n = node("7.1.0");
        let mut child = n
            .cmd(&["flash"])
            .env("QIMG_PAUSE_AT", point)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 256];
        let start = Instant::now();
        while !text.contains("paused at") {
            use std::io::Read;
            let k = err.read(&mut buf).unwrap();
            assert!(k > 0 && start.elapsed() < Duration::from_secs(60), "{text}");
            text.push_str(&String::from_utf8_lossy(&buf[..k]));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let st = n.json(&["status"], 0);
        let j = st["journal"].as_array().unwrap();
        let want = if point == "firmware-write" {
            "writing"
        } else {
            "written"
        };
        assert!(j.iter().any(|r| r["step"]["step"] == want), "{point}: {st}");
        // The journal holds only records and temporaries its reader ignores.
        for e in std::fs::read_dir(n.p("journal")).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            let record = name.ends_with(".json") && !name.starts_with('.');
            let temp = name.starts_with('.') && name.ends_with(".json.tmp");
            assert!(record || temp || name == ".lock", "{name}");
        }
        // The killed process's lock died with it; the resumed flash completes both.
        let f = n.json(&["flash"], 0);
        let results: Vec<_> = f["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["result"]["outcome"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            results.iter().all(|r| r == "activated" || r == "staged"),
            "{point}: {results:?}"
        );
        assert_eq!(n.dev_contents(), n.bmc_payload);
        assert_eq!(capsule(&n).unwrap(), n.bios_payload);
    }
}

#[test]
fn capsule_goes_into_the_esp_of_a_disk_image() {
    use bootctl::esp::{Esp, ImageEsp};
    let n = node("7.1.0");
    // `--esp` names a disk image instead of a directory.
    let img = n.p("esp");
    std::fs::remove_dir(&img).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&img)
        .unwrap();
    let size = 256u64 << 20;
    f.set_len(size).unwrap();
    let spec = bootctl::layout::LayoutSpec {
        product: "qimg-demo".into(),
        esp_mib: 64,
        root_mib: 40,
        verity_mib: 2,
        min_data_mib: 8,
    };
    let t = bootctl::table::create(&mut f, &spec.plan(size).unwrap()).unwrap();
    let (start, len) = t.esp_range().unwrap();
    bootctl::esp::format(&mut f, start, len, 0x1234_5678).unwrap();
    drop(f);

    let plan = n.json(&["plan"], 0);
    assert_eq!(action_of(&plan["items"], "bios"), "flash");
    let out = n.json(&["flash"], 0);
    assert_eq!(out["outcomes"].as_array().unwrap().len(), 2, "{out}");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut esp = ImageEsp::open(f, start, len).unwrap();
    let names = esp.list("EFI/UpdateCapsule").unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    let got = esp
        .read(&format!("EFI/UpdateCapsule/{}", names[0]))
        .unwrap();
    assert_eq!(got, n.bios_payload);
    drop(esp);

    // After the reboot the capsule is removed from the image.
    write(n.d.path(), "root/proc/sys/kernel/random/boot_id", "boot-2");
    write(
        n.d.path(),
        "root/sys/firmware/efi/esrt/entries/entry0/fw_version",
        &0x0101_0000u32.to_string(),
    );
    n.json(&["results"], 0);
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut esp = ImageEsp::open(f, start, len).unwrap();
    assert!(esp.list("EFI/UpdateCapsule").unwrap().is_empty());
}
