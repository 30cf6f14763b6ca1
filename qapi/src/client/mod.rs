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
//!
//! Split by layer: `transport` (TCP with TLS, or the Unix socket; the
//! privileged source port), `http1` (one HTTP/1.1 exchange, the response's
//! framing), and here the REST calls (JSON bodies, status checks, the kept
//! connection).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorBody};

mod http1;
mod transport;

use http1::Body;
pub use http1::parse_response;
use transport::{Conn, is_root, tls_config};

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
    /// A client certificate to present (mutual TLS: a cluster's node fetching
    /// from another).
    pub identity: Option<Identity>,
}

/// A client certificate and its key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            ca: None,
            root_port: true,
            identity: None,
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
            Target::Tcp { .. } => Some(tls_config(
                &target,
                options.ca.as_deref(),
                options.identity.as_ref(),
            )?),
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

    /// The token it sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
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

    /// Sends a request; any status is returned.
    pub fn request(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let body = body.unwrap_or(&[]);
        let reused = method == "GET" && self.conn.is_some();
        let mut conn = match self.conn.take() {
            Some(c) if method == "GET" => c,
            _ => self.connect()?,
        };
        let r = match self.exchange(&mut conn, method, path, Body::Json(body)) {
            Err(e) if reused && e.is_unreachable() => {
                // The kept connection was closed by the server: once more, fresh.
                conn = self.connect()?;
                self.exchange(&mut conn, method, path, Body::Json(body))
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

    /// GET `path` from byte `from` (a range when not 0) on a fresh connection,
    /// the body handed to `sink` as it arrives: the status (200, or 206 for a
    /// range) and the body's length. An answer that is not 2xx is the error it
    /// says; a body cut short is an I/O error after `sink` got what came (the
    /// caller resumes from there).
    pub fn get_stream(
        &mut self,
        path: &str,
        from: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(u16, u64), Error> {
        let mut conn = self.connect()?;
        match self.fetch(&mut conn, path, from, sink)? {
            http1::Fetched::Streamed { status, len } => Ok((status, len)),
            http1::Fetched::Answer(r) => {
                let r = Self::check("GET", path, r)?;
                Err(Error::Protocol {
                    method: "GET",
                    path: path.into(),
                    problem: format!("a {} answer without a Content-Length", r.status),
                })
            }
        }
    }

    /// PUT `len` bytes read from `from` to `path` (on a fresh connection),
    /// telling `sent` how many went so far; a 2xx JSON answer parsed as `T`.
    pub fn put_stream<T: DeserializeOwned>(
        &mut self,
        path: &str,
        from: &mut dyn std::io::Read,
        len: u64,
        sent: &mut dyn FnMut(u64),
    ) -> Result<T, Error> {
        let mut conn = self.connect()?;
        let body = Body::Stream { from, len, sent };
        let r = self.exchange(&mut conn, "PUT", path, body)?;
        let r = Self::check("PUT", path, r)?;
        Self::parse("PUT", path, &r.body)
    }
}
