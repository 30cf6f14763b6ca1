//! Who is on the other end of a connection, and whether it is **local root**,
//! trusted without a token as Qumulo's client expects: a TCP peer on a loopback
//! address whose source port is in 900–1023 (Qumulo's client binds one when it
//! runs as root against localhost) and below the kernel's
//! `ip_unprivileged_port_start` (so only root could bind it; read at each
//! connection, and unknown means nobody); or a Unix-socket
//! peer whose `SO_PEERCRED` uid is 0. Anything else needs a token.
//! `trust_local_root = false` turns both off.

use std::net::{IpAddr, SocketAddr};

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The address (`None` on the Unix socket).
    pub ip: Option<IpAddr>,
    /// Trusted as local root.
    pub local_root: bool,
    /// Another node of this cluster: it presented a certificate issued by the
    /// cluster's CA (mutual TLS), which the handshake verified.
    pub cluster_node: bool,
    /// On the Unix socket: the peer process's user id.
    pub uid: Option<u32>,
}

/// The Qumulo client's privileged source ports (ours uses the same).
pub use qapi::client::ROOT_PORTS;

/// The first port an unprivileged process may bind
/// (`/proc/sys/net/ipv4/ip_unprivileged_port_start`), read when asked (an
/// administrator may lower it while the agent runs); `None` when it cannot be
/// read: then no TCP peer is local root (the check fails closed).
pub fn unprivileged_port_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The peer of a TCP connection from `addr` (`unprivileged_start`: the
/// kernel's setting now, `None` when unknown; asked only for a loopback peer
/// on one of the root ports, so other connections read nothing).
pub fn tcp_peer(
    addr: SocketAddr,
    trust_local_root: bool,
    unprivileged_start: impl FnOnce() -> Option<u16>,
) -> Peer {
    let ip = addr.ip().to_canonical();
    let port = addr.port();
    Peer {
        ip: Some(ip),
        local_root: trust_local_root
            && ip.is_loopback()
            && ROOT_PORTS.contains(&port)
            && unprivileged_start().is_some_and(|start| port < start),
        cluster_node: false,
        uid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_root_is_loopback_and_a_privileged_port() {
        let p = |s: &str| tcp_peer(s.parse().unwrap(), true, || Some(1024)).local_root;
        assert!(p("127.0.0.1:950"));
        assert!(p("[::1]:1023"));
        assert!(p("[::ffff:127.0.0.1]:900"));
        assert!(!p("127.0.0.1:1024"));
        assert!(!p("127.0.0.1:899"), "below Qumulo's range");
        assert!(!p("10.0.0.5:950"), "not loopback");
        assert!(!tcp_peer("127.0.0.1:950".parse().unwrap(), false, || Some(1024)).local_root);
        assert!(
            !tcp_peer("127.0.0.1:950".parse().unwrap(), true, || Some(800)).local_root,
            "ports any user may bind prove nothing"
        );
        assert!(
            !tcp_peer("127.0.0.1:950".parse().unwrap(), true, || None).local_root,
            "the kernel's setting unknown: nobody is trusted"
        );
        // Another address or port: the kernel's setting is not read at all.
        let unread = |s: &str| tcp_peer(s.parse().unwrap(), true, || panic!("read for {s}"));
        assert!(!unread("10.0.0.5:950").local_root && !unread("127.0.0.1:40000").local_root);
        assert!(
            unprivileged_port_start().is_some(),
            "this machine's setting reads"
        );
    }
}
