//! How many connections the agent holds, so that one client cannot take the
//! API (and with it the descriptors etcd's reconnections and the engine's file
//! opens need) from the others: at most [`PER_ADDRESS`] from one address (the
//! Unix socket's peers count as one) and a total that leaves [`FD_MARGIN`] of
//! the process's open-file limit free. A connection over either cap is closed
//! as soon as it is accepted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections one address may hold.
pub const PER_ADDRESS: u32 = 128;
/// Open files kept for everything but connections (etcd, the engine, logs).
pub const FD_MARGIN: u64 = 256;
/// The most connections held, whatever the open-file limit.
pub const MAX_TOTAL: u64 = 4096;

/// The connections held, by address (`None`: the Unix socket).
#[derive(Debug)]
pub struct Admission {
    total_cap: u32,
    held: Mutex<(u32, HashMap<Option<IpAddr>, u32>)>,
}

/// One held connection's place, given back when dropped.
#[derive(Debug)]
pub struct Held {
    admission: Arc<Admission>,
    from: Option<IpAddr>,
}

/// The total cap for an open-file limit of `nofile`: what leaves
/// [`FD_MARGIN`] free, at least [`PER_ADDRESS`], at most [`MAX_TOTAL`].
pub fn total_cap(nofile: u64) -> u32 {
    nofile
        .saturating_sub(FD_MARGIN)
        .clamp(u64::from(PER_ADDRESS), MAX_TOTAL) as u32
}

/// This process's soft limit of open files.
pub fn nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

impl Admission {
    /// Caps for this process (its open-file limit).
    pub fn new(total_cap: u32) -> Arc<Admission> {
        Arc::new(Admission {
            total_cap,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `from`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, from: Option<IpAddr>) -> Option<Held> {
        let from = from.map(|ip| ip.to_canonical());
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let per = h.1.get(&from).copied().unwrap_or(0);
        if h.0 >= self.total_cap || per >= PER_ADDRESS {
            return None;
        }
        h.0 += 1;
        h.1.insert(from, per + 1);
        Some(Held {
            admission: self.clone(),
            from,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut h = self
            .admission
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.0 = h.0.saturating_sub(1);
        if let Some(n) = h.1.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                h.1.remove(&self.from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all() {
        let a = Admission::new(1000);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<Held> = (0..PER_ADDRESS)
            .map(|_| a.admit(Some(one)).unwrap())
            .collect();
        assert!(a.admit(Some(one)).is_none(), "the address is at its cap");
        // The same address written as IPv4-mapped IPv6 is the same address.
        assert!(a.admit(Some("::ffff:10.0.0.1".parse().unwrap())).is_none());
        let other = a.admit(Some("10.0.0.2".parse().unwrap()));
        assert!(other.is_some(), "another address is served");
        drop(held);
        assert!(a.admit(Some(one)).is_some(), "places come back");
        // The total.
        let small = Admission::new(2);
        let _x = small.admit(None).unwrap();
        let _y = small.admit(Some(one)).unwrap();
        assert!(small.admit(Some("10.0.0.3".parse().unwrap())).is_none());
    }

    #[test]
    fn the_total_leaves_a_margin_of_open_files() {
        assert_eq!(total_cap(1024), 768);
        assert_eq!(total_cap(65536), MAX_TOTAL as u32);
        assert_eq!(total_cap(200), PER_ADDRESS);
        assert!(nofile() >= 256);
    }
}
