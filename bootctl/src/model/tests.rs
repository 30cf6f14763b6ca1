use super::*;
use proptest::prelude::*;

fn osrel(version: &str) -> OsRelease {
    OsRelease::parse(&format!(
        "ID=demo\nIMAGE_ID=demo\nIMAGE_VERSION={version}\nVERSION_ID={version}\nPRETTY_NAME=\"Demo {version}\"\n"
    ))
}

fn uki(file: &str, version: &str) -> Entry {
    Entry::from_uki(file, &osrel(version)).unwrap()
}

fn files(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.file.as_str()).collect()
}

/// Boots `n` times with the given config; returns the file booted each time.
fn run(entries: &mut [Entry], conf: &LoaderConf, vars: &mut EfiVars, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (sel, rename) = boot(entries, conf, vars);
            let i = sel.chosen.unwrap();
            // The booted file is the one before the rename.
            rename
                .map(|(old, _)| old)
                .unwrap_or_else(|| entries[i].file.clone())
        })
        .collect()
}

#[test]
fn osrel_fields_and_quotes() {
    let o =
        OsRelease::parse("# c\nID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME='Debian 12'\nBAD LINE\n");
    assert_eq!(o.id.as_deref(), Some("debian"));
    assert_eq!(o.version_id.as_deref(), Some("12"));
    assert_eq!(o.pretty_name.as_deref(), Some("Debian 12"));
    let e = Entry::from_uki("Debian.EFI", &o).unwrap();
    assert_eq!(e.id, "debian.efi");
    assert_eq!(e.sort_key.as_deref(), Some("debian"));
    assert_eq!(e.version.as_deref(), Some("12"));
    // No name at all: systemd-boot skips the file.
    assert!(Entry::from_uki("x.efi", &OsRelease::parse("VERSION_ID=1\n")).is_none());
    assert!(Entry::from_uki("auto-x.efi", &o).is_none());
    assert!(Entry::from_uki("x.conf", &o).is_none());
}

#[test]
fn new_counted_entry_boots_first() {
    let mut e = vec![uki("slot-a.efi", "1.0.0"), uki("slot-b+3-0.efi", "2.0.0")];
    let s = select(&e, &LoaderConf::default(), &EfiVars::default());
    assert_eq!(s.chosen, Some(1));
    assert_eq!(s.reason, Reason::FirstInOrder);
    let (_, rename) = boot(&mut e, &LoaderConf::default(), &mut EfiVars::default());
    assert_eq!(
        rename,
        Some(("slot-b+3-0.efi".into(), "slot-b+2-1.efi".into()))
    );
}

#[test]
fn version_wins_over_name_when_sort_keys_match() {
    // Measured under QEMU: a=3.0.0 boots before b=2.0.0 although "slot-b" > "slot-a".
    let e = vec![uki("slot-a.efi", "3.0.0"), uki("slot-b.efi", "2.0.0")];
    assert_eq!(
        select(&e, &LoaderConf::default(), &EfiVars::default()).chosen,
        Some(0)
    );
}

#[test]
fn tries_exhausted_falls_back() {
    // The QEMU-measured series: b, b, b (+2-1, +1-2, +0-3), then a, and a stays.
    let mut e = vec![uki("slot-a.efi", "1.0.0"), uki("slot-b+3.efi", "2.0.0")];
    let booted = run(&mut e, &LoaderConf::default(), &mut EfiVars::default(), 5);
    assert_eq!(
        booted,
        [
            "slot-b+3.efi",
            "slot-b+2-1.efi",
            "slot-b+1-2.efi",
            "slot-a.efi",
            "slot-a.efi"
        ]
    );
    assert_eq!(files(&e), ["slot-a.efi", "slot-b+0-3.efi"]);
    assert!(e[1].is_bad());
}

#[test]
fn blessed_entry_stays() {
    let mut e = vec![uki("slot-a.efi", "1.0.0"), uki("slot-b+3-0.efi", "2.0.0")];
    let conf = LoaderConf::default();
    let mut vars = EfiVars::default();
    run(&mut e, &conf, &mut vars, 1);
    // mark-good: drop the counter.
    e[1] = uki("slot-b.efi", "2.0.0");
    let booted = run(&mut e, &conf, &mut vars, 5);
    assert!(booted.iter().all(|f| f == "slot-b.efi"), "{booted:?}");
}

#[test]
fn two_bad_entries_and_a_good_one() {
    let e = vec![
        uki("slot-b+0-3.efi", "3.0.0"),
        uki("slot-c+0.efi", "4.0.0"),
        uki("slot-a.efi", "1.0.0"),
    ];
    let s = select(&e, &LoaderConf::default(), &EfiVars::default());
    assert_eq!(s.chosen, Some(2));
    // Bad entries sort last, newest first among them.
    assert_eq!(s.order, [2, 1, 0]);
}

#[test]
fn only_bad_entries_still_boot_something() {
    // Nothing stops systemd-boot from booting a bad entry when all are bad; its
    // counter keeps counting done tries.
    let mut e = vec![uki("slot-b+0-3.efi", "2.0.0")];
    let booted = run(&mut e, &LoaderConf::default(), &mut EfiVars::default(), 2);
    assert_eq!(booted, ["slot-b+0-3.efi", "slot-b+0-4.efi"]);
    assert_eq!(files(&e), ["slot-b+0-5.efi"]);
}

#[test]
fn counter_forms() {
    let e = |f: &str| uki(f, "1");
    assert!(e("x+0.efi").is_bad());
    assert_eq!(e("x+3-0.efi").counter, Some(Counter { left: 3, done: 0 }));
    assert_eq!(e("x.efi").counter, None);
    for malformed in ["x+.efi", "x+3-.efi", "x+a.efi", "x+3.efi.efi2.efi"] {
        assert_eq!(e(malformed).counter, None, "{malformed}");
        assert_eq!(e(malformed).file_after_boot(), malformed);
    }
    // Same name and version: more tries left first, then fewer done.
    let mut v = vec![e("x+1-2.efi"), e("x+2-0.efi")];
    v.sort_by(compare);
    assert_eq!(files(&v), ["x+2-0.efi", "x+1-2.efi"]);
}

#[test]
fn default_patterns() {
    let entries = || vec![uki("slot-a.efi", "1.0.0"), uki("slot-b+3-0.efi", "2.0.0")];
    let conf = |d: &str| LoaderConf::parse(&format!("timeout 0\neditor no\ndefault {d}\n"));

    // `default slot-b*` overrides boot assessment: b keeps booting after its tries.
    let mut e = entries();
    let c = conf("slot-b*");
    assert!(c.defeats_fallback(&e));
    let booted = run(&mut e, &c, &mut EfiVars::default(), 5);
    assert!(booted.iter().all(|f| f.starts_with("slot-b")), "{booted:?}");
    assert_eq!(files(&e)[1], "slot-b+0-5.efi");

    // `default slot-*` is safe: the first match in order, and bad entries sort last.
    let mut e = entries();
    let c = conf("slot-*");
    assert!(!c.defeats_fallback(&e));
    let booted = run(&mut e, &c, &mut EfiVars::default(), 4);
    assert_eq!(booted.last().unwrap(), "slot-a.efi");

    // In v252 the id includes the counter: `slot-b.efi` does not match the counted file.
    let e = entries();
    let s = select(&e, &conf("slot-b.efi"), &EfiVars::default());
    assert_eq!(s.reason, Reason::FirstInOrder);
    // ... but the full name does, until the first rename.
    let s = select(&e, &conf("slot-b+3-0.efi"), &EfiVars::default());
    assert_eq!(s.reason, Reason::ConfigDefault("slot-b+3-0.efi".into()));
    // Patterns are case-folded like ids.
    let s = select(&e, &conf("SLOT-A.EFI"), &EfiVars::default());
    assert_eq!(s.chosen, Some(0));
    // A pattern matching nothing falls through.
    let s = select(&e, &conf("nope*"), &EfiVars::default());
    assert_eq!((s.chosen, s.reason), (Some(1), Reason::FirstInOrder));
}

#[test]
fn efi_variables_take_precedence() {
    let e = vec![uki("slot-a.efi", "1.0.0"), uki("slot-b+3-0.efi", "2.0.0")];
    let conf = LoaderConf::parse("default slot-b*\n");
    let vars = EfiVars {
        entry_default: Some("slot-a.efi".into()),
        ..EfiVars::default()
    };
    let s = select(&e, &conf, &vars);
    assert_eq!(
        (s.chosen, s.reason.clone()),
        (Some(0), Reason::EfiDefault("slot-a.efi".into()))
    );
    let vars = EfiVars {
        entry_oneshot: Some("slot-b*".into()),
        entry_default: Some("slot-a.efi".into()),
        ..EfiVars::default()
    };
    assert_eq!(select(&e, &conf, &vars).chosen, Some(1));
    // The one-shot is consumed by the boot.
    let mut v = vars.clone();
    let mut es = e.clone();
    boot(&mut es, &conf, &mut v);
    assert_eq!(v.entry_oneshot, None);
    // @saved uses LoaderEntryLastBooted.
    let vars = EfiVars {
        entry_default: Some("@saved".into()),
        entry_last_booted: Some("slot-a.efi".into()),
        ..EfiVars::default()
    };
    assert_eq!(select(&e, &LoaderConf::default(), &vars).chosen, Some(0));
    let saved_conf = LoaderConf::parse("default @saved\n");
    let vars = EfiVars {
        entry_last_booted: Some("slot-a.efi".into()),
        ..EfiVars::default()
    };
    assert_eq!(
        select(&e, &saved_conf, &vars).reason,
        Reason::ConfigDefault("slot-a.efi".into())
    );
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        "[a-c]",
        prop::option::of((0u32..4, 0u32..4)),
        "[1-3]\\.[0-2]",
    )
        .prop_map(|(stem, counter, version)| {
            let file = match counter {
                Some((l, d)) => format!("slot-{stem}+{l}-{d}.efi"),
                None => format!("slot-{stem}.efi"),
            };
            uki(&file, &version)
        })
}

proptest! {
    #[test]
    fn selection_invariants(entries in prop::collection::vec(arb_entry(), 1..6)) {
        let s = select(&entries, &LoaderConf::default(), &EfiVars::default());
        // Something always boots, and the order is a permutation.
        let mut sorted = s.order.clone();
        sorted.sort();
        prop_assert_eq!(sorted, (0..entries.len()).collect::<Vec<_>>());
        let chosen = s.chosen.unwrap();
        prop_assert_eq!(chosen, s.order[0]);
        // A bad entry boots only when every entry is bad.
        if entries[chosen].is_bad() {
            prop_assert!(entries.iter().all(Entry::is_bad));
        }
        // The comparison is a total order: antisymmetric.
        for a in &entries {
            for b in &entries {
                prop_assert_eq!(compare(a, b), compare(b, a).reverse());
            }
        }
    }

    #[test]
    fn a_counted_entry_that_never_blesses_is_abandoned(tries in 1u32..=9) {
        // Whatever the tries, an unblessed entry is left after exactly `tries` boots.
        let mut e = vec![uki("good.efi", "1.0"), uki(&format!("new+{tries}-0.efi"), "2.0")];
        let booted = run(&mut e, &LoaderConf::default(), &mut EfiVars::default(), tries as usize + 2);
        let new_boots = booted.iter().filter(|f| f.starts_with("new")).count();
        prop_assert_eq!(new_boots, tries as usize);
        prop_assert_eq!(booted.last().unwrap(), "good.efi");
    }
}
