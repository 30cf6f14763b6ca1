//! Listeners and connections: HTTPS on TCP (rustls, HTTP/1.1) and plain HTTP on
//! an optional Unix socket. Each connection learns who its peer is
//! ([`crate::peer::Peer`]) and passes it to the API as a request extension.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::Shared;
use crate::error::Error;
use crate::peer::{Peer, tcp_peer, unprivileged_port_start};

/// The bound sockets.
pub struct Listeners {
    /// HTTPS.
    pub tcp: Vec<TcpListener>,
    /// Plain HTTP for local processes.
    pub unix: Option<UnixListener>,
}

impl Listeners {
    /// Binds what `config` asks for. A stale socket file is replaced.
    pub async fn bind(config: &crate::config::Config) -> Result<Listeners, Error> {
        let mut tcp = vec![];
        for addr in &config.listen {
            tcp.push(bind_tcp(*addr).map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })?);
        }
        let unix = match &config.socket {
            Some(p) => {
                let bind_err = |source| Error::Bind {
                    addr: p.display().to_string(),
                    source,
                };
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(bind_err)?;
                }
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(bind_err(e)),
                }
                let l = UnixListener::bind(p).map_err(bind_err)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660))
                    .map_err(bind_err)?;
                Some(l)
            }
            None => None,
        };
        Ok(Listeners { tcp, unix })
    }

    /// What was bound, as URLs.
    pub fn urls(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| format!("https://{a}"))
            .collect();
        if let Some(u) = &self.unix
            && let Ok(a) = u.local_addr()
            && let Some(p) = a.as_pathname()
        {
            v.push(format!("http+unix://{}", p.display()));
        }
        v
    }
}

/// Binds `addr`; the IPv6 unspecified address takes IPv4 too (one socket, both
/// families, whatever `net.ipv6.bindv6only` says), and on a host without IPv6
/// it falls back to IPv4's.
fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let dual = matches!(addr, std::net::SocketAddr::V6(a) if a.ip().is_unspecified());
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, None) {
        Ok(s) => s,
        Err(e) if dual && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            crate::log("this host has no IPv6: listening on IPv4 only");
            return bind_tcp(std::net::SocketAddr::from(([0, 0, 0, 0], addr.port())));
        }
        Err(e) => return Err(e),
    };
    if dual {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How long a TLS handshake may take.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
pub const HEADER_LIMIT: Duration = Duration::from_secs(30);

async fn serve_conn<I>(io: I, peer: Peer, router: Router, app: Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let router = router.clone();
        let down = app.down.load(Ordering::SeqCst);
        async move {
            if down {
                // A rebooting node answers nothing: the connection drops.
                return Err(std::io::Error::other("the node is rebooting"));
            }
            router
                .oneshot(req)
                .await
                .map_err(|e: Infallible| match e {})
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_LIMIT)
        .serve_connection(TokioIo::new(io), svc);
    // A client that goes away mid-request is not the agent's error.
    let _ = conn.await;
}

/// Serves HTTPS on `l` until the task is dropped.
pub async fn serve_tls(
    l: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    app: Shared,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((stream, addr)) = l.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if app.down.load(Ordering::SeqCst) {
            continue; // dropped: the node is rebooting
        }
        let Some(held) = app.admission.admit(Some(addr.ip())) else {
            continue; // dropped: this address, or everyone, holds enough
        };
        let _ = stream.set_nodelay(true);
        // The kernel's setting as it is now, read only for a would-be local root.
        let peer = tcp_peer(addr, app.config.trust_local_root, unprivileged_port_start);
        let (acceptor, router, app) = (acceptor.clone(), router.clone(), app.clone());
        tokio::spawn(async move {
            let _held = held;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await
            else {
                return; // failed or too slow handshake (e.g. an old protocol version)
            };
            // A client certificate was verified against the cluster's CA by the
            // handshake (one that does not verify fails it): another node.
            let cluster_node = tls.get_ref().1.peer_certificates().is_some();
            let peer = Peer {
                cluster_node,
                ..peer
            };
            serve_conn(tls, peer, router, app).await;
        });
    }
}

/// Serves plain HTTP on the Unix socket `l` until the task is dropped.
pub async fn serve_unix(l: UnixListener, router: Router, app: Shared) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if app.down.load(Ordering::SeqCst) {
            continue;
        }
        let Some(held) = app.admission.admit(None) else {
            continue;
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let peer = Peer {
            ip: None,
            local_root: app.config.trust_local_root && uid == Some(0),
            cluster_node: false,
            uid,
        };
        let (router, app) = (router.clone(), app.clone());
        tokio::spawn(async move {
            let _held = held;
            serve_conn(stream, peer, router, app).await
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_both_families() {
        let l = bind_tcp("[::]:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        for to in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            assert!(std::net::TcpStream::connect(&to).is_ok(), "{to}");
        }
        // Nobody else can listen on the IPv6 loopback's port meanwhile.
        assert!(std::net::TcpListener::bind(format!("[::1]:{port}")).is_err());
        assert!(std::net::TcpListener::bind(format!("127.0.0.1:{port}")).is_err());
    }
}
