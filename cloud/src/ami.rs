//! AMIs: look up by name, register from a snapshot, wait until available, copy to
//! other regions, launch permissions, SSM parameters.

use std::time::Duration;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter,
    ImageAttributeName, ImageState, ImdsSupportValues, LaunchPermission,
    LaunchPermissionModifications, PermissionGroup, ResourceType, Tag, TagSpecification,
    TpmSupportValues, VolumeType,
};

use crate::retry::{Look, Policy, wait_until, with_retry};
use crate::{Error, fail_point};

/// An AMI found by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its id.
    pub image_id: String,
    /// Its state.
    pub state: String,
    /// The snapshot behind its root device, when listed.
    pub snapshot_id: Option<String>,
}

/// The AMI named `name` owned by this account, if any; more than one is an error.
pub async fn find_by_name(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    policy: Policy,
) -> Result<Option<Found>, Error> {
    let out = with_retry(&format!("ec2 DescribeImages name={name}"), policy, || {
        ec2.describe_images()
            .owners("self")
            .filters(Filter::builder().name("name").values(name).build())
            .send()
    })
    .await?;
    let images: Vec<_> = out
        .images()
        .iter()
        .filter(|i| i.name() == Some(name))
        .collect();
    match images.as_slice() {
        [] => Ok(None),
        [i] => Ok(Some(Found {
            image_id: i.image_id().unwrap_or_default().to_owned(),
            state: i
                .state()
                .map_or("unknown".into(), |s| s.as_str().to_owned()),
            snapshot_id: i
                .block_device_mappings()
                .iter()
                .find_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned)),
        })),
        many => Err(Error::Unexpected(format!(
            "{} AMIs are named {name}: {}",
            many.len(),
            many.iter()
                .filter_map(|i| i.image_id())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What to register.
#[derive(Clone, Debug)]
pub struct Registration {
    /// AMI name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The root snapshot.
    pub snapshot_id: String,
    /// Root volume size in GiB.
    pub volume_gib: u64,
    /// NitroTPM 2.0 (needs UEFI boot, which is always set).
    pub tpm: bool,
    /// IMDSv2 only.
    pub imds_v2: bool,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

fn ec2_tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// RegisterImage: x86_64, hvm, `/dev/xvda` from the snapshot (gp3, deleted on
/// termination), UEFI, ENA, SR-IOV simple, optional TPM 2.0 and IMDSv2, tags.
pub async fn register(
    ec2: &aws_sdk_ec2::Client,
    r: &Registration,
    policy: Policy,
) -> Result<String, Error> {
    fail_point("register")?;
    let bdm = BlockDeviceMapping::builder()
        .device_name("/dev/xvda")
        .ebs(
            EbsBlockDevice::builder()
                .snapshot_id(&r.snapshot_id)
                .volume_type(VolumeType::Gp3)
                .volume_size(r.volume_gib as i32)
                .delete_on_termination(true)
                .build(),
        )
        .build();
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Image)
        .set_tags(Some(ec2_tags(&r.tags)))
        .build();
    let out = with_retry(&format!("ec2 RegisterImage {}", r.name), policy, || {
        let mut b = ec2
            .register_image()
            .name(&r.name)
            .description(&r.description)
            .architecture(ArchitectureValues::X8664)
            .virtualization_type("hvm")
            .root_device_name("/dev/xvda")
            .block_device_mappings(bdm.clone())
            .boot_mode(BootModeValues::Uefi)
            .ena_support(true)
            .sriov_net_support("simple")
            .tag_specifications(tags.clone());
        if r.tpm {
            b = b.tpm_support(TpmSupportValues::V20);
        }
        if r.imds_v2 {
            b = b.imds_support(ImdsSupportValues::V20);
        }
        b.send()
    })
    .await?;
    out.image_id()
        .map(str::to_owned)
        .ok_or_else(|| Error::Unexpected("RegisterImage returned no image id".into()))
}

/// Waits until `image_id` is `available`; failed states end the wait at once.
pub async fn wait_available(
    ec2: &aws_sdk_ec2::Client,
    image_id: &str,
    policy: Policy,
    wait: Duration,
    poll: Duration,
) -> Result<(), Error> {
    let what = format!("AMI {image_id} to become available");
    wait_until(what, wait, poll, || async {
        let out = with_retry(&format!("ec2 DescribeImages {image_id}"), policy, || {
            ec2.describe_images().image_ids(image_id).send()
        })
        .await?;
        match out.images().first().and_then(|i| i.state().cloned()) {
            Some(ImageState::Available) => Ok(Look::Done),
            Some(
                s @ (ImageState::Failed
                | ImageState::Invalid
                | ImageState::Error
                | ImageState::Deregistered),
            ) => Err(Error::Unexpected(format!(
                "AMI {image_id} is {}",
                s.as_str()
            ))),
            s => Ok(Look::Pending(
                s.map_or("(not listed)".into(), |s| s.as_str().to_owned()),
            )),
        }
    })
    .await
}

/// The snapshot behind an AMI's root device, as EC2 lists it.
pub async fn root_snapshot(
    ec2: &aws_sdk_ec2::Client,
    image_id: &str,
    policy: Policy,
) -> Result<Option<String>, Error> {
    let out = with_retry(&format!("ec2 DescribeImages {image_id}"), policy, || {
        ec2.describe_images().image_ids(image_id).send()
    })
    .await?;
    Ok(out.images().first().and_then(|i| {
        let root = i.root_device_name();
        i.block_device_mappings()
            .iter()
            .find(|m| root.is_none() || m.device_name() == root)
            .and_then(|m| m.ebs())
            .and_then(|e| e.snapshot_id())
            .map(str::to_owned)
    }))
}

/// Copies `source_image_id` from `source_region` with the destination region's
/// client; returns the copy's id (reusing an AMI of that name already there).
pub async fn copy(
    dst: &aws_sdk_ec2::Client,
    source_region: &str,
    source_image_id: &str,
    name: &str,
    description: &str,
    tags: &[(String, String)],
    policy: Policy,
) -> Result<String, Error> {
    if let Some(f) = find_by_name(dst, name, policy).await? {
        return Ok(f.image_id);
    }
    let out = with_retry(&format!("ec2 CopyImage {source_image_id}"), policy, || {
        dst.copy_image()
            .source_image_id(source_image_id)
            .source_region(source_region)
            .name(name)
            .description(description)
            .send()
    })
    .await?;
    let id = out
        .image_id()
        .ok_or_else(|| Error::Unexpected("CopyImage returned no image id".into()))?
        .to_owned();
    // CopyImage does not carry tags over (twoliter#592).
    with_retry(&format!("ec2 CreateTags {id}"), policy, || {
        dst.create_tags()
            .resources(&id)
            .set_tags(Some(ec2_tags(tags)))
            .send()
    })
    .await?;
    Ok(id)
}

/// Who may launch an AMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permission {
    /// An account id (12 digits).
    Account(String),
    /// Everyone.
    Public,
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Permission, String> {
        if s == "public" || s == "all" {
            Ok(Permission::Public)
        } else if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Permission::Account(s.to_owned()))
        } else {
            Err(format!(
                "launch permission {s:?}: a 12-digit account id or `public`"
            ))
        }
    }
}

/// Grants launch permissions (the caller waited for `available` first).
pub async fn grant(
    ec2: &aws_sdk_ec2::Client,
    image_id: &str,
    who: &[Permission],
    policy: Policy,
) -> Result<(), Error> {
    if who.is_empty() {
        return Ok(());
    }
    let perms: Vec<LaunchPermission> = who
        .iter()
        .map(|p| match p {
            Permission::Account(a) => LaunchPermission::builder().user_id(a).build(),
            Permission::Public => LaunchPermission::builder()
                .group(PermissionGroup::All)
                .build(),
        })
        .collect();
    with_retry(
        &format!("ec2 ModifyImageAttribute {image_id}"),
        policy,
        || {
            ec2.modify_image_attribute()
                .image_id(image_id)
                .launch_permission(
                    LaunchPermissionModifications::builder()
                        .set_add(Some(perms.clone()))
                        .build(),
                )
                .send()
        },
    )
    .await?;
    Ok(())
}

/// The launch permissions of an AMI (account ids, and `public`).
pub async fn permissions(
    ec2: &aws_sdk_ec2::Client,
    image_id: &str,
    policy: Policy,
) -> Result<Vec<Permission>, Error> {
    let out = with_retry(
        &format!("ec2 DescribeImageAttribute {image_id}"),
        policy,
        || {
            ec2.describe_image_attribute()
                .image_id(image_id)
                .attribute(ImageAttributeName::LaunchPermission)
                .send()
        },
    )
    .await?;
    Ok(out
        .launch_permissions()
        .iter()
        .filter_map(|p| match (p.user_id(), p.group()) {
            (Some(u), _) => Some(Permission::Account(u.to_owned())),
            (_, Some(PermissionGroup::All)) => Some(Permission::Public),
            _ => None,
        })
        .collect())
}

/// Puts SSM parameter `name` = `image_id` (`aws:ec2:image`, overwriting), backing
/// off on throttling.
pub async fn put_parameter(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
    image_id: &str,
    policy: Policy,
) -> Result<(), Error> {
    with_retry(&format!("ssm PutParameter {name}"), policy, || {
        ssm.put_parameter()
            .name(name)
            .value(image_id)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .data_type("aws:ec2:image")
            .overwrite(true)
            .send()
    })
    .await
    .map(|_| ())
}

/// Expands a parameter name template: `{product}`, `{version}`, `{name}`, `{region}`.
pub fn parameter_name(
    template: &str,
    product: &str,
    version: &str,
    name: &str,
    region: &str,
) -> String {
    template
        .replace("{product}", product)
        .replace("{version}", version)
        .replace("{name}", name)
        .replace("{region}", region)
}

/// Deletes a snapshot (an orphan after a failed publish).
pub async fn delete_snapshot(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
    policy: Policy,
) -> Result<(), Error> {
    with_retry(&format!("ec2 DeleteSnapshot {snapshot_id}"), policy, || {
        ec2.delete_snapshot().snapshot_id(snapshot_id).send()
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse() {
        assert_eq!("public".parse(), Ok(Permission::Public));
        assert_eq!(
            "123456789012".parse(),
            Ok(Permission::Account("123456789012".into()))
        );
        assert!("12345".parse::<Permission>().is_err());
    }

    #[test]
    fn parameter_names_expand() {
        assert_eq!(
            parameter_name(
                "/qimg/{product}/{version}/image_id",
                "core",
                "7.1.0",
                "n",
                "r"
            ),
            "/qimg/core/7.1.0/image_id"
        );
    }
}
