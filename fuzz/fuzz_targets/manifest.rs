//! Any bytes as a manifest: parsing never panics, and whatever parses round-trips
//! through `to_bytes` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qimg::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let bytes = m.to_bytes().expect("a parsed manifest serializes");
        assert_eq!(Manifest::parse(&bytes).expect("round trip"), m);
    }
});
