//! Any bytes as a bundle: the reader never panics; a manifest it accepts
//! re-serializes to one that parses back equal; nothing verifies against a key
//! the input cannot hold a signature for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qimg::{BundleReader, KeyId, Manifest, NoProgress, SecretKey, TrustedKeys};

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = BundleReader::open(data) {
        let m = reader.manifest().clone();
        let again = Manifest::parse(&m.to_bytes().expect("a parsed manifest serializes"))
            .expect("a serialized manifest parses");
        assert_eq!(again, m);
        let _ = reader.finish(&NoProgress);
    }
    let key = SecretKey::from_seed([7; 32], KeyId([7; 8])).public();
    let _ = BundleReader::open_verified(data, &TrustedKeys::new([key]));
});
