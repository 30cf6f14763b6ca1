//! Random damage never panics the reader and never passes verification.

use std::sync::OnceLock;

use proptest::prelude::*;
use tests::{Fixture, verify_bytes};

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::new(60_000))
}

#[derive(Debug, Clone)]
enum Damage {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..600)
        )
            .prop_map(|(i, v)| Damage::Insert(i, v)),
        (any::<prop::sample::Index>(), 1usize..600).prop_map(|(i, n)| Damage::Delete(i, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn damaged_bundles_fail_cleanly(d in prop::collection::vec(damage(), 1..3)) {
        let f = fixture();
        let mut b = f.bytes.clone();
        for d in &d {
            match d {
                Damage::Flip(i, x) => { let at = i.index(b.len()); b[at] ^= x; }
                Damage::Truncate(i) => { let at = i.index(b.len()); b.truncate(at); }
                Damage::Insert(i, v) => { let at = i.index(b.len() + 1); b.splice(at..at, v.iter().copied()); }
                Damage::Delete(i, n) => { let at = i.index(b.len()); let end = (at + n).min(b.len()); b.drain(at..end); }
            }
        }
        prop_assume!(b != f.bytes);
        prop_assert!(verify_bytes(&b, &f.trusted()).is_err());
        // The unverified reader must not panic either.
        if let Ok(r) = qimg::BundleReader::open(&b[..]) {
            let _ = r.finish(&qimg::NoProgress);
        }
    }
}
