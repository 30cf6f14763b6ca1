//! The `qbootctl` binary: exit codes and JSON output parsed back.

use std::process::Command;

use bootctl::uki::UkiInfo;
use bootctl::uki::build::{UkiInputs, build};
use tests::{STUB, file_from_package};

fn qbootctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qbootctl"))
}

#[test]
fn inspect_uki_json_and_exit_codes() {
    if !file_from_package(STUB, "systemd-boot-efi") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut kernel = vec![0u8; 4096];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    let uki = build(&UkiInputs {
        stub: std::fs::read(STUB).unwrap(),
        osrel: b"ID=qimg\nIMAGE_VERSION=2.0\n".to_vec(),
        cmdline: "roothash=ab".into(),
        kernel,
        initrd: Some(vec![1; 10]),
        uname: Some("6.1.0-1-amd64".into()),
    })
    .unwrap();
    let file = d.path().join("x.efi");
    std::fs::write(&file, &uki).unwrap();
    let out = qbootctl()
        .arg("inspect-uki")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: UkiInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.schema, bootctl::uki::INSPECT_SCHEMA);
    assert_eq!(info.version.as_deref(), Some("2.0"));
    assert_eq!(info.kernel_release.as_deref(), Some("6.1.0-1-amd64"));
    assert_eq!(info, bootctl::uki::inspect(&uki).unwrap());

    let out = qbootctl().arg("inspect-uki").arg(STUB).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no .linux section"));
    let out = qbootctl()
        .arg("inspect-uki")
        .arg(d.path().join("missing.efi"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

mod slots {
    use std::path::Path;
    use std::process::{Command, Output};

    use bootctl::efivars::LoaderVars;
    use bootctl::entries::{self, EntryState};
    use bootctl::esp::{self, DirEsp, Esp};
    use bootctl::layout::{MIB, Slot};
    use bootctl::status::{LAYOUT_RECORD, LayoutRecord, Status};
    use tests::{STUB, file_from_package, small_uki};

    const P: &str = "qimg-demo";

    fn qbootctl(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_qbootctl"))
            .args(args)
            .output()
            .unwrap()
    }

    fn status(args: &[&str]) -> Status {
        let mut a = args.to_vec();
        a.extend(["--json", "status"]);
        let out = qbootctl(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn record(e: &mut dyn Esp) {
        let r = LayoutRecord {
            schema: "qimg.layout/1".into(),
            product: P.into(),
            esp_mib: 64,
            root_mib: 40,
            verity_mib: 2,
        };
        e.write_new(LAYOUT_RECORD, &serde_json::to_vec(&r).unwrap())
            .unwrap();
    }

    /// A disk image: slot A good at 1.0, slot B trying 2.0 with 3 tries.
    fn image(dir: &Path) -> String {
        let (path, f, t) = tests::layout_disk(dir, "disk.raw", 256 * MIB, &tests::small_layout(P));
        let mut e = tests::formatted_esp(f, &t, 9);
        record(&mut e);
        entries::install(&mut e, P, Slot::A, "1.0", &small_uki(P, "1.0"), None).unwrap();
        entries::install(&mut e, P, Slot::B, "2.0", &small_uki(P, "2.0"), Some(3)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn offline_status_bless_rollback_set_next() {
        if !file_from_package(STUB, "systemd-boot-efi") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path());
        let s = status(&["--image", &img]);
        assert_eq!(s.next.as_ref().unwrap().entry, "qimg-demo-b-2.0+3-0.efi");
        assert_eq!(s.slots[0].state, Some(EntryState::Good));
        assert_eq!(
            s.slots[1].state,
            Some(EntryState::Trying { left: 3, done: 0 })
        );
        assert_eq!(s.slots[0].label.as_deref(), Some("_empty"));

        // rollback: B marked bad, A boots next; a second rollback has no fallback (exit 1).
        let out = qbootctl(&["--image", &img, "rollback"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = status(&["--image", &img]);
        assert_eq!(s.next.as_ref().unwrap().slot, Some(Slot::A));
        assert_eq!(s.slots[1].state, Some(EntryState::Bad { done: 0 }));
        assert_eq!(s.slots[1].reason.as_deref(), Some("tries exhausted"));
        let before = std::fs::read(&img).unwrap();
        assert_eq!(
            qbootctl(&["--image", &img, "rollback"]).status.code(),
            Some(1)
        );
        assert!(
            std::fs::read(&img).unwrap() == before,
            "a refused rollback changed the image"
        );

        // set-next b re-arms B (newer, so it sorts first); set-next a is then refused offline.
        assert!(
            qbootctl(&["--image", &img, "set-next", "b", "--tries", "2"])
                .status
                .success()
        );
        let s = status(&["--image", &img]);
        assert_eq!(s.next.as_ref().unwrap().entry, "qimg-demo-b-2.0+2-0.efi");
        let before = std::fs::read(&img).unwrap();
        assert_eq!(
            qbootctl(&["--image", &img, "set-next", "a"]).status.code(),
            Some(1)
        );
        assert!(
            std::fs::read(&img).unwrap() == before,
            "a refused set-next changed the image"
        );

        // mark-good refuses an entry that was never tried (B is +2-0): nothing changes.
        let before = std::fs::read(&img).unwrap();
        let out = qbootctl(&["--image", &img, "mark-good"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to bless qimg-demo-b-2.0+2-0.efi: it has never been tried")
                && err.contains("what the loader would boot next")
                && err.contains("--force"),
            "{err}"
        );
        assert!(
            std::fs::read(&img).unwrap() == before,
            "a refused mark-good changed the image"
        );
        // Forced, it blesses what would boot (offline) and keeps A as the fallback.
        assert!(
            qbootctl(&["--image", &img, "mark-good", "--force"])
                .status
                .success()
        );
        let s = status(&["--image", &img]);
        assert_eq!(s.slots[1].entry.as_deref(), Some("qimg-demo-b-2.0.efi"));
        assert_eq!(s.slots[1].state, Some(EntryState::Good));
        assert_eq!(s.slots[0].entry.as_deref(), Some("qimg-demo-a-1.0.efi"));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn live_mode_uses_the_loader_variables() {
        if !file_from_package(STUB, "systemd-boot-efi") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let esp_dir = d.path().join("efi");
        let vars_dir = d.path().join("efivars");
        std::fs::create_dir_all(&vars_dir).unwrap();
        for sub in esp::DIRS {
            std::fs::create_dir_all(esp_dir.join(sub)).unwrap();
        }
        let mut e = DirEsp::new(&esp_dir);
        record(&mut e);
        entries::install(&mut e, P, Slot::A, "1.0", &small_uki(P, "1.0"), None).unwrap();
        entries::install(&mut e, P, Slot::B, "2.0", &small_uki(P, "2.0"), Some(3)).unwrap();
        // The loader booted B and renamed it, as systemd-boot does.
        e.rename(
            "EFI/Linux/qimg-demo-b-2.0+3-0.efi",
            "EFI/Linux/qimg-demo-b-2.0+2-1.efi",
        )
        .unwrap();
        let vars = LoaderVars::new(&vars_dir);
        vars.set("LoaderEntrySelected", "qimg-demo-b-2.0+3-0.efi")
            .unwrap();
        vars.set(
            "LoaderBootCountPath",
            "\\EFI\\Linux\\qimg-demo-b-2.0+2-1.efi",
        )
        .unwrap();
        let live = [
            "--esp",
            esp_dir.to_str().unwrap(),
            "--efivars",
            vars_dir.to_str().unwrap(),
        ];
        let s = status(&live);
        let booted = s.booted.unwrap();
        assert_eq!(
            (booted.entry.as_str(), booted.slot),
            ("qimg-demo-b-2.0+2-1.efi", Some(Slot::B))
        );
        let mut a = live.to_vec();
        a.push("mark-good");
        assert!(qbootctl(&a).status.success());
        assert_eq!(
            e.list("EFI/Linux").unwrap(),
            ["qimg-demo-a-1.0.efi", "qimg-demo-b-2.0.efi"]
        );
        // set-next a: A is older, so only a one-shot can make it boot next.
        let mut a = live.to_vec();
        a.extend(["set-next", "a"]);
        assert!(qbootctl(&a).status.success());
        assert_eq!(
            vars.get("LoaderEntryOneShot").unwrap().as_deref(),
            Some("qimg-demo-a-1.0+3-0.efi")
        );
        let s = status(&live);
        assert_eq!(s.next.unwrap().slot, Some(Slot::A));
    }
}

#[test]
fn an_image_without_an_esp_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let (path, mut f, _) =
        tests::layout_disk(d.path(), "noesp.raw", 256 << 20, &tests::small_layout("x"));
    bootctl::table::update(&mut f, |p| {
        p.remove(&1);
        Ok(())
    })
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let out = qbootctl()
        .args(["--image", path.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ESP"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&path).unwrap() == before);
}
