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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::operation::describe_images::DescribeImagesError;

    #[tokio::test]
    async fn transient_errors_are_retried_until_the_window_closes() {
        let policy = Policy {
            window: Duration::from_millis(300),
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
        };
        let mut calls = 0;
        let start = Instant::now();
        let r: Result<(), Error> = with_retry("ec2 DescribeImages x", policy, || {
            calls += 1;
            async { Err(SdkError::<DescribeImagesError>::timeout_error("slow")) }
        })
        .await;
        let e = r.unwrap_err().to_string();
        assert!(calls >= 4, "{calls}");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            e.starts_with("ec2 DescribeImages x: ")
                && e.contains(&format!("after {calls} attempt(s)")),
            "{e}"
        );
        // Success after transient failures returns the value.
        let mut n = 0;
        let v = with_retry("x", policy, || {
            n += 1;
            let fail = n < 3;
            async move {
                if fail {
                    Err(SdkError::<DescribeImagesError>::timeout_error("slow"))
                } else {
                    Ok(7)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((v, n), (7, 3));
    }

    #[tokio::test]
    async fn a_wait_that_gives_up_says_what_it_waited_for() {
        let e = wait_until(
            "AMI ami-1 to become available".into(),
            Duration::from_millis(50),
            Duration::from_millis(10),
            || async { Ok(Look::Pending("pending".into())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "gave up waiting after 0 s for AMI ami-1 to become available (last state: pending)"
        );
        let mut n = 0;
        wait_until(
            "x".into(),
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                let done = n == 3;
                async move {
                    Ok(if done {
                        Look::Done
                    } else {
                        Look::Pending("p".into())
                    })
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(n, 3);
    }
}
