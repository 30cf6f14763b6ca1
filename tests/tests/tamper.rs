//! Every kind of damage to a bundle fails verification with its own error.

use std::io::Write;

use qimg::{Error, Manifest, NoProgress, Part, TrustedKeys};
use tests::{Fixture, Members, test_key, verify_bytes};

fn code(bytes: &[u8], keys: &TrustedKeys) -> &'static str {
    match verify_bytes(bytes, keys) {
        Ok(n) => panic!("verified ({n} components) but should have failed"),
        Err(e) => e.code(),
    }
}

/// The fixture bundle's members with a re-signed, edited manifest.
fn resign(f: &Fixture, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut m = Members::parse(&f.bytes);
    let mut v: serde_json::Value = serde_json::from_slice(&m.0[0].data).unwrap();
    edit(&mut v);
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    let sig = f.key.sign(&bytes, "test");
    m.0[0].data = bytes.clone();
    m.0[0].header.size = bytes.len() as u64;
    m.0[1].data = sig.to_file_text().into_bytes();
    m.0[1].header.size = m.0[1].data.len() as u64;
    m.build()
}

#[test]
fn untouched_bundle_verifies() {
    let f = Fixture::new(200_000);
    assert_eq!(verify_bytes(&f.bytes, &f.trusted()).unwrap(), 4);
    // Our member editor is faithful: split + join gives the same bytes.
    assert_eq!(Members::parse(&f.bytes).build(), f.bytes);
}

#[test]
fn byte_flip_in_each_component_is_a_stored_hash_mismatch() {
    let f = Fixture::new(200_000);
    let members = Members::parse(&f.bytes);
    for m in &members.0[2..] {
        let start = m.offset as usize + 512;
        let len = m.data.len();
        for at in [0, 1, 5, len / 3, len / 2, len - 1] {
            let mut b = f.bytes.clone();
            b[start + at] ^= 0x40;
            match verify_bytes(&b, &f.trusted()) {
                Err(Error::HashMismatch {
                    component,
                    part: Part::Stored,
                    ..
                }) => assert_eq!(format!("payload/{component}.zst"), m.header.name),
                other => panic!("{} byte {at}: {other:?}", m.header.name),
            }
        }
    }
}

#[test]
fn byte_flip_in_the_manifest_is_a_bad_signature() {
    let f = Fixture::new(100_000);
    let m = Members::parse(&f.bytes);
    let (start, len) = (m.0[0].offset as usize + 512, m.0[0].data.len());
    for at in (0..len).step_by(97).chain([len - 1]) {
        let mut b = f.bytes.clone();
        b[start + at] ^= 0x01;
        assert!(
            matches!(
                verify_bytes(&b, &f.trusted()),
                Err(Error::BadSignature { .. })
            ),
            "manifest byte {at}"
        );
    }
}

#[test]
fn byte_flip_anywhere_in_the_signature_member_fails_on_the_signature() {
    let f = Fixture::new(100_000);
    let m = Members::parse(&f.bytes);
    let (start, len) = (m.0[1].offset as usize + 512, m.0[1].data.len());
    for at in 0..len {
        let mut b = f.bytes.clone();
        b[start + at] ^= 0x01;
        let c = code(&b, &f.trusted());
        assert!(
            [
                "malformed-signature",
                "bad-signature",
                "no-trusted-signature"
            ]
            .contains(&c),
            "signature byte {at}: {c}"
        );
    }
}

#[test]
fn byte_flip_in_any_header_or_padding_is_caught() {
    let f = Fixture::new(100_000);
    let members = Members::parse(&f.bytes);
    for m in &members.0 {
        for at in (0..512).step_by(7) {
            let mut b = f.bytes.clone();
            b[m.offset as usize + at] ^= 0x01;
            assert_eq!(
                code(&b, &f.trusted()),
                "bad-header",
                "{} header byte {at}",
                m.header.name
            );
        }
        let pad_start = m.offset as usize + 512 + m.data.len();
        if m.data.len() % 512 != 0 {
            let mut b = f.bytes.clone();
            b[pad_start] = 1;
            assert_eq!(
                code(&b, &f.trusted()),
                "non-zero-padding",
                "{}",
                m.header.name
            );
        }
    }
}

#[test]
fn reordered_removed_duplicated_and_extra_members() {
    let f = Fixture::new(100_000);
    let keys = f.trusted();
    let base = Members::parse(&f.bytes);
    let (root, uki, fw) = (
        base.index("payload/rootfs.zst"),
        base.index("payload/uki.zst"),
        base.index("payload/fw-bmc.zst"),
    );

    let mut m = base.clone();
    m.0.swap(root, uki);
    assert_eq!(code(&m.build(), &keys), "unexpected-member", "swapped");

    let mut m = base.clone();
    m.0.remove(uki);
    assert_eq!(
        code(&m.build(), &keys),
        "unexpected-member",
        "removed middle"
    );

    let mut m = base.clone();
    m.0.remove(fw);
    assert_eq!(code(&m.build(), &keys), "missing-member", "removed last");

    let mut m = base.clone();
    m.0.insert(uki + 1, m.0[uki].clone());
    assert_eq!(code(&m.build(), &keys), "duplicate-member", "payload twice");

    let mut m = base.clone();
    m.0.push(m.0[fw].clone());
    assert_eq!(
        code(&m.build(), &keys),
        "duplicate-member",
        "payload twice at end"
    );

    let mut m = base.clone();
    m.0.insert(1, m.0[0].clone());
    assert_eq!(
        code(&m.build(), &keys),
        "duplicate-member",
        "manifest twice"
    );

    let mut m = base.clone();
    m.0.insert(2, m.0[1].clone());
    assert_eq!(
        code(&m.build(), &keys),
        "duplicate-member",
        "signature twice"
    );

    let mut m = base.clone();
    m.0.swap(0, 1);
    assert_eq!(
        code(&m.build(), &keys),
        "unexpected-member",
        "signature first"
    );

    let mut m = base.clone();
    let mut extra = m.0[fw].clone();
    extra.header.name = "payload/extra.zst".into();
    m.0.push(extra);
    assert_eq!(
        code(&m.build(), &keys),
        "member-not-in-manifest",
        "extra member"
    );

    let mut m = base.clone();
    let mut sig = m.0[1].clone();
    sig.header.name = "signatures/late.minisig".into();
    m.0.insert(root + 1, sig);
    assert_eq!(
        code(&m.build(), &keys),
        "unexpected-member",
        "late signature"
    );
}

#[test]
fn unsafe_member_names() {
    let f = Fixture::new(100_000);
    for name in [
        "/etc/passwd",
        "payload/../../x",
        "../manifest.json",
        "payload//x",
        "./x",
    ] {
        let mut m = Members::parse(&f.bytes);
        let last = m.0.len() - 1;
        m.0[last].header.name = name.into();
        assert_eq!(
            code(&m.build(), &f.trusted()),
            "unsafe-member-name",
            "{name}"
        );
    }
}

#[test]
fn member_size_disagreeing_with_the_manifest() {
    let f = Fixture::new(100_000);
    let mut m = Members::parse(&f.bytes);
    let uki = m.index("payload/uki.zst");
    m.0[uki].data.extend_from_slice(&[0; 10]);
    m.0[uki].header.size += 10;
    match verify_bytes(&m.build(), &f.trusted()) {
        Err(Error::SizeMismatch {
            component,
            part: Part::Stored,
            expected,
            actual,
        }) => {
            assert_eq!(component, "uki");
            assert_eq!(actual, expected + 10);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncation_at_any_offset() {
    let f = Fixture::new(100_000);
    let len = f.bytes.len();
    let mut offsets: Vec<usize> = (0..len).step_by(509).collect();
    offsets.extend([1, 511, 512, 513, len - 1, len - 512, len - 1024]);
    for m in Members::parse(&f.bytes).0 {
        let o = m.offset as usize;
        offsets.extend([o, o + 1, o + 512, o + 513, o + 512 + m.data.len()]);
    }
    for at in offsets.into_iter().filter(|&a| a < len) {
        let got = verify_bytes(&f.bytes[..at], &f.trusted());
        assert!(
            matches!(got, Err(Error::Truncated { .. })),
            "cut at {at}: {got:?}"
        );
    }
}

#[test]
fn trailing_data() {
    let f = Fixture::new(100_000);
    for extra in [&b"x"[..], &[0u8; 512][..], &[0u8; 10240][..]] {
        let mut b = f.bytes.clone();
        b.extend_from_slice(extra);
        assert_eq!(
            code(&b, &f.trusted()),
            "trailing-data",
            "{} bytes",
            extra.len()
        );
    }
}

#[test]
fn signature_problems() {
    let f = Fixture::new(100_000);
    // Unsigned.
    let mut m = Members::parse(&f.bytes);
    m.0.remove(1);
    assert_eq!(code(&m.build(), &f.trusted()), "unsigned");
    // Signed by a key we do not trust.
    assert_eq!(
        code(&f.bytes, &TrustedKeys::new([test_key(9).public()])),
        "no-trusted-signature"
    );
    // Signed by the wrong key under the trusted key's id.
    let impostor = qimg::SecretKey::from_seed([9; 32], f.key.id);
    let mut m = Members::parse(&f.bytes);
    m.0[1].data = impostor.sign(&m.0[0].data, "x").to_file_text().into_bytes();
    m.0[1].header.size = m.0[1].data.len() as u64;
    assert_eq!(code(&m.build(), &f.trusted()), "bad-signature");
    // No keys at all.
    assert_eq!(
        code(&f.bytes, &TrustedKeys::default()),
        "no-trusted-signature"
    );
}

#[test]
fn two_keys_during_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tests::write_inputs(dir.path(), 50_000);
    let out = dir.path().join("rot.qimg");
    let (old, new) = (test_key(1), test_key(2));
    tests::build(&spec, &out, &[old, new]).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    for trusted in [
        vec![test_key(1).public()],
        vec![test_key(2).public()],
        vec![test_key(2).public(), test_key(1).public()],
    ] {
        assert_eq!(verify_bytes(&bytes, &TrustedKeys::new(trusted)).unwrap(), 4);
    }
}

#[test]
fn signed_manifests_with_bad_content() {
    let f = Fixture::new(100_000);
    let keys = f.trusted();
    let b = resign(&f, |v| v["format_version"] = 3.into());
    assert!(matches!(
        verify_bytes(&b, &keys),
        Err(Error::UnsupportedFormatVersion { found: 3 })
    ));
    // A version 1 bundle (the same manifest, unpadded) is still read.
    let b = resign(&f, |v| v["format_version"] = 1.into());
    assert_eq!(verify_bytes(&b, &keys).unwrap(), 4);
    let b = resign(&f, |v| v["components"][1]["kind"] = "bios-settings".into());
    assert_eq!(code(&b, &keys), "unknown-component-kind");
    let b = resign(&f, |v| v["components"][3]["name"] = "uki".into());
    assert_eq!(code(&b, &keys), "duplicate-component");
    let b = resign(&f, |v| v["components"][3]["size"] = 1.into());
    assert_eq!(code(&b, &keys), "decompression-bomb");
    let b = resign(&f, |v| v["surprise"] = 1.into());
    assert_eq!(code(&b, &keys), "manifest-json");
    let b = resign(&f, |v| {
        let s = v["components"][3]["size"].as_u64().unwrap();
        v["components"][3]["size"] = (s + 1).into();
    });
    assert!(matches!(
        verify_bytes(&b, &keys),
        Err(Error::SizeMismatch {
            part: Part::Content,
            ..
        })
    ));
    let b = resign(&f, |v| {
        v["components"][3]["sha256"] = "00".repeat(32).into()
    });
    assert!(matches!(
        verify_bytes(&b, &keys),
        Err(Error::HashMismatch {
            part: Part::Content,
            ..
        })
    ));
}

#[test]
fn decompression_bomb_stops_at_the_manifest_size() {
    // A signed bundle whose tiny payload inflates to 256 MiB while the manifest
    // claims 1 MiB: reading must stop after 1 MiB of output, not inflate it all.
    let f = Fixture::new(50_000);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    use sha2::Digest;
    let stored = hex(&sha2::Sha256::digest(&bomb));
    let mut m = Members::parse(&f.bytes);
    let fw = m.index("payload/fw-bmc.zst");
    m.0[fw].data = bomb.clone();
    m.0[fw].header.size = bomb.len() as u64;
    let bytes = m.build();
    let mut v: serde_json::Value = serde_json::from_slice(&m.0[0].data).unwrap();
    v["components"][3]["size"] = (1u64 << 20).into();
    v["components"][3]["stored_size"] = bomb.len().into();
    v["components"][3]["stored_sha256"] = stored.into();
    let manifest = serde_json::to_vec_pretty(&v).unwrap();
    Manifest::parse(&manifest).unwrap();
    let mut m = Members::parse(&bytes);
    m.0[0].data = manifest.clone();
    m.0[0].header.size = manifest.len() as u64;
    m.0[1].data = f.key.sign(&manifest, "bomb").to_file_text().into_bytes();
    m.0[1].header.size = m.0[1].data.len() as u64;
    let start = std::time::Instant::now();
    match verify_bytes(&m.build(), &f.trusted()) {
        Err(Error::DecompressionBomb { component, limit }) => {
            assert_eq!(component, "fw-bmc");
            assert_eq!(limit, 1 << 20);
        }
        other => panic!("{other:?}"),
    }
    // Inflating 256 MiB would take far longer than stopping at 1 MiB.
    assert!(start.elapsed().as_secs() < 5);
}

#[test]
fn unverified_open_reads_manifest_without_keys() {
    let f = Fixture::new(50_000);
    let r = qimg::BundleReader::open(&f.bytes[..]).unwrap();
    assert_eq!(r.manifest().components.len(), 4);
    assert_eq!(r.signatures().len(), 1);
    assert_eq!(r.finish(&NoProgress).unwrap().len(), 4);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
