use super::*;

const FILE: [u8; 32] = [1; 32];

fn ring(doc: &KeysDoc) -> KeyRing {
    KeyRing::of(doc).unwrap()
}

fn signer(bytes: &[u8; 32]) -> TokenKey {
    TokenKey::from_bytes(bytes)
}

#[test]
fn a_rotation_never_refuses_a_token_it_should_accept() {
    let now = 10_000;
    let life = 3600;
    // Before any rotation the files' key signs.
    let before = signer(&FILE).issue("admin", now, life);
    let (staged, id) = stage(None, &FILE, &[2; 32]);
    assert_eq!(id, 1);
    assert_eq!(staged.keys.len(), 2);
    // Staged: the old key still signs, the new one is accepted already.
    let r = ring(&staged);
    assert_eq!(r.issuing_id(), 0);
    let early_new = signer(&[2; 32]).issue("admin", now, life);
    assert!(r.check(&before, now, life).is_ok());
    assert!(r.check(&early_new, now, life).is_ok());
    // Taken up again (an interrupted rotation): the same key, not another.
    let (again, same) = stage(Some(&staged), &FILE, &[3; 32]);
    assert_eq!((same, &again), (1, &staged));
    // Switched: the new key signs, the old one is accepted for a lifetime.
    let switched = switch(&staged, 1, now, now + life);
    let r = ring(&switched);
    assert_eq!(r.issuing_id(), 1);
    let after = r.issue("admin", now, life);
    assert!(r.check(&after, now, life).is_ok());
    assert!(signer(&[2; 32]).check(&after, now, life).is_ok());
    assert!(r.check(&before, now + life - 1, life).is_ok());
    // A token minted with the old key after the switch dies with the key.
    let minted = signer(&FILE).issue("admin", now + life - 10, life);
    assert_eq!(
        r.check(&minted, now + life, life),
        Err(Rejected::Retired),
        "refused from retire_at on, though not expired"
    );
    assert_eq!(
        r.check(&signer(&[9; 32]).issue("admin", now, life), now, life),
        Err(Rejected::Forged)
    );
}

#[test]
fn switch_keeps_earlier_retirements_and_prunes() {
    let table: &[(&str, u64, u64, usize)] = &[
        // (what, now, retire_at of the second rotation, keys kept)
        (
            "a second rotation a minute later keeps all three",
            10_060,
            13_660,
            3,
        ),
        (
            "a day after the first key's last day it is dropped",
            10_000 + 3600 + RETIRED_KEPT_SECS,
            99_999_999,
            2,
        ),
    ];
    for &(what, now, retire_at, kept) in table {
        let (d, _) = stage(None, &FILE, &[2; 32]);
        let d = switch(&d, 1, 10_000, 13_600);
        let (d, id) = stage(Some(&d), &FILE, &[3; 32]);
        assert_eq!(id, 2, "{what}");
        let d = switch(&d, 2, now, retire_at);
        assert_eq!(d.keys.len(), kept, "{what}: {d:?}");
        let first = d.keys.iter().find(|k| k.id == 0);
        if let Some(k) = first {
            // Retired earlier: not given a later day by the second rotation.
            assert_eq!(k.retire_at, Some(13_600), "{what}");
        }
        assert_eq!(ring(&d).issuing_id(), 2, "{what}");
    }
    // A leaked key retired at once; never more than MAX_KEYS.
    let mut d = stage(None, &FILE, &[2; 32]).0;
    for i in 1..=20u32 {
        d = switch(&d, i, 10_000, 10_000);
        d = stage(Some(&d), &FILE, &[i as u8 + 2; 32]).0;
    }
    assert!(d.keys.len() <= MAX_KEYS, "{}", d.keys.len());
    assert!(d.keys.iter().any(|k| k.issuing));
}

#[test]
fn a_bad_document_is_refused_by_name() {
    let good = stage(None, &FILE, &[2; 32]).0;
    let with = |f: &dyn Fn(&mut KeysDoc)| {
        let mut d = good.clone();
        f(&mut d);
        match KeyRing::of(&d) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        }
    };
    assert_eq!(with(&|_| {}), "accepted");
    type Edit = dyn Fn(&mut KeysDoc);
    let cases: &[(&str, &Edit)] = &[
        ("schema", &|d| d.schema = "other/1".into()),
        ("32 bytes", &|d| d.keys[1].key = "c2hvcnQ".into()),
        ("appears twice", &|d| d.keys[1].id = 0),
        ("no key signs", &|d| d.keys[0].issuing = false),
        ("more than one key signs", &|d| d.keys[1].issuing = true),
        ("more than one key signs, or a retiring one", &|d| {
            d.keys[0].retire_at = Some(1)
        }),
    ];
    for (want, f) in cases {
        let got = with(*f);
        assert!(got.contains(want), "{want}: {got}");
    }
}

#[test]
fn a_forger_may_make_the_node_read_etcd_once_a_second() {
    let k = Keys::new(signer(&FILE));
    assert!(k.may_refresh());
    assert!(!k.may_refresh());
    assert!(!k.may_refresh());
}
