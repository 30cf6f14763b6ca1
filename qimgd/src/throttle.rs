//! Failed logins slowed down per source address: after [`FREE_FAILURES`] failures
//! in a row, each further attempt must wait 1, 2, 4 … (at most
//! [`MAX_DELAY`]) seconds after the last failure; an earlier attempt is answered
//! 429 with `Retry-After` and its password is not even checked. A success clears
//! the address; an address quiet for [`FORGET_AFTER`] is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before the slow-down starts.
pub const FREE_FAILURES: u32 = 3;
/// The longest wait asked for.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// How long an address is remembered after its last failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Addresses remembered at most (the oldest is forgotten first).
const MAX_ADDRESSES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// The per-address failure counts.
#[derive(Debug, Default)]
pub struct Throttle {
    map: Mutex<HashMap<IpAddr, Entry>>,
}

fn delay(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES).min(6);
    Duration::from_secs(1 << exp).min(MAX_DELAY)
}

impl Throttle {
    /// `Err(wait)` when `ip` must wait before its next attempt.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = map.get(&ip) else {
            return Ok(());
        };
        let ready = e.last + delay(e.failures);
        if now < ready {
            Err(ready - now)
        } else {
            Ok(())
        }
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
        if map.len() >= MAX_ADDRESSES
            && !map.contains_key(&ip)
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
    }

    /// Records a successful login from `ip`.
    pub fn succeeded(&self, ip: IpAddr) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_down_after_free_failures_per_address() {
        let t = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert!(t.admit(a, t0).is_ok());
            t.failed(a, t0);
        }
        assert!(t.admit(a, t0).is_ok());
        t.failed(a, t0);
        assert_eq!(t.admit(a, t0), Err(Duration::from_secs(1)));
        assert!(t.admit(b, t0).is_ok(), "another address is not slowed");
        let t1 = t0 + Duration::from_secs(1);
        assert!(t.admit(a, t1).is_ok());
        t.failed(a, t1);
        assert_eq!(t.admit(a, t1), Err(Duration::from_secs(2)));
        for _ in 0..20 {
            t.failed(a, t1);
        }
        assert_eq!(t.admit(a, t1), Err(MAX_DELAY));
        t.succeeded(a);
        assert!(t.admit(a, t1).is_ok());
    }

    #[test]
    fn forgets_quiet_addresses() {
        let t = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            t.failed(a, t0);
        }
        t.failed("10.0.0.9".parse().unwrap(), t0 + FORGET_AFTER);
        assert!(t.admit(a, t0 + FORGET_AFTER).is_ok());
    }
}
