//! Publishing cloud disk images as AMIs: the `cloud` crate and `qcloud`.
//!
//! - [`image`]: which 512 KiB blocks of a (sparse) disk image hold data, checksums.
//! - [`upload`]: an EBS snapshot through the EBS direct APIs: only non-zero blocks,
//!   bounded concurrency, own retries, LINEAR aggregate checksum, wait until completed.
//! - [`ami`]: find by name, RegisterImage (uefi, ENA, gp3 root from the snapshot),
//!   waits, region copies, launch permissions, SSM parameters.
//! - [`publish`]: the whole pipeline, idempotent, cleaning up orphan snapshots, with
//!   the output record (`ami.json`).
//! - [`retry`]: retries with backoff under a deadline.
//!
//! This is the only crate that depends on the AWS SDK; no crate a node runs does.
#![deny(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

pub mod ami;
pub mod image;
pub mod publish;
pub mod retry;
pub mod upload;

/// Errors of the cloud publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An AWS call failed for good (after retries, when it was worth retrying).
    #[error("{what}: {detail} (after {attempts} attempt(s) in {seconds:.1} s)")]
    Aws {
        /// The call and its subject.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        seconds: f64,
        /// The SDK's error with its causes.
        detail: String,
        /// The service's error code, when it sent one.
        code: Option<String>,
    },
    /// Reading the image failed.
    #[error("reading image {path}")]
    Image {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Building the cloud disk image from a bundle failed.
    #[error("building the cloud disk image")]
    Build(#[source] imagebuild::Error),
    /// A wait gave up.
    #[error("gave up waiting after {seconds} s for {what} (last state: {last})")]
    WaitTimeout {
        /// What was waited for.
        what: String,
        /// How long.
        seconds: u64,
        /// The last state seen.
        last: String,
    },
    /// The AWS side is not as expected (more than one AMI of a name, a failed state).
    #[error("{0}")]
    Unexpected(String),
    /// Wrong input.
    #[error("{0}")]
    Usage(String),
    /// An injected failure (tests: `QCLOUD_FAIL_AT`).
    #[error("injected failure at {0}")]
    Injected(String),
}

impl Error {
    /// A stable identifier of the kind of error, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Aws { .. } => "aws",
            Error::Image { .. } => "image",
            Error::Build(_) => "build",
            Error::WaitTimeout { .. } => "wait-timeout",
            Error::Unexpected(_) => "unexpected",
            Error::Usage(_) => "usage",
            Error::Injected(_) => "injected",
        }
    }
}

/// Where and how to reach AWS.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    /// The region the image is uploaded and registered in.
    pub region: String,
    /// An endpoint for every service (an emulator), instead of AWS's.
    pub endpoint_url: Option<String>,
    /// A profile of the shared config files.
    pub profile: Option<String>,
    /// Time limit of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// Time limit of one call including our retries.
    pub operation_timeout: Duration,
    /// Static credentials instead of the standard chain (tests, benchmarks against
    /// an emulator): access key id and secret.
    pub static_credentials: Option<(String, String)>,
}

impl AwsOptions {
    /// The retry policy these options imply.
    pub fn policy(&self) -> retry::Policy {
        retry::Policy {
            window: self.operation_timeout,
            ..retry::Policy::default()
        }
    }
}

/// Loads the SDK configuration for `region`: the standard credential chain and
/// profiles, the SDK's retries off (ours apply), explicit timeouts.
pub async fn sdk_config(o: &AwsOptions, region: &str) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let mut l = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(o.attempt_timeout.min(Duration::from_secs(10)))
                .operation_attempt_timeout(o.attempt_timeout)
                .operation_timeout(o.attempt_timeout)
                .build(),
        );
    if let Some(p) = &o.profile {
        l = l.profile_name(p);
    }
    if let Some(u) = &o.endpoint_url {
        l = l.endpoint_url(u);
    }
    if let Some((id, secret)) = &o.static_credentials {
        l = l.credentials_provider(aws_credential_types::Credentials::new(
            id,
            secret,
            None,
            None,
            "qcloud-static",
        ));
    }
    l.load().await
}

/// Fails with [`Error::Injected`] when `QCLOUD_FAIL_AT` names `point` (tests).
pub fn fail_point(point: &str) -> Result<(), Error> {
    if std::env::var("QCLOUD_FAIL_AT").as_deref() == Ok(point) {
        return Err(Error::Injected(point.to_owned()));
    }
    Ok(())
}

/// How long-running work reports progress (byte tasks and step lines): the one
/// trait every crate uses; the CLI renders it with `qutil::cli::Bars`.
pub use qutil::progress::Progress;
