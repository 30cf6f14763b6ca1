//! Any bytes as a disk (GPT) and as an ESP entry name: no panics; a table that reads
//! validates; entry names normalize idempotently; the selection model never panics
//! and always picks an entry.
#![no_main]

use bootctl::counter::EntryName;
use bootctl::model::{self, EfiVars, Entry, LoaderConf, OsRelease};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dev = std::io::Cursor::new(data.to_vec());
    if let Ok(t) = bootctl::table::read(&mut dev) {
        assert!(bootctl::table::validate(&t).is_ok());
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let names: Vec<&str> = text.split('\n').take(8).collect();
    let mut entries = vec![];
    for name in &names {
        if let Some(n) = EntryName::parse(name, ".efi") {
            let again = EntryName::parse(&n.to_string(), ".efi").expect("a formatted name parses");
            assert_eq!(again.counter, n.counter);
            assert_eq!(again.to_string(), n.to_string());
        }
        let osrel = OsRelease::parse("ID=x\nIMAGE_VERSION=1\n");
        if let Some(e) = Entry::from_uki(name, &osrel) {
            entries.push(e);
        }
    }
    let sel = model::select(&entries, &LoaderConf::parse(text), &EfiVars::default());
    assert_eq!(sel.chosen.is_some(), !entries.is_empty());
});
