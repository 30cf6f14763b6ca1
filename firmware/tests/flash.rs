//! Flash orchestration through every backend, faults, resumption from the journal,
//! power refusal, and results after the reboot.

use std::path::Path;
use std::time::{Duration, Instant};

use bootctl::efivars::EFI_GLOBAL_GUID;
use firmware::backend::{Banks, Capsule, Fault, FlashFile, Flasher, Simulated, Tool};
use firmware::flash::{FlashOptions, Outcome, Payload, flash, results};
use firmware::inventory::{Device, InstalledVersion};
use firmware::journal::{Journal, Record, Step};
use firmware::plan::{Action, PlanItem};
use qimg::NoProgress as Quiet;
use qimg::{FirmwareInfo, Sha256, VersionFormat};

fn item(action: Action) -> PlanItem {
    PlanItem {
        component: "fw-bmc".into(),
        component_id: "bmc".into(),
        device: Some("bmc".into()),
        installed: Some("1.0".into()),
        offered: "2.0".into(),
        action,
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

struct Env {
    _d: tempfile::TempDir,
    journal: Journal,
    dev: Simulated,
    opts: FlashOptions,
}

fn env() -> Env {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    std::fs::write(dev.join("version"), "1.0\n").unwrap();
    std::fs::write(dev.join("contents"), b"old firmware").unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    Env {
        journal: Journal::open(&d.path().join("journal")).unwrap(),
        dev: Simulated { dir: dev },
        opts: FlashOptions {
            timeout: Duration::from_secs(30),
            root,
            ..FlashOptions::default()
        },
        _d: d,
    }
}

/// A triplet-versioned payload whose digest is the label `sha` repeated (the
/// journal only compares digests).
fn fw_payload(bytes: &[u8], sha: u8) -> Payload {
    Payload {
        name: "fw-bmc".into(),
        info: FirmwareInfo {
            version_format: VersionFormat::Triplet,
            ..FirmwareInfo::new("bmc", "2.0")
        },
        bytes: bytes.to_vec(),
        sha256: Sha256([sha; 32]),
    }
}

impl Env {
    fn run(&mut self, p: &[u8], sha: u8, f: &mut dyn Flasher) -> Outcome {
        let p = fw_payload(p, sha);
        flash(
            &self.journal,
            &item(Action::Flash),
            &p,
            f,
            &self.opts,
            &Quiet,
        )
        .unwrap()
    }
    fn sim(&mut self, p: &[u8], sha: u8) -> Outcome {
        let mut dev = self.dev.clone();
        self.run(p, sha, &mut dev)
    }
    fn step(&self) -> Option<Step> {
        self.journal.get("fw-bmc").unwrap().map(|r| r.step)
    }
    fn fault(&self, f: Option<Fault>) {
        let p = self.dev.dir.join("fault.json");
        match f {
            Some(f) => std::fs::write(p, serde_json::to_vec(&f).unwrap()).unwrap(),
            None => std::fs::remove_file(p).unwrap(),
        }
    }
    fn contents(&self) -> Vec<u8> {
        std::fs::read(self.dev.dir.join("contents")).unwrap()
    }
}

fn failed(o: &Outcome) -> &str {
    match o {
        Outcome::Failed { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn simulated_device_is_flashed_verified_and_not_flashed_twice() {
    let mut e = env();
    let p = payload(10_000);
    assert_eq!(e.sim(&p, 1), Outcome::Activated);
    assert_eq!(e.contents(), p);
    assert_eq!(e.dev.version().as_deref(), Some("2.0"));
    let rec = e.journal.get("fw-bmc").unwrap().unwrap();
    assert_eq!(rec.step, Step::Activated);
    assert_eq!((rec.from.as_deref(), rec.to.as_str()), (Some("1.0"), "2.0"));
    assert_eq!(rec.payload_sha256, Sha256([1; 32]).to_string());
    // A second prepare with the same payload writes nothing: a fault would show.
    e.fault(Some(Fault::FailAt { byte: 0 }));
    assert_eq!(
        e.sim(&p, 1),
        Outcome::AlreadyDone {
            step: "activated".into()
        }
    );
    assert_eq!(e.contents(), p);
}

#[test]
fn items_not_planned_for_flashing_touch_nothing() {
    let e = env();
    let refused = Action::Refuse {
        why: firmware::plan::Refusal::NoDevice,
    };
    for a in [Action::Skip, refused] {
        let mut dev = e.dev.clone();
        let p = fw_payload(b"x", 0);
        let o = flash(&e.journal, &item(a), &p, &mut dev, &e.opts, &Quiet).unwrap();
        assert_eq!(o, Outcome::NotPlanned);
    }
    assert_eq!(e.journal.all().unwrap(), vec![]);
    assert_eq!(e.contents(), b"old firmware");
}

#[test]
fn write_failure_is_journaled_and_only_retried_when_asked() {
    let mut e = env();
    let p = payload(20_000);
    e.fault(Some(Fault::FailAt { byte: 5000 }));
    let o = e.sim(&p, 2);
    assert!(failed(&o).contains("after 5000 bytes"), "{o:?}");
    assert!(matches!(e.step(), Some(Step::Failed { reason }) if reason.contains("5000")));
    assert_eq!(e.contents(), p[..5000]);
    assert_eq!(e.dev.version().as_deref(), Some("1.0"));
    // Without --retry the failure is reported again, nothing is written.
    e.fault(None);
    let o = e.sim(&p, 2);
    assert!(failed(&o).contains("--retry"), "{o:?}");
    assert_eq!(e.contents(), p[..5000]);
    // With it, the flash runs from the start.
    e.opts.retry_failed = true;
    assert_eq!(e.sim(&p, 2), Outcome::Activated);
    assert_eq!(e.contents(), p);
}

#[test]
fn corrupt_write_and_stale_version_fail_verification() {
    let mut e = env();
    let p = payload(9000);
    e.fault(Some(Fault::Corrupt { byte: 4097 }));
    let o = e.sim(&p, 3);
    assert!(failed(&o).contains("read-back differs"), "{o:?}");
    assert_eq!(e.dev.version().as_deref(), Some("1.0"));

    let mut e = env();
    e.fault(Some(Fault::StaleVersion));
    let o = e.sim(&p, 3);
    assert!(failed(&o).contains("still reports 1.0"), "{o:?}");
    assert!(matches!(e.step(), Some(Step::Failed { .. })));
}

#[test]
fn hanging_device_is_cut_off_at_the_time_limit() {
    let mut e = env();
    e.fault(Some(Fault::Hang));
    e.opts.timeout = Duration::from_millis(300);
    let t = Instant::now();
    let o = e.sim(&payload(100), 4);
    let took = t.elapsed();
    assert!(failed(&o).contains("timed out"), "{o:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn interrupted_flash_resumes_from_the_start_and_new_payload_replaces_old_record() {
    for interrupted in [Step::Planned, Step::Writing, Step::Written] {
        let mut e = env();
        let p = payload(6000);
        // A half write left behind by a killed prepare.
        std::fs::write(e.dev.dir.join("contents"), &p[..100]).unwrap();
        e.journal
            .put(&Record {
                schema: "qfirmware.journal/1".into(),
                component: "fw-bmc".into(),
                device: "bmc".into(),
                from: Some("1.0".into()),
                to: "2.0".into(),
                payload_sha256: Sha256([5; 32]).to_string(),
                format: VersionFormat::Triplet,
                boot_id: None,
                staged_file: None,
                step: interrupted.clone(),
            })
            .unwrap();
        assert_eq!(e.sim(&p, 5), Outcome::Activated, "from {interrupted:?}");
        assert_eq!(e.contents(), p);
    }
    // A record of another payload (an earlier bundle) does not stop this one.
    let mut e = env();
    assert_eq!(e.sim(&payload(10), 6), Outcome::Activated);
    let p = payload(20);
    assert_eq!(e.sim(&p, 7), Outcome::Activated);
    assert_eq!(e.contents(), p);
    assert_eq!(
        e.journal.get("fw-bmc").unwrap().unwrap().payload_sha256,
        Sha256([7; 32]).to_string()
    );
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, format!("{text}\n")).unwrap();
}

#[test]
fn low_battery_without_mains_refuses_before_anything_is_written() {
    let mut e = env();
    let r = e.opts.root.clone();
    write(&r, "sys/class/power_supply/BAT0/type", "Battery");
    write(&r, "sys/class/power_supply/BAT0/capacity", "12");
    write(&r, "sys/class/power_supply/AC/type", "Mains");
    write(&r, "sys/class/power_supply/AC/online", "0");
    let o = e.sim(&payload(100), 8);
    assert!(failed(&o).contains("12%"), "{o:?}");
    assert_eq!(e.step(), None);
    assert_eq!(e.contents(), b"old firmware");
    // On mains the same charge is fine.
    write(&r, "sys/class/power_supply/AC/online", "1");
    assert_eq!(e.sim(&payload(100), 8), Outcome::Activated);
}

#[test]
fn flash_file_pads_to_erase_blocks_and_leaves_the_rest_of_the_device() {
    let mut e = env();
    let dev = e.opts.root.join("mtd0");
    std::fs::write(&dev, vec![0xa5u8; 64 * 1024]).unwrap();
    let p = payload(5000);
    let mut f = FlashFile {
        path: dev.clone(),
        erase_block: 4096,
        offset: 8192,
        banks: None,
    };
    assert_eq!(e.run(&p, 9, &mut f), Outcome::Activated);
    let got = std::fs::read(&dev).unwrap();
    assert_eq!(got.len(), 64 * 1024);
    assert!(got[..8192].iter().all(|&b| b == 0xa5), "before the image");
    assert_eq!(got[8192..8192 + 5000], p[..]);
    assert!(
        got[8192 + 5000..8192 + 8192].iter().all(|&b| b == 0xff),
        "padding"
    );
    assert!(
        got[8192 + 8192..].iter().all(|&b| b == 0xa5),
        "after the image"
    );
}

#[test]
fn vendor_tool_runs_with_the_payload_and_is_verified_by_its_version_command() {
    let mut e = env();
    let dir = e.opts.root.clone();
    let store = dir.join("flashed.bin");
    let ver = dir.join("ver");
    std::fs::write(&ver, "1.0\n").unwrap();
    let sh = |s: String| vec!["sh".to_string(), "-c".to_string(), s];
    let mut t = Tool {
        write: vec![
            sh(format!("cp \"$0\" {}", store.display())),
            sh(format!("echo 2.0 > {}", ver.display())),
        ],
        version: Some(sh(format!("cat {}", ver.display()))),
    };
    // `{payload}` is substituted: pass it as $0.
    for c in &mut t.write {
        c.push("{payload}".into());
    }
    let p = payload(3000);
    assert_eq!(e.run(&p, 10, &mut t), Outcome::Activated);
    assert_eq!(std::fs::read(&store).unwrap(), p);

    // A failing tool: its output reaches the reason.
    let mut e = env();
    let mut bad = Tool {
        write: vec![sh("echo 'image rejected by controller' >&2; exit 3".into())],
        version: None,
    };
    let o = e.run(&p, 11, &mut bad);
    assert!(failed(&o).contains("image rejected by controller"), "{o:?}");
    // Without a version command, the result waits for the reboot.
    let mut e = env();
    let mut staged = Tool {
        write: vec![sh("true".into())],
        version: None,
    };
    assert_eq!(e.run(&p, 12, &mut staged), Outcome::Staged);
    assert_eq!(e.step(), Some(Step::Verified));
}

fn efivar(dir: &Path, name: &str, value: u64) {
    let mut b = 7u32.to_le_bytes().to_vec();
    b.extend_from_slice(&value.to_le_bytes());
    std::fs::write(dir.join(format!("{name}-{EFI_GLOBAL_GUID}")), b).unwrap();
}

#[test]
fn capsule_is_staged_on_the_esp_with_os_indications_set() {
    let mut e = env();
    let esp_dir = e.opts.root.join("esp");
    let vars = e.opts.root.join("efivars");
    std::fs::create_dir_all(&esp_dir).unwrap();
    std::fs::create_dir_all(&vars).unwrap();
    let mut esp = bootctl::esp::DirEsp::new(&esp_dir);
    let p = payload(40_000);
    {
        let mut c = Capsule {
            esp: &mut esp,
            efivars: vars.clone(),
            file: "fw-bmc.cap".into(),
        };
        let o = e.run(&p, 13, &mut c);
        assert!(failed(&o).contains("OsIndicationsSupported"), "{o:?}");
    }
    assert!(!esp_dir.join("EFI/UpdateCapsule/fw-bmc.cap").exists());

    let mut e = env();
    efivar(&vars, "OsIndicationsSupported", 0x1 | 0x4);
    efivar(&vars, "OsIndications", 0x1); // boot to firmware UI, must be kept
    let mut c = Capsule {
        esp: &mut esp,
        efivars: vars.clone(),
        file: "fw-bmc.cap".into(),
    };
    assert_eq!(e.run(&p, 14, &mut c), Outcome::Staged);
    assert_eq!(
        std::fs::read(esp_dir.join("EFI/UpdateCapsule/fw-bmc.cap")).unwrap(),
        p
    );
    let v = std::fs::read(vars.join(format!("OsIndications-{EFI_GLOBAL_GUID}"))).unwrap();
    assert_eq!(v, [7, 0, 0, 0, 0x5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(e.step(), Some(Step::Verified));
}

fn staged(j: &Journal, component: &str, device: &str, to: &str) {
    j.put(&Record {
        schema: "qfirmware.journal/1".into(),
        component: component.into(),
        device: device.into(),
        from: None,
        to: to.into(),
        payload_sha256: Sha256([0; 32]).to_string(),
        format: VersionFormat::Quad,
        boot_id: Some("boot-1".into()),
        staged_file: None,
        step: Step::Verified,
    })
    .unwrap();
}

#[test]
fn results_after_reboot_activate_or_fail_staged_records() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(&d.path().join("journal")).unwrap();
    staged(&j, "a-ok", "esrt-ok", "1.2.3.5");
    staged(&j, "b-battery", "esrt-bad", "1.2.3.5");
    staged(&j, "c-text", "nvme0", "GXA7902Q");
    staged(&j, "d-gone", "missing", "1.0");
    let esrt = |v: u32, s: u32| InstalledVersion::Esrt {
        version: v,
        last_attempt_version: 0x0102_0305,
        last_attempt_status: s,
    };
    let dev = |id: &str, installed| Device {
        component_id: id.into(),
        installed,
        esrt_guid: None,
        vendor: None,
        model: None,
    };
    let devices = [
        dev("esrt-ok", esrt(0x0102_0305, 0)),
        dev("esrt-bad", esrt(0x0102_0304, 7)),
        dev(
            "nvme0",
            InstalledVersion::Text {
                version: "GXA7801Q".into(),
            },
        ),
    ];
    // In the boot that staged them, nothing is judged yet.
    let root = d.path().join("root");
    write(&root, "proc/sys/kernel/random/boot_id", "boot-1");
    let r = results(&j, &devices, &root, None).unwrap();
    assert!(r.iter().all(|x| x.step == Step::Verified), "{r:?}");
    write(&root, "proc/sys/kernel/random/boot_id", "boot-2");
    let r = results(&j, &devices, &root, None).unwrap();
    let by = |c: &str| r.iter().find(|x| x.component == c).unwrap().step.clone();
    assert_eq!(by("a-ok"), Step::Activated);
    assert!(
        matches!(by("b-battery"), Step::Failed { reason } if reason.contains("status 7") && reason.contains("battery"))
    );
    assert!(
        matches!(by("c-text"), Step::Failed { reason } if reason.contains("still runs GXA7801Q"))
    );
    assert!(matches!(by("d-gone"), Step::Failed { reason } if reason.contains("gone")));
    // The journal holds the results.
    assert_eq!(j.get("a-ok").unwrap().unwrap().step, Step::Activated);
    // A second call changes nothing.
    assert_eq!(results(&j, &devices, &root, None).unwrap(), r);
}

#[test]
fn two_bank_device_writes_the_inactive_bank_then_switches() {
    let mut e = env();
    let dev = e.opts.root.join("mtd1");
    let active = e.opts.root.join("active-bank");
    // Bank 0 at 0 holds the running image (0x11), bank 1 at 32 KiB an old one (0x22).
    let mut img = vec![0x11u8; 32 * 1024];
    img.extend(vec![0x22u8; 32 * 1024]);
    std::fs::write(&dev, &img).unwrap();
    let mut f = FlashFile {
        path: dev.clone(),
        erase_block: 4096,
        offset: 0,
        banks: Some(Banks {
            second_offset: 32 * 1024,
            active_file: active.clone(),
        }),
    };
    let p = payload(6000);
    assert_eq!(e.run(&p, 20, &mut f), Outcome::Staged);
    let got = std::fs::read(&dev).unwrap();
    assert!(
        got[..32 * 1024].iter().all(|&b| b == 0x11),
        "running bank untouched"
    );
    assert_eq!(got[32 * 1024..32 * 1024 + 6000], p[..]);
    assert_eq!(std::fs::read_to_string(&active).unwrap().trim(), "1");

    // The next flash goes to bank 0 and leaves bank 1 (now running) alone.
    let mut e = env();
    let q = payload(100);
    assert_eq!(e.run(&q, 21, &mut f), Outcome::Staged);
    let got = std::fs::read(&dev).unwrap();
    assert_eq!(got[..100], q[..]);
    assert_eq!(got[32 * 1024..32 * 1024 + 6000], p[..]);
    assert_eq!(std::fs::read_to_string(&active).unwrap().trim(), "0");

    // A device that cannot be written keeps its active bank.
    let mut e = env();
    let mut gone = FlashFile {
        path: e.opts.root.join("missing"),
        ..f.clone()
    };
    let o = e.run(&q, 22, &mut gone);
    assert!(failed(&o).contains("missing"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&active).unwrap().trim(), "0");
    // A payload larger than a bank would spill into the running one: refused.
    let o = e.run(&payload(40 * 1024), 24, &mut f);
    assert!(failed(&o).contains("overwrite the other bank"), "{o:?}");
    assert_eq!(
        std::fs::read(&dev).unwrap()[32 * 1024..32 * 1024 + 6000],
        p[..]
    );
    // A garbled active-bank file is an error, not a guess.
    std::fs::write(&active, "7\n").unwrap();
    let o = e.run(&q, 23, &mut f);
    assert!(failed(&o).contains("not a bank"), "{o:?}");
}

#[test]
fn power_hook_must_succeed_before_a_write() {
    let mut e = env();
    e.opts.power_hook = Some(vec![
        "sh".into(),
        "-c".into(),
        "echo 'UPS on battery' >&2; exit 1".into(),
    ]);
    let o = e.sim(&payload(100), 30);
    assert!(
        failed(&o).contains("power check refused") && failed(&o).contains("UPS on battery"),
        "{o:?}"
    );
    assert_eq!(e.step(), None);
    assert_eq!(e.contents(), b"old firmware");
    e.opts.power_hook = Some(vec!["true".into()]);
    assert_eq!(e.sim(&payload(100), 30), Outcome::Activated);
}

#[test]
fn a_second_flash_on_the_node_is_refused_while_one_runs() {
    let e = env();
    let attempt = || {
        firmware::prepare::flash_all(
            &e.journal,
            &[item(Action::Flash)],
            &[],
            &Default::default(),
            &e.opts,
            &Quiet,
        )
        .unwrap_err()
    };
    let held = e.journal.lock().unwrap();
    let err = attempt();
    assert!(matches!(err, firmware::Error::Busy { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another qfirmware flash is running")
    );
    drop(held);
    // Released: the same call now gets past the lock (and stops at the missing payload).
    let err = attempt();
    assert!(matches!(err, firmware::Error::NoBackend { .. }), "{err}");
}

#[test]
fn flash_file_read_back_names_the_erase_block_that_differs() {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("mtd2");
    std::fs::write(&dev, vec![0u8; 32 * 1024]).unwrap();
    let mut f = FlashFile {
        path: dev.clone(),
        erase_block: 4096,
        offset: 4096,
        banks: None,
    };
    let p = payload(10_000);
    f.write(&p, Instant::now() + Duration::from_secs(30))
        .unwrap();
    assert_eq!(f.verify(&p, "2.0"), Ok(firmware::backend::Verified::Now));
    // A bit flips in the padding of the last block (the device's third block).
    let mut img = std::fs::read(&dev).unwrap();
    img[4096 + 2 * 4096 + 3000] ^= 1;
    std::fs::write(&dev, img).unwrap();
    let e = f.verify(&p, "2.0").unwrap_err();
    assert!(e.0.contains("erase block 2"), "{e}");
}
