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
