//! Failed logins slowed down per source address: after [`FREE_FAILURES`] failures
//! in a row, each further attempt must wait 1, 2, 4 … (at most
//! [`MAX_DELAY`]) seconds after the last failure; an earlier attempt is answered
//! 429 with `Retry-After` and its password is not even checked. A success clears
//! the address; an address quiet for [`FORGET_AFTER`] is forgotten.
//!
//! Concurrency cannot get past the slow-down: one password check at a time per
//! address and per user name ([`Checks`], reserved before any hashing, its
//! failure recorded before the reservation ends), and at most [`HASH_SLOTS`]
//! checks on the node at once (Argon2id takes 19 MiB each).

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

/// Password checks the node runs at once.
pub const HASH_SLOTS: usize = 2;

/// The password checks in flight, by address and by user name.
#[derive(Debug, Default)]
pub struct Checks(
    Mutex<(
        std::collections::HashSet<IpAddr>,
        std::collections::HashSet<String>,
    )>,
);

/// What is already being checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Busy {
    /// A login from this address.
    Address(IpAddr),
    /// A login as this user.
    User(String),
}

/// One check's reservation, given back when dropped.
#[derive(Debug)]
pub struct Check<'a> {
    checks: &'a Checks,
    ip: IpAddr,
    user: String,
}

impl Checks {
    /// Reserves the check of a login as `user` from `ip`.
    pub fn begin(&self, ip: IpAddr, user: &str) -> Result<Check<'_>, Busy> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.contains(&ip) {
            return Err(Busy::Address(ip));
        }
        if s.1.contains(user) {
            return Err(Busy::User(user.into()));
        }
        s.0.insert(ip);
        s.1.insert(user.into());
        Ok(Check {
            checks: self,
            ip,
            user: user.into(),
        })
    }
}

impl Drop for Check<'_> {
    fn drop(&mut self) {
        let mut s = self.checks.0.lock().unwrap_or_else(|p| p.into_inner());
        s.0.remove(&self.ip);
        s.1.remove(&self.user);
    }
}

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
    fn one_check_at_a_time_per_address_and_per_user() {
        let c = Checks::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = c.begin(a, "admin").unwrap();
        assert_eq!(c.begin(a, "other").unwrap_err(), Busy::Address(a));
        assert_eq!(c.begin(b, "admin").unwrap_err(), Busy::User("admin".into()));
        let _other = c.begin(b, "other").unwrap();
        drop(first);
        let _again = c.begin(a, "admin").unwrap();
    }

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
