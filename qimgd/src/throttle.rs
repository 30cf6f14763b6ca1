//! Failed logins slowed down per user name and per source address prefix (an
//! IPv4 /24, an IPv6 /64: one client's many addresses): after [`FREE_FAILURES`]
//! failures as a user, or [`PREFIX_FREE_FAILURES`] from a prefix (many people
//! behind one NAT), each further attempt must wait 1, 2, 4 … (at most
//! [`MAX_DELAY`]) seconds after the last failure; an earlier attempt is answered
//! 429 with `Retry-After` and its password is not even checked. Failures are kept
//! per (address, user name): a success clears only its own pair, so a caller
//! with one valid account cannot clear its guesses at another's by logging in
//! between them. A pair quiet for [`FORGET_AFTER`] is forgotten.
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
/// (Address, user name) pairs remembered at most (the oldest is forgotten first).
const MAX_ENTRIES: usize = 4096;

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

/// Failures allowed from one address prefix before the slow-down starts.
pub const PREFIX_FREE_FAILURES: u32 = 3 * FREE_FAILURES;

/// Failures kept per (address, user name).
#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// The failed logins, per (address, user name).
#[derive(Debug, Default)]
pub struct Throttle {
    map: Mutex<HashMap<(IpAddr, String), Entry>>,
}

/// Who must wait: the user name or the address prefix, and how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// How long.
    pub wait: Duration,
    /// Whose failures: `as NAME` or `from PREFIX`.
    pub who: String,
}

/// The part of a user name kept (a caller chooses it).
const NAME_CHARS: usize = 64;

fn key_name(user: &str) -> String {
    user.chars().take(NAME_CHARS).collect()
}

/// `ip`'s prefix: its /24 (IPv4) or /64 (IPv6); an IPv4-mapped IPv6 address
/// is its IPv4 address.
pub fn prefix(ip: IpAddr) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(a) => (IpAddr::V4((u32::from(a) & !0xff).into()), 24),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => prefix(IpAddr::V4(v4)),
            None => (
                IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
                64,
            ),
        },
    }
}

fn delay(failures: u32, free: u32) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    let exp = (failures - free).min(6);
    Duration::from_secs(1 << exp).min(MAX_DELAY)
}

/// Failures summed over some pairs, and the last of them.
#[derive(Default)]
struct Sum {
    failures: u32,
    last: Option<Instant>,
}

impl Sum {
    fn add(&mut self, e: &Entry) {
        self.failures = self.failures.saturating_add(e.failures);
        self.last = self.last.max(Some(e.last));
    }

    /// How long an attempt at `now` must still wait, with `free` failures allowed.
    fn wait(&self, free: u32, now: Instant) -> Duration {
        self.last
            .map(|l| (l + delay(self.failures, free)).saturating_duration_since(now))
            .unwrap_or_default()
    }
}

impl Throttle {
    /// `Err` when a login as `user` from `ip` must wait before it is checked.
    pub fn admit(&self, ip: IpAddr, user: &str, now: Instant) -> Result<(), Wait> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (name, net) = (key_name(user), prefix(ip));
        let (mut as_user, mut from_net) = (Sum::default(), Sum::default());
        for ((a, u), e) in map.iter() {
            if *u == name {
                as_user.add(e);
            }
            if prefix(*a) == net {
                from_net.add(e);
            }
        }
        let by_user = as_user.wait(FREE_FAILURES, now);
        let by_net = from_net.wait(PREFIX_FREE_FAILURES, now);
        if by_user.is_zero() && by_net.is_zero() {
            Ok(())
        } else if by_user >= by_net {
            Err(Wait {
                wait: by_user,
                who: format!("as {name}"),
            })
        } else {
            Err(Wait {
                wait: by_net,
                who: format!("from {}/{}", net.0, net.1),
            })
        }
    }

    /// Records a failed login as `user` from `ip`.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
        let key = (ip, key_name(user));
        if map.len() >= MAX_ENTRIES
            && !map.contains_key(&key)
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let e = map.entry(key).or_insert(Entry {
            failures: 0,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
    }

    /// Records a successful login as `user` from `ip`: that pair's failures
    /// only.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ip, key_name(user)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_check_at_a_time_per_address_and_per_user() {
        let c = Checks::default();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let first = c.begin(a, "admin").unwrap();
        assert_eq!(c.begin(a, "other").unwrap_err(), Busy::Address(a));
        assert_eq!(c.begin(b, "admin").unwrap_err(), Busy::User("admin".into()));
        let _other = c.begin(b, "other").unwrap();
        drop(first);
        let _again = c.begin(a, "admin").unwrap();
    }

    #[test]
    fn slows_down_a_user_name_after_free_failures() {
        let t = Throttle::default();
        let (a, far) = (ip("10.0.0.1"), ip("192.0.2.7"));
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert!(t.admit(a, "admin", t0).is_ok());
            t.failed(a, "admin", t0);
        }
        assert!(t.admit(a, "admin", t0).is_ok());
        t.failed(a, "admin", t0);
        let w = t.admit(a, "admin", t0).unwrap_err();
        assert_eq!(w.wait, Duration::from_secs(1));
        assert_eq!(w.who, "as admin");
        // The same name from anywhere else waits too; another name does not.
        assert_eq!(
            t.admit(far, "admin", t0).unwrap_err().wait,
            Duration::from_secs(1)
        );
        assert!(t.admit(far, "other", t0).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        assert!(t.admit(a, "admin", t1).is_ok());
        t.failed(a, "admin", t1);
        assert_eq!(
            t.admit(a, "admin", t1).unwrap_err().wait,
            Duration::from_secs(2)
        );
        for _ in 0..20 {
            t.failed(a, "admin", t1);
        }
        assert_eq!(t.admit(a, "admin", t1).unwrap_err().wait, MAX_DELAY);
        t.succeeded(a, "admin");
        assert!(t.admit(a, "admin", t1).is_ok());
    }

    #[test]
    fn many_names_from_one_prefix_are_slowed_down_as_one_client() {
        let t = Throttle::default();
        let t0 = Instant::now();
        // Each name fails fewer times than its own slow-down needs, each from
        // another address of one /24.
        for i in 0..PREFIX_FREE_FAILURES {
            let a = ip(&format!("10.1.2.{}", i + 1));
            assert!(t.admit(a, &format!("user{i}"), t0).is_ok());
            t.failed(a, &format!("user{i}"), t0);
        }
        let w = t.admit(ip("10.1.2.200"), "someone", t0).unwrap_err();
        assert_eq!(w.wait, Duration::from_secs(1));
        assert_eq!(w.who, "from 10.1.2.0/24");
        assert!(
            t.admit(ip("10.1.3.1"), "someone", t0).is_ok(),
            "another /24"
        );
        // IPv6: one /64, and an IPv4-mapped address is its IPv4 address.
        assert_eq!(
            prefix(ip("2001:db8:1:2:aaaa::1")),
            (ip("2001:db8:1:2::"), 64)
        );
        assert_eq!(prefix(ip("::ffff:10.1.2.9")), (ip("10.1.2.0"), 24));
        assert!(t.admit(ip("::ffff:10.1.2.9"), "someone", t0).is_err());
    }

    #[test]
    fn a_success_clears_only_its_own_address_and_name() {
        let t = Throttle::default();
        let a = ip("10.0.0.1");
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed(a, "victim", t0);
        }
        assert!(t.admit(a, "victim", t0).is_err());
        // The caller's own valid account, from the same address: its success
        // does not clear the guesses at the other name.
        t.succeeded(a, "mine");
        assert!(t.admit(a, "victim", t0).is_err());
        assert!(t.admit(a, "mine", t0).is_ok());
        // Nor does the victim's own success elsewhere clear the guesses from here.
        t.succeeded(ip("192.0.2.1"), "victim");
        assert!(t.admit(a, "victim", t0).is_err());
        t.succeeded(a, "victim");
        assert!(t.admit(a, "victim", t0).is_ok());
    }

    #[test]
    fn forgets_quiet_pairs_and_keeps_a_bounded_map() {
        let t = Throttle::default();
        let a = ip("10.0.0.1");
        let t0 = Instant::now();
        for _ in 0..10 {
            t.failed(a, "admin", t0);
        }
        t.failed(ip("10.0.9.9"), "x", t0 + FORGET_AFTER);
        assert!(t.admit(a, "admin", t0 + FORGET_AFTER).is_ok());
        let long = "n".repeat(10_000);
        for i in 0..(MAX_ENTRIES + 10) {
            t.failed(ip("10.0.0.2"), &format!("{i}{long}"), t0 + FORGET_AFTER);
        }
        let map = t.map.lock().unwrap();
        assert!(map.len() <= MAX_ENTRIES);
        assert!(map.keys().all(|(_, u)| u.chars().count() <= NAME_CHARS));
    }
}
