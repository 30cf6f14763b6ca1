//! Bundles checked by the tools that own each format: tar, zstd, unsquashfs,
//! veritysetup, minisign.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use tests::{Fixture, run, tool};

/// Lists a tree as `relative/path` strings (directories, files, symlinks).
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Extracts the fixture's bundle with tar into `<fixture>/x`.
fn extract(f: &Fixture) -> std::path::PathBuf {
    let x = f.dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&f.bundle)
        .arg("-C")
        .arg(&x));
    x
}

fn manifest_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn tar_lists_members_in_format_order() {
    if !tool("tar") {
        return;
    }
    let f = Fixture::new(400_000);
    let out = run(Command::new("tar").arg("-tvf").arg(&f.bundle));
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    let sig = format!("signatures/{}.minisig", f.key.id);
    assert_eq!(
        names,
        [
            "manifest.json",
            sig.as_str(),
            "payload/rootfs.zst",
            "payload/uki.zst",
            "payload/container.zst",
            "payload/fw-bmc.zst"
        ]
    );
    assert!(
        text.lines().all(|l| l.starts_with("-rw-r--r-- root/root")),
        "{text}"
    );
    assert!(
        text.contains("2023-11-14 22:13"),
        "mtime is SOURCE_DATE_EPOCH: {text}"
    );
}

#[test]
fn payloads_match_inputs_by_unsquashfs_veritysetup_and_zstd() {
    if !(tool("tar") && tool("zstd") && tool("unsquashfs") && tool("veritysetup")) {
        return;
    }
    let f = Fixture::new(3_000_000);
    let x = extract(&f);
    let manifest = manifest_json(&x);
    for (name, input) in [("rootfs", "rootfs"), ("container", "container")] {
        let c = manifest["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let img = x.join(format!("{name}.img"));
        run(Command::new("zstd")
            .args(["-dq", "-o"])
            .arg(&img)
            .arg(x.join(format!("payload/{name}.zst"))));
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len() as u64, c["size"].as_u64().unwrap());
        assert_eq!(hex(&Sha256::digest(&bytes)), c["sha256"].as_str().unwrap());

        // unsquashfs lists and extracts exactly the input tree.
        let listed = run(Command::new("unsquashfs").args(["-l", "-d", ""]).arg(&img));
        let listed: BTreeSet<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix('/'))
            .map(str::to_owned)
            .collect();
        let src = f.dir.path().join(input);
        assert_eq!(listed, listing(&src), "{name}: unsquashfs -l");
        let extracted = x.join(format!("{name}-tree"));
        run(Command::new("unsquashfs")
            .arg("-d")
            .arg(&extracted)
            .arg(&img));
        for rel in listing(&src) {
            let (a, b) = (src.join(&rel), extracted.join(&rel));
            let (ma, mb) = (
                std::fs::symlink_metadata(&a).unwrap(),
                std::fs::symlink_metadata(&b).unwrap(),
            );
            assert_eq!(ma.file_type(), mb.file_type(), "{rel}");
            if ma.is_file() {
                assert_eq!(
                    std::fs::read(&a).unwrap(),
                    std::fs::read(&b).unwrap(),
                    "{rel}"
                );
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(ma.permissions().mode(), mb.permissions().mode(), "{rel}");
            }
            if ma.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&a).unwrap(),
                    std::fs::read_link(&b).unwrap()
                );
            }
        }

        // veritysetup accepts data + hash tree + root hash ...
        let v = &c["verity"];
        let offset = v["hash_offset"].as_u64().unwrap();
        let root = v["root_hash"].as_str().unwrap();
        run(Command::new("veritysetup")
            .arg("verify")
            .arg(&img)
            .arg(&img)
            .arg(root)
            .arg(format!("--hash-offset={offset}")));
        // ... and `veritysetup format` with the same salt and UUID writes the same bytes.
        let data = x.join(format!("{name}.data"));
        let hash = x.join(format!("{name}.hash"));
        std::fs::write(&data, &bytes[..offset as usize]).unwrap();
        let out = run(Command::new("veritysetup")
            .arg("format")
            .arg(&data)
            .arg(&hash)
            .arg(format!("--salt={}", v["salt"].as_str().unwrap()))
            .arg(format!("--uuid={}", v["uuid"].as_str().unwrap())));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(root), "root hash differs:\n{text}");
        assert_eq!(
            std::fs::read(&hash).unwrap(),
            &bytes[offset as usize..],
            "{name}: hash area"
        );
    }
}

#[test]
fn minisign_verifies_the_manifest_signature_and_our_tool_reads_minisign_keys() {
    if !(tool("tar") && tool("minisign")) {
        return;
    }
    let f = Fixture::new(100_000);
    let x = extract(&f);
    std::fs::write(x.join("key.pub"), f.key.public().to_file_text()).unwrap();
    let sig = x.join(format!("signatures/{}.minisig", f.key.id));
    let out = run(Command::new("minisign")
        .args(["-V", "-p"])
        .arg(x.join("key.pub"))
        .arg("-m")
        .arg(x.join("manifest.json"))
        .arg("-x")
        .arg(&sig));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Trusted comment: timestamp:1700000000"));

    // A key pair made by minisign itself signs bundles we verify.
    let (sk, pk) = (x.join("mini.key"), x.join("mini.pub"));
    run(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pk)
        .arg("-s")
        .arg(&sk));
    let key = imagebuild::keys::load_secret(&sk).unwrap();
    let public = imagebuild::keys::load_public(&pk).unwrap();
    assert_eq!(key.public(), public);
    let out = f.dir.path().join("mini.qimg");
    tests::build(&f.dir.path().join("release.toml"), &out, &[key]).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(
        tests::verify_bytes(&bytes, &qimg::TrustedKeys::new([public])).unwrap(),
        4
    );

    // And minisign signs with a key file we wrote; we verify its signature.
    let ours = x.join("ours");
    let files = imagebuild::keys::generate(&ours).unwrap();
    let msg = x.join("msg");
    std::fs::write(&msg, b"hello").unwrap();
    run(Command::new("minisign")
        .args(["-S", "-l", "-s"])
        .arg(&files.secret)
        .arg("-m")
        .arg(&msg)
        .args(["-t", "by minisign"]));
    let sig_text = std::fs::read_to_string(x.join("msg.minisig")).unwrap();
    // minisign's untrusted comment differs from ours, so decode the lines directly.
    let lines: Vec<&str> = sig_text.lines().collect();
    let canonical = format!(
        "untrusted comment: qimg manifest signature by key {}\n{}\n{}\n{}\n",
        files.id, lines[1], lines[2], lines[3]
    );
    let sig = qimg::Signature::from_file_text(&canonical).unwrap();
    let pk = imagebuild::keys::load_public(&files.public).unwrap();
    pk.verify(b"hello", &sig).unwrap();
    assert!(pk.verify(b"hellO", &sig).is_err());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn images_stored_without_second_compression_are_usable_as_is() {
    if !(tool("tar") && tool("unsquashfs") && tool("veritysetup")) {
        return;
    }
    let f = Fixture::with_spec(1_000_000, "[compression]\nimages = \"none\"\n");
    assert_eq!(tests::verify_bytes(&f.bytes, &f.trusted()).unwrap(), 4);
    let x = extract(&f);
    let manifest = manifest_json(&x);
    let c = &manifest["components"][0];
    assert_eq!(c["compression"], "none");
    assert_eq!(c["stored_sha256"], c["sha256"]);
    // Format 2: the root was written in place behind a manifest padded to the
    // length reserved for it, which tar and a JSON parser read as usual.
    assert_eq!(manifest["format_version"], 2);
    let raw = std::fs::read(x.join("manifest.json")).unwrap();
    assert!(raw.ends_with(b" \n"), "the manifest is padded");
    assert_eq!(
        manifest["components"][1]["compression"], "zstd",
        "the UKI is still compressed"
    );
    // The member is the slot content itself: squashfs, then the hash area.
    let img = x.join("payload/rootfs");
    let listed = run(Command::new("unsquashfs").args(["-l", "-d", ""]).arg(&img));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("/etc/os-release"));
    let v = &c["verity"];
    run(Command::new("veritysetup")
        .arg("verify")
        .arg(&img)
        .arg(&img)
        .arg(v["root_hash"].as_str().unwrap())
        .arg(format!(
            "--hash-offset={}",
            v["hash_offset"].as_u64().unwrap()
        )));
}
