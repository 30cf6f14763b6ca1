//! An EBS snapshot from a disk image through the EBS direct APIs.
//!
//! StartSnapshot (whole GiB, tags) → PutSnapshotBlock for every non-zero 512 KiB
//! block, each with its base64 SHA-256, at most `concurrency` at a time (reading and
//! hashing on the blocking pool, never on the async threads) → CompleteSnapshot with
//! ChangedBlocksCount = blocks sent and the LINEAR aggregate checksum → wait until
//! EC2 says `completed`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};

use crate::image::{self, BLOCK};
use crate::retry::{Look, Policy, wait_until, with_retry};
use crate::{Error, Progress, fail_point};

/// What an upload did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Uploaded {
    /// The snapshot.
    pub snapshot_id: String,
    /// Volume size in GiB.
    pub volume_gib: u64,
    /// Blocks sent.
    pub blocks_sent: u64,
    /// Bytes sent (blocks × 512 KiB).
    pub bytes_sent: u64,
}

/// Upload knobs.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Snapshot description.
    pub description: String,
    /// Snapshot tags.
    pub tags: Vec<(String, String)>,
    /// Retry policy per call.
    pub policy: Policy,
    /// How long to wait for `completed`.
    pub wait: Duration,
}

/// Uploads `path` as a new snapshot. On a failure after StartSnapshot the snapshot
/// id is returned with the error, so the caller can delete it.
pub async fn upload(
    ebs: &aws_sdk_ebs::Client,
    ec2: &aws_sdk_ec2::Client,
    path: &Path,
    o: &UploadOptions,
    progress: &dyn Progress,
) -> Result<Uploaded, (Option<String>, Error)> {
    let ierr = |source| Error::Image {
        path: path.to_owned(),
        source,
    };
    let (file, scan) = image::scan(path).map_err(|e| (None, ierr(e)))?;
    let gib = image::volume_gib(scan.size);
    let tags: Vec<Tag> = o
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let started = with_retry("ebs StartSnapshot", o.policy, || {
        ebs.start_snapshot()
            .volume_size(gib as i64)
            .description(&o.description)
            .timeout(60)
            .set_tags(Some(tags.clone()))
            .send()
    })
    .await
    .map_err(|e| (None, e))?;
    let id = started
        .snapshot_id()
        .ok_or_else(|| {
            (
                None,
                Error::Unexpected("StartSnapshot returned no id".into()),
            )
        })?
        .to_owned();
    match send_blocks(ebs, ec2, &id, Arc::new(file), scan, gib, o, progress).await {
        Ok(u) => Ok(u),
        Err(e) => Err((Some(id), e)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_blocks(
    ebs: &aws_sdk_ebs::Client,
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    file: Arc<std::fs::File>,
    scan: image::Scan,
    gib: u64,
    o: &UploadOptions,
    progress: &dyn Progress,
) -> Result<Uploaded, Error> {
    let task = progress.begin(
        "uploading blocks",
        Some(scan.candidates.len() as u64 * BLOCK),
    );
    let size = scan.size;
    let sem = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent: Vec<(u64, [u8; 32])> = vec![];
    for &index in &scan.candidates {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // A failed block ends the upload: stop starting new ones.
        if let Some(done) = tasks.try_join_next() {
            let r: Result<Option<(u64, [u8; 32])>, Error> = done.expect("block task panicked");
            finished(r, &*task, &mut sent)?;
        }
        let (ebs, id, file, policy) = (ebs.clone(), id.to_owned(), file.clone(), o.policy);
        tasks.spawn(async move {
            let _permit = permit;
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                image::read_block(&f, size, index).map(|b| b.map(|d| (image::digest(&d), d)))
            })
            .await
            .expect("read task panicked")
            .map_err(|source| Error::Image {
                path: format!("block {index}").into(),
                source,
            })?;
            let Some((sum, data)) = read else {
                return Ok(None);
            };
            let checksum = image::b64(&sum);
            let body = data;
            with_retry(
                &format!("ebs PutSnapshotBlock {id} block {index}"),
                policy,
                || {
                    ebs.put_snapshot_block()
                        .snapshot_id(&id)
                        .block_index(index as i32)
                        .block_data(ByteStream::from(body.clone()))
                        .data_length(BLOCK as i32)
                        .checksum(&checksum)
                        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                        .send()
                },
            )
            .await?;
            Ok(Some((index, sum)))
        });
    }
    while let Some(done) = tasks.join_next().await {
        finished(done.expect("block task panicked"), &*task, &mut sent)?;
    }
    drop(task);
    fail_point("after-blocks")?;
    sent.sort_by_key(|(i, _)| *i);
    let digests: Vec<[u8; 32]> = sent.iter().map(|(_, d)| *d).collect();
    let aggregate = image::aggregate(&digests);
    progress.step("completing the snapshot");
    with_retry(&format!("ebs CompleteSnapshot {id}"), o.policy, || {
        ebs.complete_snapshot()
            .snapshot_id(id)
            .changed_blocks_count(sent.len() as i32)
            .checksum(&aggregate)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
            .send()
    })
    .await?;
    wait_completed(ec2, id, o.policy, o.wait).await?;
    Ok(Uploaded {
        snapshot_id: id.to_owned(),
        volume_gib: gib,
        blocks_sent: sent.len() as u64,
        bytes_sent: sent.len() as u64 * BLOCK,
    })
}

/// A block task ended: its block counts as handled (sent, or skipped as zeros).
fn finished(
    r: Result<Option<(u64, [u8; 32])>, Error>,
    task: &dyn qutil::progress::Task,
    sent: &mut Vec<(u64, [u8; 32])>,
) -> Result<(), Error> {
    if let Some(b) = r? {
        sent.push(b);
    }
    task.advance(BLOCK);
    Ok(())
}

/// Waits until EC2 reports the snapshot `completed` (an `error` state fails).
pub async fn wait_completed(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    policy: Policy,
    wait: Duration,
) -> Result<(), Error> {
    use aws_sdk_ec2::types::SnapshotState;
    wait_until(
        format!("snapshot {id} to complete"),
        wait,
        Duration::from_secs(2),
        || async {
            let out = with_retry(&format!("ec2 DescribeSnapshots {id}"), policy, || {
                ec2.describe_snapshots().snapshot_ids(id).send()
            })
            .await?;
            match out.snapshots().first().and_then(|s| s.state().cloned()) {
                Some(SnapshotState::Completed) => Ok(Look::Done),
                Some(SnapshotState::Error) => Err(Error::Unexpected(format!(
                    "snapshot {id} is in state error"
                ))),
                s => Ok(Look::Pending(
                    s.map_or("(not listed)".into(), |s| s.as_str().to_owned()),
                )),
            }
        },
    )
    .await
}
