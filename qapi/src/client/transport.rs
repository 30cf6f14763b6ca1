//! The connection under HTTP: TCP with TLS (rustls; the certificate verified
//! only against a given CA, the handshake signatures always), or the agent's
//! Unix socket; as root against a local host, from a privileged source port.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::{Client, Identity, ROOT_PORTS, Target};
use crate::error::Error;

pub(super) enum Conn {
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Unix(UnixStream),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tls(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tls(s) => s.write(b),
            Conn::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tls(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// Accepts any certificate (as Qumulo's client does) but still checks that the
/// server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) fn tls_config(
    target: &Target,
    ca: Option<&Path>,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |source| Error::Tls {
        target: target.to_string(),
        source,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?;
    let builder = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let bad = |problem: String| Error::Credentials {
                path: ca.to_owned(),
                problem,
            };
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(tls_err)?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let bad = |path: &Path, problem: String| Error::Credentials {
                path: path.to_owned(),
                problem,
            };
            let certs = CertificateDer::pem_file_iter(&id.cert)
                .map_err(|e| bad(&id.cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&id.cert, e.to_string()))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&id.key)
                .map_err(|e| bad(&id.key, e.to_string()))?;
            builder.with_client_auth_cert(certs, key).map_err(tls_err)?
        }
    };
    Ok(Arc::new(cfg))
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Connects from a free port in [`ROOT_PORTS`], starting at a random one. The
/// socket lingers 0 s on close, so ports do not pile up in TIME_WAIT.
fn connect_root_port(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let n = ROOT_PORTS.len();
    let start = (std::process::id() as usize
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize))
        % n;
    let local: IpAddr = match addr {
        SocketAddr::V4(_) => [127, 0, 0, 1].into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let mut last = None;
    for i in 0..n {
        let port = ROOT_PORTS.start + ((start + i) % n) as u16;
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        match s.bind(&SocketAddr::new(local, port).into()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        }
        s.set_linger(Some(Duration::ZERO))?;
        match s.connect_timeout(&addr.into(), timeout) {
            Ok(()) => return Ok(s.into()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no privileged port free")))
}

/// Where `host` is: the name `localhost` is 127.0.0.1 only, never `::1` first
/// (a user who may not bind the agent's IPv4 port could still listen on `[::1]`
/// and take root's password or token); other names as the resolver says.
pub(super) fn addresses(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

impl Client {
    pub(super) fn connect(&self) -> Result<Conn, Error> {
        let t = self.options.timeout;
        let connect_err = |source| Error::Connect {
            target: self.target.to_string(),
            source,
        };
        match &self.target {
            Target::Unix(p) => {
                let s = UnixStream::connect(p).map_err(connect_err)?;
                s.set_read_timeout(Some(t)).map_err(connect_err)?;
                s.set_write_timeout(Some(t)).map_err(connect_err)?;
                Ok(Conn::Unix(s))
            }
            Target::Tcp { host, port } => {
                let addrs = addresses(host, *port).map_err(connect_err)?;
                let mut last = std::io::Error::other("the host name has no address");
                let mut stream = None;
                for a in addrs {
                    let r = if self.uses_root_port() {
                        connect_root_port(a, t)
                    } else {
                        TcpStream::connect_timeout(&a, t)
                    };
                    match r {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = stream.ok_or_else(|| connect_err(last))?;
                s.set_read_timeout(Some(t)).map_err(connect_err)?;
                s.set_write_timeout(Some(t)).map_err(connect_err)?;
                let _ = s.set_nodelay(true);
                let name = match host.parse::<IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => ServerName::try_from(host.clone()).map_err(|e| {
                        connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?,
                };
                let tls = self.tls.clone().expect("TCP targets have a TLS config");
                let c = ClientConnection::new(tls, name).map_err(|source| Error::Tls {
                    target: self.target.to_string(),
                    source,
                })?;
                Ok(Conn::Tls(Box::new(StreamOwned::new(c, s))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_is_the_ipv4_loopback_only() {
        for h in ["localhost", "LOCALHOST"] {
            assert_eq!(
                addresses(h, 8000).unwrap(),
                vec![SocketAddr::from(([127, 0, 0, 1], 8000))]
            );
        }
        assert_eq!(
            addresses("::1", 8000).unwrap(),
            vec!["[::1]:8000".parse::<SocketAddr>().unwrap()],
            "an address asked for is that address"
        );
    }
}
