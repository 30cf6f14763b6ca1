//! One HTTP/1.1 exchange: the request's head and body written, the answer read
//! with its framing (Content-Length or chunked), every line and the head
//! bounded.

use std::io::{BufRead, BufReader, Read, Write};

use super::transport::Conn;
use super::{Client, MAX_BODY, MAX_HEAD, Response, Target};
use crate::error::Error;

impl Client {
    fn host_header(&self) -> String {
        match &self.target {
            Target::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".into(),
        }
    }

    /// What a failed read or write on the connection becomes (`op`: what was
    /// being done); a socket timeout says how long it waited.
    fn io_error(&self, op: &'static str) -> impl Fn(std::io::Error) -> Error + use<> {
        let target = self.target.to_string();
        let limit = self.options.timeout;
        move |source| Error::Io {
            op,
            target: target.clone(),
            source: timed_out(source, limit),
        }
    }

    /// A request's first lines: the request line, `Host`, `User-Agent`,
    /// `Accept` and the token; the caller adds the rest and the blank line.
    fn head(&self, method: &str, path: &str, accept: &str) -> String {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qq-qimg/1\r\nAccept: {accept}\r\n",
            self.host_header()
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head
    }

    pub(super) fn exchange(
        &self,
        conn: &mut Conn,
        method: &'static str,
        path: &str,
        body: Body,
    ) -> Result<Response, Error> {
        let io = |op| self.io_error(op);
        let mut head = self.head(method, path, "application/json");
        let (kind, len) = match &body {
            Body::Json(b) => ("application/json", b.len() as u64),
            Body::Stream { len, .. } => ("application/octet-stream", *len),
        };
        if method != "GET" {
            head.push_str(&format!(
                "Content-Type: {kind}\r\nContent-Length: {len}\r\n"
            ));
        }
        if matches!(body, Body::Stream { .. }) {
            // The server says whether it takes the body before any of it goes:
            // a refusal (no token, a name that exists, too large) costs no upload.
            head.push_str("Expect: 100-continue\r\n");
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        let read_err = |e| match e {
            ReadErr::Io(source) => io("reading from")(source),
            ReadErr::Bad(problem) => Error::Protocol {
                method,
                path: path.into(),
                problem,
            },
        };
        match body {
            Body::Json(b) => {
                req.extend_from_slice(b);
                conn.write_all(&req).map_err(io("sending to"))?;
                conn.flush().map_err(io("sending to"))?;
            }
            Body::Stream { from, len, sent } => {
                conn.write_all(&req).map_err(io("sending to"))?;
                conn.flush().map_err(io("sending to"))?;
                let first = read_response(&mut *conn, method).map_err(read_err)?;
                if first.status != 100 {
                    // Answered without the body: the connection cannot carry another.
                    return Ok(Response {
                        close: true,
                        ..first
                    });
                }
                if let Err(e) = stream(from, len, &mut *conn, sent) {
                    // A server that refused mid-body may have answered first.
                    return read_response(&mut *conn, method).map_err(|_| io("sending to")(e));
                }
            }
        }
        read_response(&mut *conn, method).map_err(read_err)
    }
}

/// What a streamed GET got.
pub(super) enum Fetched {
    /// A 2xx answer with a length: its body went to the sink.
    Streamed {
        /// The status.
        status: u16,
        /// The body's length.
        len: u64,
    },
    /// Any other answer, read whole.
    Answer(Response),
}

impl Client {
    /// GET `path`, from byte `from` (`Range: bytes=from-`) when not 0: a 2xx
    /// answer with a `Content-Length` is handed to `sink` as it arrives.
    pub(super) fn fetch(
        &self,
        conn: &mut Conn,
        path: &str,
        from: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<Fetched, Error> {
        let io = |op| self.io_error(op);
        let bad = |e| match e {
            ReadErr::Io(source) => io("reading from")(source),
            ReadErr::Bad(problem) => Error::Protocol {
                method: "GET",
                path: path.into(),
                problem,
            },
        };
        let mut head = self.head("GET", path, "*/*");
        if from > 0 {
            head.push_str(&format!("Range: bytes={from}-\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes()).map_err(io("sending to"))?;
        conn.flush().map_err(io("sending to"))?;
        let mut r = BufReader::with_capacity(1 << 20, &mut *conn);
        let h = read_head(&mut r).map_err(bad)?;
        let (status, Some(len)) = (h.status, h.length) else {
            return read_body(&mut r, h, "GET")
                .map(Fetched::Answer)
                .map_err(bad);
        };
        if !(200..300).contains(&status) || h.chunked {
            return read_body(&mut r, h, "GET")
                .map(Fetched::Answer)
                .map_err(bad);
        }
        let mut left = len as u64;
        while left > 0 {
            let buf = r.fill_buf().map_err(io("reading from"))?;
            if buf.is_empty() {
                return Err(io("reading from")(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the answer ended {left} bytes short of its {len}"),
                )));
            }
            let n = buf.len().min(left as usize);
            sink(&buf[..n]).map_err(io("passing on what came from"))?;
            r.consume(n);
            left -= n as u64;
        }
        Ok(Fetched::Streamed {
            status,
            len: len as u64,
        })
    }
}

/// A request's body.
pub(super) enum Body<'a> {
    /// JSON (empty for none).
    Json(&'a [u8]),
    /// `len` bytes read from `from`; `sent` hears the bytes sent so far.
    Stream {
        from: &'a mut dyn Read,
        len: u64,
        sent: &'a mut dyn FnMut(u64),
    },
}

/// Sends `len` bytes of `from` in chunks of 1 MiB.
fn stream(
    from: &mut dyn Read,
    len: u64,
    to: &mut dyn Write,
    sent: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended after {done} of {len} bytes"),
            ));
        }
        to.write_all(&buf[..n])?;
        done += n as u64;
        sent(done);
    }
    to.flush()
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

/// A read or write that hit the socket's timeout says so (the kernel's word
/// for it is EAGAIN, "Resource temporarily unavailable").
fn timed_out(e: std::io::Error, limit: std::time::Duration) -> std::io::Error {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    match e.kind() {
        WouldBlock | TimedOut => std::io::Error::new(
            TimedOut,
            format!("no answer within {} s", limit.as_secs_f64()),
        ),
        _ => e,
    }
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

/// What an answer's head says.
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn read_response<R: Read>(conn: R, method: &str) -> Result<Response, ReadErr> {
    let mut r = BufReader::new(conn);
    let head = read_head(&mut r)?;
    read_body(&mut r, head, method)
}

fn read_head<R: BufRead>(r: &mut R) -> Result<Head, ReadErr> {
    let mut limit = MAX_HEAD;
    let status_line = read_line(r, &mut limit)?;
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
        let line = read_line(r, &mut limit)?;
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
    Ok(Head {
        status,
        length,
        chunked,
        close,
    })
}

fn read_body<R: BufRead>(r: &mut R, head: Head, method: &str) -> Result<Response, ReadErr> {
    let Head {
        status,
        length,
        chunked,
        mut close,
    } = head;
    let mut body = Vec::new();
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if chunked {
        loop {
            let line = read_line(r, &mut 1024)?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ReadErr::Bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                while !read_line(r, &mut 1024)?.is_empty() {}
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadErr::Bad(format!("answer larger than {MAX_BODY} bytes")));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).map_err(ReadErr::Io)?;
            read_line(r, &mut 1024)?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(ReadErr::Bad(format!("answer larger than {MAX_BODY} bytes")));
        }
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(ReadErr::Io)?;
    } else {
        r.by_ref()
            .take(MAX_BODY as u64 + 1)
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
    use crate::client::Options;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

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

    #[test]
    fn a_streamed_get_resumes_with_a_range_and_reports_a_short_body() {
        let (_d, p, h) = serve(b"HTTP/1.1 206 Partial Content\r\ncontent-length: 5\r\n\r\nhello");
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        let mut got = Vec::new();
        let r = c.get_stream("/v1/qimg/peer/images/a", 10, &mut |b| {
            got.extend_from_slice(b);
            Ok(())
        });
        assert_eq!(r.unwrap(), (206, 5));
        assert_eq!(got, b"hello");
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(req.contains("Range: bytes=10-\r\n"), "{req}");
        // The server goes away after 3 of 8 bytes: what came was passed on.
        let (_d, p, _h) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nabc");
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        let mut got = Vec::new();
        let e = c
            .get_stream("/x", 0, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap_err();
        assert_eq!(got, b"abc");
        let why = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(
            why.as_deref().unwrap_or("").contains("5 bytes short"),
            "{e}: {why:?}"
        );
        // An error answer is the error it says.
        let (_d, p, _h) = serve(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 58\r\n\r\n{\"error_class\":\"fs_no_such_entry_error\",\"description\":\"no\"}",
        );
        let mut c = Client::new(Target::Unix(p), Options::default()).unwrap();
        let e = c.get_stream("/x", 0, &mut |_| Ok(())).unwrap_err();
        assert_eq!(e.status(), Some(404));
    }

    #[test]
    fn a_socket_timeout_says_how_long_it_waited() {
        let e = timed_out(
            std::io::Error::from(std::io::ErrorKind::WouldBlock),
            std::time::Duration::from_secs(10),
        );
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "no answer within 10 s");
        let other = timed_out(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            std::time::Duration::from_secs(10),
        );
        assert_eq!(other.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
