//! Any bytes as the files `qfirmware` reads back: a journal record, the node's
//! device configuration, a firmware version in every format. Parsing never panics;
//! records round-trip; a parsed version compares equal to itself.
#![no_main]

use firmware::journal::Record;
use firmware::prepare::NodeConfig;
use libfuzzer_sys::fuzz_target;
use qimg::VersionFormat;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Record>(data) {
        let bytes = serde_json::to_vec(&r).expect("a record serializes");
        assert_eq!(serde_json::from_slice::<Record>(&bytes).expect("round trip"), r);
    }
    if let Ok(c) = serde_json::from_slice::<NodeConfig>(data) {
        let _ = c.probes();
        let _ = c.backends();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for f in [
            VersionFormat::Plain,
            VersionFormat::Triplet,
            VersionFormat::Quad,
            VersionFormat::Hex,
        ] {
            if let Some(v) = f.parse(text) {
                assert_eq!(v.compare(&v), Some(std::cmp::Ordering::Equal));
            }
        }
    }
});
