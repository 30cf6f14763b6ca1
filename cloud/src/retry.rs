//! Our own retries (the SDK's are off: nested retries multiplied attempts in
//! coldsnap): throttling, server errors, connection failures and timeouts, and
//! EBS's "snapshot does not exist" right after StartSnapshot are retried with
//! exponential backoff until a deadline; anything else fails at once.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::Error;

/// How long to keep trying one call.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Give up after this long (the per-operation budget).
    pub window: Duration,
    /// First backoff.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            window: Duration::from_secs(120),
            base: Duration::from_millis(200),
            cap: Duration::from_secs(8),
        }
    }
}

/// Error codes that mean "slow down".
pub const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ConcurrentLimitExceededException",
    "SlowDown",
];

/// Why a failed call may be tried again, if it may.
pub fn retryable<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<&'static str> {
    match e {
        SdkError::DispatchFailure(_) => Some("connection failed"),
        SdkError::TimeoutError(_) => Some("timed out"),
        SdkError::ResponseError(_) => Some("bad response"),
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            let msg = se.err().message().unwrap_or_default();
            if THROTTLING.contains(&code) {
                Some("throttled")
            } else if code == "ResourceNotFoundException" || msg.contains("does not exist") {
                Some("not there yet")
            } else if se.raw().status().as_u16() >= 500 {
                Some("server error")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Runs `call` until it succeeds, fails for good, or `policy.window` has passed.
/// `what` names the call in the error.
pub async fn with_retry<T, E, F, Fut>(what: &str, policy: Policy, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    let mut delay = policy.base;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let why = retryable(&e);
                let elapsed = start.elapsed();
                if why.is_none() || elapsed + delay > policy.window {
                    return Err(Error::Aws {
                        what: what.to_owned(),
                        attempts,
                        seconds: elapsed.as_secs_f64(),
                        detail: format!("{}", DisplayErrorContext(&e)),
                        code: e.code().map(str::to_owned),
                    });
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.cap);
            }
        }
    }
}

/// One look at something being waited for.
pub enum Look {
    /// It is ready.
    Done,
    /// Not yet; the state seen.
    Pending(String),
}

/// Polls `look` every `poll` until it says done, fails, or `wait` has passed; the
/// timeout error says what was waited for and the last state seen.
pub async fn wait_until<F, Fut>(
    what: String,
    wait: Duration,
    poll: Duration,
    mut look: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Look, Error>>,
{
    let start = Instant::now();
    loop {
        let last = match look().await? {
            Look::Done => return Ok(()),
            Look::Pending(state) => state,
        };
        if start.elapsed() >= wait {
            return Err(Error::WaitTimeout {
                what,
                seconds: wait.as_secs(),
                last,
            });
        }
        tokio::time::sleep(poll.min(wait)).await;
    }
}
