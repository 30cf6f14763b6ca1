//! A small blocking HTTP/1.1 client for the agent's API: HTTPS (rustls) over TCP,
//! or plain HTTP over the agent's Unix socket. It behaves as Qumulo's client does:
//!
//! - the server certificate is not verified unless a CA file is given (appliance
//!   clusters use self-signed certificates), but the handshake signatures are;
//! - run as root against a local host (`localhost`, `127.0.0.1`, `::1`), it
//!   connects from a privileged source port (900–1023), which the agent trusts as
//!   local root without a token;
//! - a token is sent as `Authorization: Bearer …`.
//!
//! GETs reuse the connection (one retry on a fresh one if a kept connection was
//! closed); POSTs always use a fresh connection, so a request is never sent twice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorBody};

/// The agent's REST port (Qumulo's).
pub const DEFAULT_PORT: u16 = 8000;
/// The largest answer read.
pub const MAX_BODY: usize = 16 << 20;
/// The largest header block read.
const MAX_HEAD: usize = 64 << 10;
/// Qumulo's client's privileged source ports.
pub const ROOT_PORTS: std::ops::Range<u16> = 900..1024;
/// The host names Qumulo's client treats as the local node.
pub const LOCAL_HOSTS: [&str; 4] = ["localhost", "ip6-localhost", "127.0.0.1", "::1"];

/// Where the agent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// HTTPS on a host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// Plain HTTP on a Unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => {
                write!(f, "https://[{host}]:{port}")
            }
            Target::Tcp { host, port } => write!(f, "https://{host}:{port}"),
            Target::Unix(p) => write!(f, "http+unix://{}", p.display()),
        }
    }
}

/// How the client connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connect, read and write limit of each request.
    pub timeout: Duration,
    /// Verify the server's certificate against this CA (PEM) instead of not at all.
    pub ca: Option<PathBuf>,
    /// Connect from a privileged port when root and the host is local.
    pub root_port: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            ca: None,
            root_port: true,
        }
    }
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    close: bool,
}

enum Conn {
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

fn tls_config(target: &Target, ca: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |source| Error::Tls {
        target: target.to_string(),
        source,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?;
    let cfg = match ca {
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
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

fn is_root() -> bool {
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

/// A client of one agent.
pub struct Client {
    target: Target,
    options: Options,
    tls: Option<Arc<ClientConfig>>,
    token: Option<String>,
    conn: Option<Conn>,
}

impl Client {
    /// A client of `target`.
    pub fn new(target: Target, options: Options) -> Result<Client, Error> {
        let tls = match &target {
            Target::Tcp { .. } => Some(tls_config(&target, options.ca.as_deref())?),
            Target::Unix(_) => None,
        };
        Ok(Client {
            target,
            options,
            tls,
            token: None,
            conn: None,
        })
    }

    /// Where it connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends `token` with every request from now on.
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// True when connections come from a privileged port (root, local host).
    pub fn uses_root_port(&self) -> bool {
        match &self.target {
            Target::Tcp { host, .. } => {
                self.options.root_port && is_root() && LOCAL_HOSTS.contains(&host.as_str())
            }
            Target::Unix(_) => false,
        }
    }

    fn connect(&self) -> Result<Conn, Error> {
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
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(connect_err)?
                    .collect();
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

    fn host_header(&self) -> String {
        match &self.target {
            Target::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".into(),
        }
    }

    fn exchange(
        &self,
        conn: &mut Conn,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let io = |op| {
            let target = self.target.to_string();
            move |source| Error::Io { op, target, source }
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qq-qimg/1\r\nAccept: application/json\r\n",
            self.host_header()
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or(&[]);
        if method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        conn.write_all(&req).map_err(io("sending to"))?;
        conn.flush().map_err(io("sending to"))?;
        read_response(&mut *conn, method).map_err(|e| match e {
            ReadErr::Io(source) => io("reading from")(source),
            ReadErr::Bad(problem) => Error::Protocol {
                method,
                path: path.into(),
                problem,
            },
        })
    }

    /// Sends a request; any status is returned.
    pub fn request(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let reused = method == "GET" && self.conn.is_some();
        let mut conn = match self.conn.take() {
            Some(c) if method == "GET" => c,
            _ => self.connect()?,
        };
        let r = match self.exchange(&mut conn, method, path, body) {
            Err(e) if reused && e.is_unreachable() => {
                // The kept connection was closed by the server: once more, fresh.
                conn = self.connect()?;
                self.exchange(&mut conn, method, path, body)
            }
            r => r,
        }?;
        if !r.close {
            self.conn = Some(conn);
        }
        Ok(r)
    }

    fn check(method: &'static str, path: &str, r: Response) -> Result<Response, Error> {
        if (200..300).contains(&r.status) {
            return Ok(r);
        }
        let body = serde_json::from_slice::<ErrorBody>(&r.body).unwrap_or_else(|_| ErrorBody {
            error_class: "unknown".into(),
            description: String::from_utf8_lossy(&r.body).into_owned(),
            code: None,
        });
        Err(Error::Http {
            method,
            path: path.into(),
            status: r.status,
            body,
        })
    }

    fn parse<T: DeserializeOwned>(method: &'static str, path: &str, b: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(b).map_err(|e| Error::Protocol {
            method,
            path: path.into(),
            problem: e.to_string(),
        })
    }

    /// GET `path`, a 2xx JSON answer parsed as `T`.
    pub fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, Error> {
        let r = self.request("GET", path, None)?;
        let r = Self::check("GET", path, r)?;
        Self::parse("GET", path, &r.body)
    }

    /// POST `body` (JSON) to `path`; a 2xx answer's body (empty for 202).
    pub fn post<B: Serialize + ?Sized>(&mut self, path: &str, body: &B) -> Result<Vec<u8>, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Protocol {
            method: "POST",
            path: path.into(),
            problem: e.to_string(),
        })?;
        let r = self.request("POST", path, Some(&bytes))?;
        Ok(Self::check("POST", path, r)?.body)
    }

    /// POST `body` to `path`, the answer parsed as `T`.
    pub fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let b = self.post(path, body)?;
        Self::parse("POST", path, &b)
    }

    /// POST with no body.
    pub fn post_empty(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        let r = self.request("POST", path, None)?;
        Ok(Self::check("POST", path, r)?.body)
    }
}

enum ReadErr {
    Io(std::io::Error),
    Bad(String),
}

fn read_line<R: BufRead>(r: &mut R, limit: &mut usize) -> Result<String, ReadErr> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*limit as u64)
        .read_until(b'\n', &mut line)
        .map_err(ReadErr::Io)?;
    if n == 0 {
        return Err(ReadErr::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before an answer",
        )));
    }
    if !line.ends_with(b"\n") {
        return Err(ReadErr::Bad("header block too long".into()));
    }
    *limit -= n;
    let s = String::from_utf8(line).map_err(|_| ReadErr::Bad("headers are not UTF-8".into()))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// Parses one answer from `bytes` as the client reads it from a connection (the
/// fuzz target's entry; `method` matters for `HEAD`).
pub fn parse_response(bytes: &[u8], method: &'static str) -> Result<Response, Error> {
    read_response(bytes, method).map_err(|e| match e {
        ReadErr::Io(source) => Error::Io {
            op: "reading from",
            target: "bytes".into(),
            source,
        },
        ReadErr::Bad(problem) => Error::Protocol {
            method,
            path: String::new(),
            problem,
        },
    })
}

fn read_response<R: Read>(conn: R, method: &str) -> Result<Response, ReadErr> {
    let mut r = BufReader::new(conn);
    let mut limit = MAX_HEAD;
    let status_line = read_line(&mut r, &mut limit)?;
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ReadErr::Bad(format!("not an HTTP answer: {status_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadErr::Bad(format!(
            "not an HTTP/1 answer: {status_line:?}"
        )));
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| ReadErr::Bad(format!("bad status in {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    loop {
        let line = read_line(&mut r, &mut limit)?;
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(ReadErr::Bad(format!("bad header {line:?}")));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    v.parse::<usize>()
                        .map_err(|_| ReadErr::Bad(format!("bad Content-Length {v:?}")))?,
                )
            }
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if chunked {
        loop {
            let line = read_line(&mut r, &mut 1024)?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ReadErr::Bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                while !read_line(&mut r, &mut 1024)?.is_empty() {}
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadErr::Bad(format!("answer larger than {MAX_BODY} bytes")));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).map_err(ReadErr::Io)?;
            read_line(&mut r, &mut 1024)?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(ReadErr::Bad(format!("answer larger than {MAX_BODY} bytes")));
        }
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(ReadErr::Io)?;
    } else {
        r.take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(ReadErr::Io)?;
        if body.len() > MAX_BODY {
            return Err(ReadErr::Bad(format!("answer larger than {MAX_BODY} bytes")));
        }
        close = true;
    }
    Ok(Response {
        status,
        body,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot server on a Unix socket answering `answer` to one request.
    fn serve(
        answer: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(answer).unwrap();
            buf.truncate(n);
            buf
        });
        (d, p, h)
    }

    #[test]
    fn content_length_and_the_request_it_sends() {
        let (_d, p, h) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"a\":true}\n");
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        c.set_token(Some("tok".into()));
        let v: serde_json::Value = c.get("/v1/x").unwrap();
        assert_eq!(v["a"], true);
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(req.starts_with("GET /v1/x HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Authorization: Bearer tok\r\n"), "{req}");
    }

    #[test]
    fn chunked_bodies_and_error_answers() {
        let (_d, p, _h) = serve(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"error_class\":\"\r\n2c\r\nupgrade_blocked_error\",\"description\":\"busy\"}\r\n0\r\n\r\n",
        );
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        let e = c.post_empty("/v2/upgrade/commit").unwrap_err();
        assert_eq!(e.status(), Some(409));
        assert_eq!(e.class(), Some("upgrade_blocked_error"));
        assert!(e.to_string().contains("busy"), "{e}");
    }

    #[test]
    fn garbage_and_closed_connections_are_errors() {
        let (_d, p, _h) = serve(b"SSH-2.0-OpenSSH\r\n\r\n");
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        assert_eq!(
            c.get::<serde_json::Value>("/").unwrap_err().code(),
            "protocol"
        );
        let (_d, p, _h) = serve(b"");
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        assert!(
            c.get::<serde_json::Value>("/")
                .unwrap_err()
                .is_unreachable()
        );
        let d = tempfile::tempdir().unwrap();
        let mut c = Client::new(Target::Unix(d.path().join("none")), Options::default()).unwrap();
        assert_eq!(
            c.get::<serde_json::Value>("/").unwrap_err().code(),
            "connect"
        );
    }
}
