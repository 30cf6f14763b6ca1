//! Bundles a node must refuse: each gives UPGRADE_ERROR_PREPARE_FAILED with its
//! cause, exit code 1, and leaves the running slot, its entry and the running
//! container as they were.

mod common;

use bootctl::layout::Slot;
use common::*;

fn refused(n: &SimNode, bundle: &std::path::Path, cause: &str) {
    let disk = n.disk();
    let o = n.upgrade(bundle);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["state"], "UPGRADE_IDLE", "{s}");
    assert_eq!(s["error_state"], "UPGRADE_ERROR_PREPARE_FAILED", "{s}");
    let msg = s["error_message"].as_str().unwrap();
    assert!(msg.contains(cause), "{cause:?} not in {msg:?}");
    assert!(stderr(&o).contains(cause), "{}", stderr(&o));
    assert_eq!(n.disk(), disk, "refused before anything was written");
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
}

/// `bundle` with one byte of its first payload flipped (at `at(first data
/// byte, data length)`, the signed head intact), as `dir/tampered.qimg`.
fn tampered(
    bundle: &std::path::Path,
    dir: &std::path::Path,
    at: impl FnOnce(usize, usize) -> usize,
) -> std::path::PathBuf {
    let mut bytes = std::fs::read(bundle).unwrap();
    let members = tests::Members::parse(&bytes);
    let m = members
        .0
        .iter()
        .find(|m| m.header.name.starts_with("payload/"))
        .unwrap();
    let i = at(m.offset as usize + 512, m.data.len());
    drop(members);
    bytes[i] ^= 0x55;
    let bad = dir.join("tampered.qimg");
    std::fs::write(&bad, &bytes).unwrap();
    bad
}

#[test]
fn bad_bundles_are_refused_with_their_cause_and_nothing_written() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let d = tempfile::tempdir().unwrap();
    let k = key(1);
    let cloud = build_bundle(
        d.path(),
        "cloud",
        &Rel {
            target: "cloud",
            ..Rel::new("7.1.0", "7.1")
        },
        &k,
    );
    refused(
        &n,
        &cloud,
        "the bundle is for cloud nodes and this node is on-prem",
    );
    let model = build_bundle(
        d.path(),
        "model",
        &Rel {
            models: "\"q-24t\"",
            ..Rel::new("7.1.0", "7.1")
        },
        &k,
    );
    refused(
        &n,
        &model,
        "hardware model demo-node-1 is not supported by 7.1.0",
    );
    let other_key = build_bundle(d.path(), "key", &Rel::new("7.1.0", "7.1"), &key(2));
    refused(&n, &other_key, "no signature by a trusted key");
    let old = build_bundle(
        d.path(),
        "old",
        &Rel {
            min_installed: "6.0",
            ..Rel::new("6.9.0", "6.9")
        },
        &k,
    );
    refused(
        &n,
        &old,
        "6.9.0 is older than the installed 7.0.0: downgrades are refused",
    );
    let too_new = build_bundle(
        d.path(),
        "too-new",
        &Rel {
            min_installed: "7.0.5",
            ..Rel::new("7.2.0", "7.2")
        },
        &k,
    );
    refused(&n, &too_new, "7.2.0 must be installed over 7.0.5 or newer");
    refused(&n, &b.factory, "7.0.0 is already installed");
    let missing = d.path().join("missing.qimg");
    refused(&n, &missing, "cannot be opened: No such file");
}

#[test]
fn a_tampered_payload_fails_mid_write_and_the_slot_is_reset() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let d = tempfile::tempdir().unwrap();
    // A byte near the end of the platform root: most of it streams into the slot first.
    let bad = tampered(&b.platform, d.path(), |data, len| data + len - 100);

    let slot_a = n.slot_bytes(Slot::A);
    let o = n.qq(&[
        "upgrade_cluster",
        "prepare",
        "--path",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["error_state"], "UPGRADE_ERROR_PREPARE_FAILED", "{s}");
    assert!(
        s["error_message"]
            .as_str()
            .unwrap()
            .contains("sha256 of the stored member"),
        "{s}"
    );
    assert!(
        s["details"]
            .as_str()
            .unwrap()
            .contains("slot b reset to _empty"),
        "{s}"
    );
    assert_eq!(n.slot_bytes(Slot::A), slot_a);
    assert_eq!(n.slot_label(Slot::B), "_empty");
    assert_eq!(n.entries(), vec!["qimg-demo-a-7.0.efi".to_string()]);
    assert_eq!(n.container().as_deref(), Some("7.0.0"));
    assert!(!n.node.config.state.join("containers/7.1.0").exists());
    // The node is fine for the real bundle afterwards.
    let o = n.upgrade(&b.platform);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["state"], "UPGRADE_COMMITTED");
}

#[test]
fn the_node_checks_name_each_problem_and_write_nothing() {
    use qapi::assess::{CheckName, Verdict};
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let agent = n.agent();
    let disk = n.disk();
    let of = |checks: &[qapi::assess::Check], name: CheckName| {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name:?} in {checks:?}"))
            .clone()
    };
    // A good platform bundle: every check passes, the whole bundle read.
    let whole = upgrade::assess::assess(
        &agent,
        &b.platform,
        upgrade::BundleSource::Path,
        true,
        Some(4),
    );
    assert_eq!(whole.to_version.as_deref(), Some("7.1.0"));
    assert_eq!(whole.mode, Some(upgrade::wire::Mode::Platform));
    let good = whole.checks;
    for c in &good {
        assert_eq!((c.result, c.node), (Verdict::Pass, Some(4)), "{c:?}");
    }
    assert!(
        of(&good, CheckName::Bundle)
            .message
            .contains("payloads match their digests")
    );
    assert!(
        of(&good, CheckName::InactiveSlot)
            .message
            .starts_with("slot b reads and holds")
    );
    assert!(
        of(&good, CheckName::ReleaseRules)
            .message
            .contains("7.0.0 -> 7.1.0")
    );
    // The release it runs: the rules fail, saying why; the others still answer.
    let same =
        upgrade::assess::assess(&agent, &b.factory, upgrade::BundleSource::Path, false, None)
            .checks;
    let rules = of(&same, CheckName::ReleaseRules);
    assert_eq!(rules.result, Verdict::Fail);
    assert!(rules.message.contains("7.0.0"), "{rules:?}");
    assert_eq!(of(&same, CheckName::FreeSpace).result, Verdict::Pass);
    // A payload altered: the full read fails it, naming the digest; the
    // signature alone (a prepare's check) does not see it.
    let d = tempfile::tempdir().unwrap();
    let bad = tampered(&b.platform, d.path(), |data, _| data + 10);
    let full = of(
        &upgrade::assess::assess(&agent, &bad, upgrade::BundleSource::Path, true, None).checks,
        CheckName::Bundle,
    );
    assert_eq!(full.result, Verdict::Fail);
    assert!(full.message.contains("sha256"), "{full:?}");
    let quick = of(
        &upgrade::assess::assess(&agent, &bad, upgrade::BundleSource::Path, false, None).checks,
        CheckName::Bundle,
    );
    assert_eq!(quick.result, Verdict::Pass);
    // No such file: one failing check, and nothing else claimed.
    let none = upgrade::assess::assess(
        &agent,
        &d.path().join("none.qimg"),
        upgrade::BundleSource::Path,
        true,
        None,
    )
    .checks;
    assert_eq!(none.len(), 1, "{none:?}");
    assert_eq!(none[0].result, Verdict::Fail);
    assert_eq!(n.disk(), disk, "nothing written");
    assert_eq!(agent.state().unwrap().phase(), upgrade::wire::Phase::Idle);
}

#[test]
fn the_engine_reads_the_descriptor_it_was_given_not_the_name_again() {
    let Some(n) = factory_node() else { return };
    let b = bundles();
    let agent = n.agent();
    let d = tempfile::tempdir().unwrap();
    let name = d.path().join("x.qimg");
    std::fs::copy(&b.platform, &name).unwrap();
    let opened = || std::fs::File::open(&name).unwrap();
    let (for_verify, for_assess) = (opened(), opened());
    // Something else is put under the name after it was opened (a link or a
    // file renamed over it).
    let other = d.path().join("other");
    std::fs::write(&other, b"not a bundle").unwrap();
    std::fs::rename(&other, &name).unwrap();
    assert!(agent.verify(&name).is_err(), "the name now holds junk");
    let v = agent
        .verify_from(&name, upgrade::BundleSource::Opened(for_verify))
        .unwrap();
    assert_eq!(v.plan.to.version.to_string(), "7.1.0");
    let a = upgrade::assess::assess(
        &agent,
        &name,
        upgrade::BundleSource::Opened(for_assess),
        true,
        None,
    );
    assert_eq!(a.to_version.as_deref(), Some("7.1.0"));
    assert!(
        a.checks
            .iter()
            .all(|c| c.result == qapi::assess::Verdict::Pass),
        "{:?}",
        a.checks
    );
}
