//! `qcloud publish` against a real AWS emulator (moto server on 127.0.0.1): only
//! non-zero blocks go up and read back equal, a rerun reuses the AMI, copies,
//! launch permissions and SSM parameters land in every region, a failure after the
//! upload leaves no orphan snapshot, an unreachable endpoint fails in time.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use cloud::image::BLOCK;
use common::*;

/// A sparse 2 GiB + 1000 B image: data in a few blocks, one block of written
/// zeros, a short last block.
fn sparse_image(path: &Path) -> Vec<u64> {
    let mut f = std::fs::File::create(path).unwrap();
    let size = 2 * cloud::image::GIB + 1000;
    f.set_len(size).unwrap();
    let mut want = vec![];
    for (block, fill) in [(0u64, 1u8), (5, 2), (1000, 3), (4095, 4)] {
        f.seek(SeekFrom::Start(block * BLOCK + 4096)).unwrap();
        f.write_all(&vec![fill; 70_000]).unwrap();
        want.push(block);
    }
    f.seek(SeekFrom::Start(7 * BLOCK)).unwrap();
    f.write_all(&vec![0u8; BLOCK as usize]).unwrap();
    f.seek(SeekFrom::Start(4096 * BLOCK)).unwrap();
    f.write_all(&[5u8; 1000]).unwrap();
    want.push(4096);
    want
}

fn block_of(path: &Path, index: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; BLOCK as usize];
    f.seek(SeekFrom::Start(index * BLOCK)).unwrap();
    let mut got = 0;
    loop {
        let n = f.read(&mut b[got..]).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    b
}

async fn snapshots(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    let mut v: Vec<String> = out
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_nonzero_blocks_are_sent_and_read_back_equal_and_a_rerun_reuses() {
    let Some(moto) = Moto::start() else { return };
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    let want = sparse_image(&img);
    let out_file = d.path().join("ami.json");
    let run = || {
        moto.qcloud()
            .arg("--image")
            .arg(&img)
            .args([
                "--product",
                "qimg-demo",
                "--version",
                "7.1.0",
                "--json",
                "--tpm",
                "--imds-v2",
            ])
            .args([
                "--name",
                "qimg-demo-7.1.0",
                "--regions",
                "us-east-1",
                "--concurrency",
                "8",
            ])
            .arg("--output")
            .arg(&out_file)
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let p = json(&o);
    assert_eq!(p["schema"], "qcloud.publish/1");
    assert_eq!(p["blocks_sent"], want.len() as u64);
    assert_eq!(p["volume_gib"], 3);
    assert_eq!(p["reused"], false);
    let snap = p["snapshot_id"].as_str().unwrap().to_owned();
    let image_id = p["regions"]["us-east-1"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(written, p, "the output file is the record");
    // The documented type parses it back, and writes it the same.
    let typed: cloud::publish::Published = serde_json::from_value(p.clone()).unwrap();
    assert_eq!(typed.schema, cloud::publish::OUTPUT_SCHEMA);
    assert_eq!(serde_json::to_value(&typed).unwrap(), p);

    // The emulator's own view: exactly these blocks, byte for byte.
    let conf = moto.conf("us-east-1").await;
    let ebs = aws_sdk_ebs::Client::new(&conf);
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(&snap)
        .send()
        .await
        .unwrap();
    let mut got: Vec<(u64, String)> = listed
        .blocks()
        .iter()
        .map(|b| {
            (
                b.block_index().unwrap() as u64,
                b.block_token().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got.iter().map(|b| b.0).collect::<Vec<_>>(), want);
    for (index, token) in &got {
        let b = ebs
            .get_snapshot_block()
            .snapshot_id(&snap)
            .block_index(*index as i32)
            .block_token(token)
            .send()
            .await
            .unwrap();
        let data = b.block_data.collect().await.unwrap().into_bytes();
        assert_eq!(
            data.as_ref(),
            block_of(&img, *index).as_slice(),
            "block {index}"
        );
    }
    // Traceable: tags and description carry the version.
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let imgs = ec2
        .describe_images()
        .image_ids(&image_id)
        .send()
        .await
        .unwrap();
    let i = &imgs.images()[0];
    assert!(
        i.description().unwrap().contains("qimg-demo 7.1.0"),
        "{i:?}"
    );
    let tags: Vec<(String, String)> = i
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert!(
        tags.contains(&("qimg:version".into(), "7.1.0".into())),
        "{tags:?}"
    );

    // A rerun finds the AMI by name: nothing uploaded, the same AMI, no new snapshot.
    let before = snapshots(&ec2).await;
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let p = json(&o);
    assert_eq!(
        (p["reused"].as_bool(), p["blocks_sent"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(p["regions"]["us-east-1"]["image_id"], image_id.as_str());
    assert_eq!(
        p["snapshot_id"],
        snap.as_str(),
        "the reused AMI's snapshot is reported"
    );
    assert_eq!(snapshots(&ec2).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_is_published_to_every_region_with_permissions_and_parameters() {
    let Some(moto) = Moto::start() else { return };
    let d = tempfile::tempdir().unwrap();
    // A cloud bundle from generated content, then `qcloud publish --bundle`.
    let f = tests::Fixture::with_spec(2 << 20, "");
    let spec = std::fs::read_to_string(f.dir.path().join("release.toml"))
        .unwrap()
        .replace("target = \"onprem\"", "target = \"cloud\"");
    std::fs::write(f.dir.path().join("cloud.toml"), spec).unwrap();
    let bundle = d.path().join("cloud.qimg");
    tests::build(
        &f.dir.path().join("cloud.toml"),
        &bundle,
        std::slice::from_ref(&f.key),
    )
    .unwrap();
    let pubkey = d.path().join("release.pub");
    std::fs::write(&pubkey, f.key.public().to_file_text()).unwrap();
    let out_file = d.path().join("ami.json");
    let o = moto
        .qcloud()
        .arg("--bundle")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(&pubkey)
        .args([
            "--name",
            "qumulo-core-2.0.0",
            "--regions",
            "us-east-1,eu-west-1,ap-south-1",
        ])
        .args([
            "--launch-permission",
            "123456789012",
            "--launch-permission",
            "public",
        ])
        .args(["--ssm-prefix", "/qimg", "--output"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(p["version"], "2.0.0");
    let m = qimg::BundleReader::open(std::fs::File::open(&bundle).unwrap()).unwrap();
    let (_, verity) = m.manifest().platform_root().unwrap();
    assert_eq!(p["root_hash"], hex::encode(verity.root_hash.0));
    assert!(p["blocks_sent"].as_u64().unwrap() > 0);
    for region in ["us-east-1", "eu-west-1", "ap-south-1"] {
        let r = &p["regions"][region];
        assert_eq!(r["error"], serde_json::Value::Null, "{region}: {r}");
        assert!(
            r["snapshot_id"].as_str().unwrap().starts_with("snap-"),
            "{region}: {r}"
        );
        let id = r["image_id"].as_str().unwrap();
        let conf = moto.conf(region).await;
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let imgs = ec2.describe_images().image_ids(id).send().await.unwrap();
        assert_eq!(
            imgs.images()[0].name(),
            Some("qumulo-core-2.0.0"),
            "{region}"
        );
        let perms = cloud::ami::permissions(&ec2, id, cloud::retry::Policy::default())
            .await
            .unwrap();
        assert!(
            perms.contains(&cloud::ami::Permission::Public),
            "{region}: {perms:?}"
        );
        assert!(
            perms.contains(&cloud::ami::Permission::Account("123456789012".into())),
            "{region}: {perms:?}"
        );
        let ssm = aws_sdk_ssm::Client::new(&conf);
        let name = "/qimg/qumulo-core/2.0.0/image_id";
        assert_eq!(r["ssm_parameter"], name);
        let v = ssm.get_parameter().name(name).send().await.unwrap();
        assert_eq!(v.parameter().unwrap().value(), Some(id), "{region}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_the_upload_leaves_no_orphan_snapshot_and_a_rerun_converges() {
    let Some(moto) = Moto::start() else { return };
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    sparse_image(&img);
    let conf = moto.conf("us-east-1").await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let before = snapshots(&ec2).await;
    let cmd = |fail: Option<&str>| {
        let mut c = moto.qcloud();
        c.arg("--image")
            .arg(&img)
            .args([
                "--product",
                "p",
                "--version",
                "1.0",
                "--name",
                "orphan-test",
            ])
            .args(["--regions", "us-east-1"]);
        if let Some(f) = fail {
            c.env("QCLOUD_FAIL_AT", f);
        }
        c.output().unwrap()
    };
    for point in ["after-blocks", "register"] {
        let o = cmd(Some(point));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&format!("injected failure at {point}")), "{e}");
        assert!(e.contains("deleting the orphan snapshot"), "{e}");
        assert_eq!(
            snapshots(&ec2).await,
            before,
            "{point}: a snapshot was left behind"
        );
        assert!(
            cloud::ami::find_by_name(&ec2, "orphan-test", cloud::retry::Policy::default())
                .await
                .unwrap()
                .is_none()
        );
    }
    // The rerun converges: our snapshot exists and the AMI is registered. (moto's
    // RegisterImage adds a made-up snapshot of its own, so counts are not compared.)
    let o = cmd(None);
    assert!(o.status.success(), "{}", stderr(&o));
    let found = cloud::ami::find_by_name(&ec2, "orphan-test", cloud::retry::Policy::default())
        .await
        .unwrap();
    assert!(found.is_some());
    let now = snapshots(&ec2).await;
    assert!(now.len() > before.len());
}

#[test]
fn an_unreachable_endpoint_is_a_clear_error_within_the_timeout() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    sparse_image(&img);
    let start = Instant::now();
    let o = qcloud_publish(&format!("http://127.0.0.1:{port}"))
        .args(["--timeout", "3", "--attempt-timeout", "2"])
        .arg("--image")
        .arg(&img)
        .args([
            "--product",
            "p",
            "--version",
            "1.0",
            "--name",
            "n",
            "--regions",
            "us-east-1",
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("ec2 DescribeImages name=n"), "{e}");
    assert!(e.contains("attempt(s)"), "{e}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_that_fails_is_reported_and_the_others_still_publish() {
    let Some(moto) = Moto::start() else { return };
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    sparse_image(&img);
    let out_file = d.path().join("ami.json");
    let o = moto
        .qcloud()
        .arg("--image")
        .arg(&img)
        .args([
            "--product",
            "p",
            "--version",
            "1.0",
            "--name",
            "partial",
            "--timeout",
            "5",
        ])
        .args(["--regions", "us-east-1,eu-west-1,xx-nowhere-1", "--output"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("failed in xx-nowhere-1"),
        "{}",
        stderr(&o)
    );
    let p: cloud::publish::Published =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(p.failed(), vec!["xx-nowhere-1"]);
    assert!(p.regions["eu-west-1"].image_id.is_some());
    assert!(p.regions["us-east-1"].image_id.is_some());
}
