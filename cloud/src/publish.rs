//! The whole publication: idempotent (an AMI of the name is reused), clean (a
//! snapshot whose AMI was never registered is deleted), distributing (region copies
//! with bounded concurrency, errors collected so successes are still reported),
//! and recorded (`ami.json`, schema `qcloud.publish/1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ami::{self, Permission, Registration};
use crate::upload::{self, UploadOptions};
use crate::{AwsOptions, Error, Progress, sdk_config};

/// Schema id of the output record.
pub const OUTPUT_SCHEMA: &str = "qcloud.publish/1";

/// What to publish and where.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// The raw cloud disk image.
    pub image: PathBuf,
    /// AMI name (the same in every region).
    pub name: String,
    /// Product, release version and the platform root's verity root hash (hex):
    /// tags and description trace the AMI to its bundle.
    pub product: String,
    /// Release version.
    pub version: String,
    /// Verity root hash, hex.
    pub root_hash: String,
    /// Regions to copy to (the base region is `aws.region`).
    pub regions: Vec<String>,
    /// Launch permissions.
    pub launch: Vec<Permission>,
    /// SSM parameter name template (`{product}`, `{version}`, `{name}`, `{region}`).
    pub ssm_template: Option<String>,
    /// Blocks in flight.
    pub concurrency: usize,
    /// NitroTPM 2.0.
    pub tpm: bool,
    /// IMDSv2 only.
    pub imds_v2: bool,
    /// How long to wait for a snapshot or an AMI.
    pub wait: Duration,
    /// Poll interval of those waits.
    pub poll: Duration,
    /// Region copies at once.
    pub copy_concurrency: usize,
    /// AWS access.
    pub aws: AwsOptions,
}

/// One region's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionResult {
    /// The AMI there.
    pub image_id: Option<String>,
    /// The snapshot behind its root device there (as EC2 lists it).
    pub snapshot_id: Option<String>,
    /// The SSM parameter written there.
    pub ssm_parameter: Option<String>,
    /// Launch permissions granted (account ids, `public`).
    pub launch_permissions: Vec<String>,
    /// What failed there.
    pub error: Option<String>,
}

/// The output record (`--output ami.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Always [`OUTPUT_SCHEMA`].
    pub schema: String,
    /// AMI name.
    pub name: String,
    /// Product.
    pub product: String,
    /// Release version.
    pub version: String,
    /// Platform root verity root hash.
    pub root_hash: String,
    /// The region the image was uploaded to.
    pub base_region: String,
    /// True when an AMI of the name existed and was reused (nothing uploaded).
    pub reused: bool,
    /// The root snapshot in the base region.
    pub snapshot_id: Option<String>,
    /// Volume size.
    pub volume_gib: Option<u64>,
    /// Blocks sent (0 when reused).
    pub blocks_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Per region (base region included).
    pub regions: BTreeMap<String, RegionResult>,
}

impl Published {
    /// Regions that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.regions
            .iter()
            .filter(|(_, r)| r.error.is_some())
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

fn perm_text(p: &Permission) -> String {
    match p {
        Permission::Account(a) => a.clone(),
        Permission::Public => "public".into(),
    }
}

/// After an AMI is available in a region: launch permissions, then the SSM
/// parameter (never for an AMI that is not available: the caller waited).
async fn finish_region(
    conf: &aws_config::SdkConfig,
    o: &PublishOptions,
    region: &str,
    image_id: &str,
) -> RegionResult {
    let policy = o.aws.policy();
    let ec2 = aws_sdk_ec2::Client::new(conf);
    let mut r = RegionResult {
        image_id: Some(image_id.to_owned()),
        ..RegionResult::default()
    };
    match ami::root_snapshot(&ec2, image_id, policy).await {
        Ok(s) => r.snapshot_id = s,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    }
    if let Err(e) = ami::grant(&ec2, image_id, &o.launch, policy).await {
        r.error = Some(e.to_string());
        return r;
    }
    r.launch_permissions = o.launch.iter().map(perm_text).collect();
    if let Some(t) = &o.ssm_template {
        let name = ami::parameter_name(t, &o.product, &o.version, &o.name, region);
        let ssm = aws_sdk_ssm::Client::new(conf);
        match ami::put_parameter(&ssm, &name, image_id, policy).await {
            Ok(()) => r.ssm_parameter = Some(name),
            Err(e) => r.error = Some(e.to_string()),
        }
    }
    r
}

/// Deletes a snapshot no AMI refers to after `e` ended the publication; returns
/// the error to report (both, if the deletion fails too).
async fn discard(
    ec2: &aws_sdk_ec2::Client,
    snapshot: &str,
    e: Error,
    o: &PublishOptions,
    progress: &dyn Progress,
) -> Error {
    progress.step(&format!("deleting the orphan snapshot {snapshot}"));
    match ami::delete_snapshot(ec2, snapshot, o.aws.policy()).await {
        Ok(()) => e,
        Err(d) => Error::Unexpected(format!("{e}; deleting snapshot {snapshot} failed too: {d}")),
    }
}

/// Publishes. Errors before the base-region AMI is available fail the whole
/// publication (after deleting an orphan snapshot); region errors are recorded in
/// the result.
pub async fn publish(o: &PublishOptions, progress: &dyn Progress) -> Result<Published, Error> {
    let policy = o.aws.policy();
    let base = o.aws.region.clone();
    let conf = sdk_config(&o.aws, &base).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let ebs = aws_sdk_ebs::Client::new(&conf);
    let tags = vec![
        ("Name".to_owned(), o.name.clone()),
        ("qimg:product".to_owned(), o.product.clone()),
        ("qimg:version".to_owned(), o.version.clone()),
        ("qimg:root-hash".to_owned(), o.root_hash.clone()),
    ];
    let description = format!(
        "{} {} (platform root verity {})",
        o.product, o.version, o.root_hash
    );
    let mut out = Published {
        schema: OUTPUT_SCHEMA.into(),
        name: o.name.clone(),
        product: o.product.clone(),
        version: o.version.clone(),
        root_hash: o.root_hash.clone(),
        base_region: base.clone(),
        reused: false,
        snapshot_id: None,
        volume_gib: None,
        blocks_sent: 0,
        bytes_sent: 0,
        regions: BTreeMap::new(),
    };
    progress.step(&format!("looking up AMI {} in {base}", o.name));
    let image_id = match ami::find_by_name(&ec2, &o.name, policy).await? {
        Some(found) => {
            progress.step(&format!("reusing {} ({})", found.image_id, found.state));
            out.reused = true;
            out.snapshot_id = found.snapshot_id;
            found.image_id
        }
        None => {
            let up = upload::upload(
                &ebs,
                &ec2,
                &o.image,
                &UploadOptions {
                    concurrency: o.concurrency,
                    description: description.clone(),
                    tags: tags.clone(),
                    policy,
                    wait: o.wait,
                },
                progress,
            )
            .await;
            let up = match up {
                Ok(u) => u,
                Err((Some(s), e)) => return Err(discard(&ec2, &s, e, o, progress).await),
                Err((None, e)) => return Err(e),
            };
            out.snapshot_id = Some(up.snapshot_id.clone());
            out.volume_gib = Some(up.volume_gib);
            out.blocks_sent = up.blocks_sent;
            out.bytes_sent = up.bytes_sent;
            progress.step(&format!("registering {}", o.name));
            let reg = Registration {
                name: o.name.clone(),
                description: description.clone(),
                snapshot_id: up.snapshot_id.clone(),
                volume_gib: up.volume_gib,
                tpm: o.tpm,
                imds_v2: o.imds_v2,
                tags: tags.clone(),
            };
            match ami::register(&ec2, &reg, policy).await {
                Ok(id) => id,
                Err(e) => return Err(discard(&ec2, &up.snapshot_id, e, o, progress).await),
            }
        }
    };
    progress.step(&format!("waiting for {image_id} to become available"));
    ami::wait_available(&ec2, &image_id, policy, o.wait, o.poll).await?;
    let base_result = finish_region(&conf, o, &base, &image_id).await;
    out.regions.insert(base.clone(), base_result);

    // Region copies, a few at a time; each is waited for before it is shared.
    let sem = Arc::new(tokio::sync::Semaphore::new(o.copy_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for region in o.regions.iter().filter(|r| **r != base) {
        let (sem, o, base, image_id, description, tags) = (
            sem.clone(),
            o.clone(),
            base.clone(),
            image_id.clone(),
            description.clone(),
            tags.clone(),
        );
        let region = region.clone();
        progress.step(&format!("copying to {region}"));
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("never closed");
            let rconf = sdk_config(&o.aws, &region).await;
            let dst = aws_sdk_ec2::Client::new(&rconf);
            let policy = o.aws.policy();
            let copied = async {
                let id =
                    ami::copy(&dst, &base, &image_id, &o.name, &description, &tags, policy).await?;
                ami::wait_available(&dst, &id, policy, o.wait, o.poll).await?;
                Ok::<_, Error>(id)
            }
            .await;
            let r = match copied {
                Ok(id) => finish_region(&rconf, &o, &region, &id).await,
                Err(e) => RegionResult {
                    error: Some(e.to_string()),
                    ..RegionResult::default()
                },
            };
            (region, r)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (region, r) = done.expect("copy task panicked");
        out.regions.insert(region, r);
    }
    Ok(out)
}

/// Product, platform version and verity root hash of a disk image made by
/// `imagebuild disk`: slot A's label and DPS partition UUIDs.
pub fn identity(image: &Path) -> Result<(String, String, String), Error> {
    let bad = |e: String| Error::Usage(format!("{}: {e}", image.display()));
    let mut f = std::fs::File::open(image).map_err(|source| Error::Image {
        path: image.to_owned(),
        source,
    })?;
    let t = bootctl::table::read(&mut f).map_err(|e| bad(e.to_string()))?;
    let p = bootctl::slot::parts(&t, bootctl::layout::Slot::A).map_err(|e| bad(e.to_string()))?;
    let label = &t.partitions[&p.root.0].name;
    let (product, version) = bootctl::layout::split_slot_label(label).ok_or_else(|| {
        bad(format!(
            "slot A is labelled {label:?}, not <product>_<version>"
        ))
    })?;
    let mut hash = t.partitions[&p.root.0].part_guid.as_bytes().to_vec();
    hash.extend_from_slice(t.partitions[&p.verity.0].part_guid.as_bytes());
    Ok((product.to_owned(), version.to_owned(), hex::encode(hash)))
}
