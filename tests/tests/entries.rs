//! Slot entries on an ESP inside a disk image, driven through the loader model.

use std::fs::File;
use std::path::Path;

use bootctl::entries::{self, EntryState, LINUX_DIR};
use bootctl::esp::{Esp, ImageEsp};
use bootctl::layout::{MIB, Slot};
use bootctl::model::{EfiVars, Reason};
use tests::{STUB, file_from_package, formatted_esp, layout_disk, small_layout, small_uki};

const P: &str = "qimg-demo";

fn esp_image(dir: &Path) -> ImageEsp<File> {
    let (_, f, t) = layout_disk(dir, "disk.raw", 256 * MIB, &small_layout(P));
    formatted_esp(f, &t, 1)
}

/// What the loader does on a boot: select, then rename the counted entry.
fn loader_boot(e: &mut dyn Esp) -> String {
    let (found, sel) = entries::next(e, P, &EfiVars::default()).unwrap();
    let chosen = &found[sel.chosen.unwrap()].entry;
    let next = chosen.file_after_boot();
    if next != chosen.file {
        e.rename(
            &format!("{LINUX_DIR}/{}", chosen.file),
            &format!("{LINUX_DIR}/{next}"),
        )
        .unwrap();
    }
    next
}

fn names(e: &mut dyn Esp) -> Vec<String> {
    e.list(LINUX_DIR).unwrap()
}

#[test]
fn upgrade_try_bless_and_fallback() {
    if !file_from_package(STUB, "systemd-boot-efi") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut e = esp_image(d.path());
    let a = entries::install(&mut e, P, Slot::A, "7.0.0", &small_uki(P, "7.0.0"), None).unwrap();
    assert_eq!(a, "qimg-demo-a-7.0.0.efi");
    // Healthy upgrade: B with 3 tries boots first, is blessed, A stays as fallback.
    let b = entries::install(&mut e, P, Slot::B, "7.1.0", &small_uki(P, "7.1.0"), Some(3)).unwrap();
    assert_eq!(b, "qimg-demo-b-7.1.0+3-0.efi");
    let booted = loader_boot(&mut e);
    assert_eq!(booted, "qimg-demo-b-7.1.0+2-1.efi");
    let blessed = entries::bless(&mut e, P, &booted).unwrap();
    assert_eq!(blessed, "qimg-demo-b-7.1.0.efi");
    assert_eq!(
        names(&mut e),
        ["qimg-demo-a-7.0.0.efi", "qimg-demo-b-7.1.0.efi"]
    );
    for _ in 0..3 {
        assert_eq!(loader_boot(&mut e), "qimg-demo-b-7.1.0.efi");
    }
    // Broken upgrade into A: three tries, then B again, and A shows as bad.
    entries::install(&mut e, P, Slot::A, "7.2.0", &small_uki(P, "7.2.0"), Some(3)).unwrap();
    assert_eq!(
        names(&mut e),
        ["qimg-demo-a-7.2.0+3-0.efi", "qimg-demo-b-7.1.0.efi"]
    );
    let booted: Vec<String> = (0..5).map(|_| loader_boot(&mut e)).collect();
    assert_eq!(
        booted,
        [
            "qimg-demo-a-7.2.0+2-1.efi",
            "qimg-demo-a-7.2.0+1-2.efi",
            "qimg-demo-a-7.2.0+0-3.efi",
            "qimg-demo-b-7.1.0.efi",
            "qimg-demo-b-7.1.0.efi"
        ]
    );
    let (found, sel) = entries::next(&mut e, P, &EfiVars::default()).unwrap();
    assert_eq!(sel.reason, Reason::FirstInOrder);
    let a_entry = found.iter().find(|x| x.slot == Some(Slot::A)).unwrap();
    assert_eq!(
        EntryState::of(a_entry.entry.counter),
        EntryState::Bad { done: 3 }
    );
}

#[test]
fn mark_bad_makes_the_other_slot_boot_and_stale_entries_go() {
    if !file_from_package(STUB, "systemd-boot-efi") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut e = esp_image(d.path());
    entries::install(&mut e, P, Slot::A, "1.0", &small_uki(P, "1.0"), None).unwrap();
    entries::install(&mut e, P, Slot::B, "2.0", &small_uki(P, "2.0"), Some(2)).unwrap();
    let bad = entries::mark_bad(&mut e, "qimg-demo-b-2.0+2-0.efi").unwrap();
    assert_eq!(bad, "qimg-demo-b-2.0+0-0.efi");
    assert_eq!(loader_boot(&mut e), "qimg-demo-a-1.0.efi");
    // Reinstalling a slot replaces its entries; a foreign UKI is left alone.
    e.write_new("EFI/Linux/other-os.efi", &small_uki("other", "9"))
        .unwrap();
    entries::install(&mut e, P, Slot::B, "2.1", &small_uki(P, "2.1"), Some(3)).unwrap();
    assert_eq!(
        names(&mut e),
        [
            "other-os.efi",
            "qimg-demo-a-1.0.efi",
            "qimg-demo-b-2.1+3-0.efi"
        ]
    );
    // Removing a slot's entries (before overwriting it) leaves the other slot bootable.
    entries::remove_slot_entries(&mut e, P, Slot::B).unwrap();
    assert_eq!(names(&mut e), ["other-os.efi", "qimg-demo-a-1.0.efi"]);
    assert!(entries::install(&mut e, P, Slot::B, "3", &small_uki(P, "3"), Some(10)).is_err());
}

#[test]
fn a_staged_entry_is_invisible_until_activated() {
    if !file_from_package(STUB, "systemd-boot-efi") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut e = esp_image(d.path());
    entries::install(&mut e, P, Slot::A, "7.0.0", &small_uki(P, "7.0.0"), None).unwrap();
    let old_b =
        entries::install(&mut e, P, Slot::B, "6.9.0", &small_uki(P, "6.9.0"), None).unwrap();
    let staged = entries::stage(&mut e, P, Slot::B, "7.1.0", &small_uki(P, "7.1.0")).unwrap();
    assert_eq!(staged, "qimg-demo-b-7.1.0.efi.staged");
    // The loader still boots A, and sees only the two real entries.
    let (found, sel) = entries::next(&mut e, P, &EfiVars::default()).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(
        found[sel.chosen.unwrap()].entry.file,
        "qimg-demo-a-7.0.0.efi"
    );
    assert_eq!(
        entries::staged(&mut e, P, Slot::B).unwrap(),
        vec![staged.clone()]
    );
    assert!(entries::staged(&mut e, P, Slot::A).unwrap().is_empty());
    // Activation: one rename to a counted name, the slot's old entry gone; it boots next.
    let name = entries::activate_staged(&mut e, P, Slot::B, 3).unwrap();
    assert_eq!(name, "qimg-demo-b-7.1.0+3-0.efi");
    let mut files = names(&mut e);
    files.sort();
    assert_eq!(
        files,
        vec!["qimg-demo-a-7.0.0.efi".to_string(), name.clone()]
    );
    assert!(!files.contains(&old_b));
    assert_eq!(loader_boot(&mut e), "qimg-demo-b-7.1.0+2-1.efi");
    // Nothing staged any more: a second activation is refused and changes nothing.
    let before = names(&mut e);
    assert!(entries::activate_staged(&mut e, P, Slot::B, 3).is_err());
    assert_eq!(names(&mut e), before);
    // Removing a slot's entries takes staged UKIs too.
    entries::stage(&mut e, P, Slot::A, "7.2.0", &small_uki(P, "7.2.0")).unwrap();
    let gone = entries::remove_slot_entries(&mut e, P, Slot::A).unwrap();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert_eq!(names(&mut e), vec!["qimg-demo-b-7.1.0+2-1.efi".to_string()]);
}
