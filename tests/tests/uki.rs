//! UKIs built from Debian's systemd stub, checked with objdump.

use std::process::Command;

use tests::{STUB, file_from_package, run, tool};

/// Something shaped like an x86 bzImage: a setup header with a version string.
fn fake_kernel() -> Vec<u8> {
    let mut k = vec![0x90u8; 300_000];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
    let v = b"6.1.0-99-amd64 (test) #1\0";
    k[0x500..0x500 + v.len()].copy_from_slice(v);
    k
}

#[test]
fn objdump_lists_the_uki_sections_in_canonical_order() {
    if !(tool("objdump") && file_from_package(STUB, "systemd-boot-efi")) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::write(p("vmlinuz"), fake_kernel()).unwrap();
    std::fs::write(p("initrd"), vec![1u8; 123_456]).unwrap();
    std::fs::write(
        p("os-release"),
        "ID=qimg\nIMAGE_ID=qimg\nIMAGE_VERSION=7.1.0\n",
    )
    .unwrap();
    let out = p("x.efi");
    bootctl::uki::build::build_files(
        std::path::Path::new(STUB),
        &p("vmlinuz"),
        Some(&p("initrd")),
        &p("os-release"),
        "console=ttyS0 roothash=00",
        None,
        &out,
    )
    .unwrap();
    let text = String::from_utf8(run(Command::new("objdump").arg("-h").arg(&out)).stdout).unwrap();
    // (name, size) of every section objdump sees, in order.
    let sections: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 7 && f[0].parse::<u32>().is_ok())
                .then(|| (f[1].to_owned(), u64::from_str_radix(f[2], 16).unwrap()))
        })
        .collect();
    let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
    let added = &names[names.len() - 5..];
    assert_eq!(
        added,
        [".osrel", ".cmdline", ".linux", ".initrd", ".uname"],
        "{text}"
    );
    assert!(
        names.contains(&".sdmagic") && names.contains(&".text"),
        "stub sections kept: {names:?}"
    );
    let size = |n: &str| sections.iter().find(|(x, _)| x == n).unwrap().1;
    assert_eq!(size(".linux"), 300_000);
    assert_eq!(size(".initrd"), 123_456);
    assert_eq!(size(".cmdline"), "console=ttyS0 roothash=00".len() as u64);
    assert_eq!(size(".uname"), "6.1.0-99-amd64".len() as u64);
    let private =
        String::from_utf8(run(Command::new("objdump").arg("-p").arg(&out)).stdout).unwrap();
    assert!(private.contains("(EFI application)"), "{private}");
}

#[test]
fn inspection_reads_back_what_was_built_and_names_what_is_wrong() {
    if !file_from_package(STUB, "systemd-boot-efi") {
        return;
    }
    use bootctl::uki::build::{UkiInputs, build};
    use bootctl::uki::inspect;
    let stub = std::fs::read(STUB).unwrap();
    let inputs = UkiInputs {
        stub: stub.clone(),
        osrel: b"ID=qimg\nIMAGE_ID=qimg-core\nIMAGE_VERSION=7.1.0\nPRETTY_NAME=\"qimg 7.1.0\"\n"
            .to_vec(),
        cmdline: "console=ttyS0 quiet\n".into(),
        kernel: fake_kernel(),
        initrd: None,
        uname: None,
    };
    let info = inspect(&build(&inputs).unwrap()).unwrap();
    assert_eq!(info.id.as_deref(), Some("qimg"));
    assert_eq!(info.image_id.as_deref(), Some("qimg-core"));
    assert_eq!(info.version.as_deref(), Some("7.1.0"));
    assert_eq!(info.title.as_deref(), Some("qimg 7.1.0"));
    assert_eq!(info.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    assert_eq!(info.kernel_release.as_deref(), Some("6.1.0-99-amd64"));
    let linux = info.sections.iter().find(|s| s.name == ".linux").unwrap();
    assert_eq!(linux.size, 300_000);
    assert!(
        !info.sections.iter().any(|s| s.name == ".initrd"),
        "no initrd was given"
    );

    let reason = |bytes: &[u8]| match inspect(bytes) {
        Err(bootctl::Error::NotUki { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert!(reason(b"#!/bin/sh\n").contains("not a PE image"));
    assert!(reason(&stub).contains("no .linux section"));
    // An EFI boot-service driver (subsystem 11) is not an EFI application.
    let mut driver = build(&inputs).unwrap();
    let pe = u32::from_le_bytes(driver[0x3c..0x40].try_into().unwrap()) as usize;
    let subsystem = pe + 4 + 20 + 68;
    driver[subsystem] = 11;
    assert!(reason(&driver).contains("not an EFI application"));
}
