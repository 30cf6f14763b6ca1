use super::*;
use crate::verity::{VerityInfo, hash_area_size};
use proptest::prelude::*;

fn verity(data_blocks: u64) -> VerityInfo {
    VerityInfo {
        format: 1,
        hash_algorithm: "sha256".into(),
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks,
        hash_offset: data_blocks * 4096,
        salt: "ab".repeat(32),
        uuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
        root_hash: Sha256([9; 32]),
    }
}

fn component(name: &str, kind: ComponentKind) -> Component {
    let size = kind
        .verity()
        .map(|v| v.hash_offset + hash_area_size(v.data_blocks))
        .unwrap_or(1000);
    Component {
        name: name.into(),
        kind,
        size,
        sha256: Sha256([1; 32]),
        compression: Compression::Zstd,
        stored_size: 500,
        stored_sha256: Sha256([2; 32]),
    }
}

pub(crate) fn sample() -> Manifest {
    Manifest {
        release: Release {
            product: "qumulo-core".into(),
            version: "7.1.0.1".parse().unwrap(),
            platform_version: "7.1.0".parse().unwrap(),
            target: Target::Onprem,
            compatible_models: vec!["q-24t".into(), "q-48t".into()],
            min_installed_version: "7.0.0".parse().unwrap(),
            settle: None,
        },
        build: BuildInfo {
            tool: "imagebuild 0.1.0".into(),
            source_date_epoch: 1_700_000_000,
        },
        components: vec![
            component(
                "rootfs",
                ComponentKind::PlatformRoot {
                    filesystem: "squashfs".into(),
                    verity: verity(300),
                },
            ),
            component("uki", ComponentKind::BootUki),
            component(
                "container",
                ComponentKind::Container {
                    filesystem: "squashfs".into(),
                    verity: verity(5),
                },
            ),
            component(
                "fw-bmc",
                ComponentKind::Firmware(crate::FirmwareInfo {
                    version_format: crate::VersionFormat::Triplet,
                    device: crate::DeviceMatch {
                        esrt_guid: Some("6a2b1f7e-36c2-4b0e-9f2a-2b7c3a1d5e10".into()),
                        vendor: Some("ACME".into()),
                        model: None,
                    },
                    lowest_installed: Some("2.0.0".into()),
                    highest_installed: Some("2.14.0".into()),
                    compatible_platforms: vec!["7.0.0".parse().unwrap(), "7.1.0".parse().unwrap()],
                    activation: crate::Activation::Reboot,
                    ..crate::FirmwareInfo::new("bmc", "2.14.1")
                }),
            ),
        ],
    }
}

fn json(m: &Manifest) -> serde_json::Value {
    serde_json::from_slice(&m.to_bytes().unwrap()).unwrap()
}

fn parse_value(v: &serde_json::Value) -> Result<Manifest, Error> {
    Manifest::parse(&serde_json::to_vec(v).unwrap())
}

#[test]
fn round_trips_through_bytes() {
    let m = sample();
    let bytes = m.to_bytes().unwrap();
    assert_eq!(Manifest::parse(&bytes).unwrap(), m);
    assert!(bytes.ends_with(b"}\n"));
    // serialization is a pure function of the manifest
    assert_eq!(m.to_bytes().unwrap(), bytes);
}

#[test]
fn json_shape_is_as_documented() {
    let v = json(&sample());
    assert_eq!(v["format_version"], 2);
    assert_eq!(v["version"], "7.1.0.1");
    assert_eq!(v["target"], "onprem");
    assert_eq!(v["components"][0]["kind"], "platform-root");
    assert_eq!(v["components"][0]["verity"]["hash_algorithm"], "sha256");
    assert_eq!(v["components"][1]["kind"], "boot-uki");
    assert!(v["components"][1].get("verity").is_none());
    assert_eq!(v["components"][3]["firmware"]["component_id"], "bmc");
    assert_eq!(v["components"][3]["firmware"]["version_format"], "triplet");
    assert_eq!(v["components"][3]["firmware"]["activation"], "reboot");
    assert_eq!(
        v["components"][3]["firmware"]["compatible_platforms"][1],
        "7.1.0"
    );
}

#[test]
fn unknown_format_version() {
    let mut v = json(&sample());
    v["format_version"] = 3.into();
    assert!(matches!(
        parse_value(&v),
        Err(Error::UnsupportedFormatVersion { found: 3 })
    ));
    v["format_version"] = 0.into();
    assert!(matches!(
        parse_value(&v),
        Err(Error::UnsupportedFormatVersion { found: 0 })
    ));
}

#[test]
fn version_1_manifests_are_still_read() {
    let mut v = json(&sample());
    v["format_version"] = 1.into();
    assert_eq!(parse_value(&v).unwrap(), sample());
}

#[test]
fn padded_manifest_has_the_reserved_length_and_reads_back() {
    let m = sample();
    let reserved = m.reserved_len().unwrap();
    let plain = m.to_bytes().unwrap();
    assert!(reserved > plain.len());
    let padded = m.to_bytes_padded(reserved).unwrap();
    assert_eq!(padded.len(), reserved);
    assert!(padded.starts_with(&plain[..plain.len() - 1]));
    assert!(padded.ends_with(b"  \n"));
    assert_eq!(Manifest::parse(&padded).unwrap(), m);
    // Too small a reservation is refused, not truncated.
    assert!(matches!(
        m.to_bytes_padded(plain.len() - 1),
        Err(Error::InvalidManifest { .. })
    ));
}

#[test]
fn reserved_len_depends_on_the_shape_not_the_numbers() {
    // The widest value every number can take still fits, and any other sizes or
    // digests give the same reservation.
    let small = sample();
    let mut wide = sample();
    for c in &mut wide.components {
        c.size = u64::MAX / 2;
        c.stored_size = u64::MAX / 2;
        c.sha256 = Sha256([0xee; 32]);
    }
    wide.build.source_date_epoch = u64::MAX / 4;
    let reserved = small.reserved_len().unwrap();
    assert_eq!(wide.reserved_len().unwrap(), reserved);
    // A valid manifest with far bigger numbers still fits (the images' sizes are
    // tied to their verity trees; the others are free).
    let mut big = sample();
    for c in big
        .components
        .iter_mut()
        .filter(|c| c.kind.verity().is_none())
    {
        c.size *= 1 << 30;
        c.stored_size = if c.compression == Compression::None {
            c.size
        } else {
            c.stored_size * (1 << 30)
        };
    }
    big.build.source_date_epoch = (1 << 33) - 1;
    assert!(big.to_bytes().unwrap().len() > small.to_bytes().unwrap().len());
    assert_eq!(big.to_bytes_padded(reserved).unwrap().len(), reserved);
}

#[test]
fn unknown_component_kind_even_with_unknown_fields() {
    let mut v = json(&sample());
    v["components"][1]["kind"] = "bios-settings".into();
    v["components"][1]["settings"] = "x".into();
    match parse_value(&v) {
        Err(Error::UnknownComponentKind { name, kind }) => {
            assert_eq!(name, "uki");
            assert_eq!(kind, "bios-settings");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_component_names() {
    let mut m = sample();
    m.components[3].name = "uki".into();
    let mut v = json(&sample());
    v["components"][3]["name"] = "uki".into();
    assert!(matches!(
        parse_value(&v),
        Err(Error::DuplicateComponent { name }) if name == "uki"
    ));
    assert!(matches!(
        m.to_bytes(),
        Err(Error::DuplicateComponent { .. })
    ));
}

#[test]
fn unknown_fields_are_rejected() {
    for path in [&[][..], &["components", "0"][..], &["build"][..]] {
        let mut v = json(&sample());
        let mut at = &mut v;
        for p in path {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        at["surprise"] = true.into();
        assert!(
            matches!(parse_value(&v), Err(Error::ManifestJson { .. })),
            "{path:?}"
        );
    }
}

#[test]
fn field_rules() {
    type Edit = fn(&mut Manifest);
    let cases: &[(&str, Edit)] = &[
        ("min_installed_version", |m| {
            m.release.min_installed_version = "8".parse().unwrap()
        }),
        ("compatible_models", |m| m.release.compatible_models.clear()),
        ("compatible_models", |m| {
            m.release.compatible_models.push("q-24t".into())
        }),
        ("product", |m| m.release.product = "Qumulo Core".into()),
        ("components", |m| m.components.clear()),
        ("components", |m| {
            m.components.remove(1);
        }),
        ("components[].name", |m| {
            m.components[0].name = "../x".into()
        }),
        ("components[rootfs].size", |m| m.components[0].size += 1),
        ("components[rootfs].verity", |m| {
            if let ComponentKind::PlatformRoot { verity, .. } = &mut m.components[0].kind {
                verity.hash_offset += 4096;
            }
        }),
        ("components[uki].stored_size", |m| {
            m.components[1].compression = Compression::None
        }),
        ("components[fw-bmc].firmware", |m| {
            if let ComponentKind::Firmware(f) = &mut m.components[3].kind {
                f.lowest_installed = Some("two".into());
            }
        }),
        ("components[fw-bmc2].firmware.component_id", |m| {
            let mut fw = m.components[3].clone();
            fw.name = "fw-bmc2".into();
            m.components.push(fw);
        }),
    ];
    for (field, edit) in cases {
        let mut m = sample();
        edit(&mut m);
        match m.validate() {
            Err(Error::InvalidManifest { field: f, .. }) => assert_eq!(&f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn platform_upgrade_decision() {
    let m = sample();
    assert!(!m.needs_platform_upgrade(&"7.1.0".parse().unwrap()));
    assert!(m.needs_platform_upgrade(&"7.0.6".parse().unwrap()));
}

fn arb_version() -> impl Strategy<Value = Version> {
    proptest::collection::vec(0u32..100, 1..=4).prop_map(|p| {
        p.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
            .parse()
            .unwrap()
    })
}

fn arb_component(i: usize) -> impl Strategy<Value = Component> {
    // At most one container (index 0); the rest are firmware.
    let container = (1u64..10_000).prop_map(|b| ComponentKind::Container {
        filesystem: "squashfs".into(),
        verity: verity(b),
    });
    let firmware = (
        "[a-z]{1,8}",
        "[0-9A-Za-z. ]{1,12}",
        any::<u32>(),
        any::<bool>(),
        prop::collection::vec(arb_version(), 0..3),
    )
        .prop_map(move |(id, v, n, quad, platforms)| {
            let mut f =
                crate::FirmwareInfo::new(&format!("{id}{i}"), &(v.trim().to_string() + "1"));
            if quad {
                f.version_format = crate::VersionFormat::Quad;
                f.version = crate::VersionFormat::Quad.from_u32(n);
                f.lowest_installed = Some(crate::VersionFormat::Quad.from_u32(n / 2));
                f.activation = crate::Activation::Reboot;
            }
            f.compatible_platforms = platforms;
            ComponentKind::Firmware(f)
        });
    let kind = if i == 0 {
        prop_oneof![container, firmware].boxed()
    } else {
        firmware.boxed()
    };
    (kind, any::<u64>(), any::<[u8; 32]>(), any::<bool>()).prop_map(
        move |(kind, size, digest, zstd)| {
            let size = kind
                .verity()
                .map(|v| v.hash_offset + hash_area_size(v.data_blocks))
                .unwrap_or(size);
            Component {
                name: format!("c{i}"),
                kind,
                size,
                sha256: Sha256(digest),
                compression: if zstd {
                    Compression::Zstd
                } else {
                    Compression::None
                },
                stored_size: if zstd { size / 2 } else { size },
                stored_sha256: if zstd {
                    Sha256([0; 32])
                } else {
                    Sha256(digest)
                },
            }
        },
    )
}

proptest! {
    #[test]
    fn arbitrary_manifests_round_trip(
        version in arb_version(),
        platform in arb_version(),
        models in proptest::collection::btree_set("[a-z0-9-]{1,12}", 1..4),
        sde in 0u64..(1 << 33),
        cloud in any::<bool>(),
        components in (1usize..5).prop_flat_map(|n| {
            (0..n).map(arb_component).collect::<Vec<_>>()
        }),
    ) {
        let m = Manifest {
            release: Release {
                product: "p".into(),
                min_installed_version: version.clone(),
                version,
                platform_version: platform,
                target: if cloud { Target::Cloud } else { Target::Onprem },
                compatible_models: models.into_iter().collect(),
                settle: None,
            },
            build: BuildInfo { tool: "t".into(), source_date_epoch: sde },
            components,
        };
        let bytes = m.to_bytes().unwrap();
        prop_assert_eq!(&Manifest::parse(&bytes).unwrap(), &m);
        // Format 2: whatever the values, the manifest fits its reservation and
        // reads back the same once padded.
        let reserved = m.reserved_len().unwrap();
        prop_assert!(bytes.len() <= reserved);
        let padded = m.to_bytes_padded(reserved).unwrap();
        prop_assert_eq!(padded.len(), reserved);
        prop_assert_eq!(Manifest::parse(&padded).unwrap(), m);
    }
}
