//! The upgrade events the coordinator tells (`qcluster::history`): each one an
//! entry in the journal through its native protocol, with the kind's stable
//! `MESSAGE_ID` and the event's fields (`QIMG_EVENT`, `QIMG_GENERATION`,
//! `QIMG_NODE`, …), so `journalctl MESSAGE_ID=… QIMG_GENERATION=3` finds them;
//! without a journal (a development machine, a test), a line of the log. With
//! `event_webhook`, the event's JSON is also posted there by a thread of its
//! own: [`TRIES`] tries at most, each within [`WEBHOOK_LIMIT`], from a queue
//! of [`QUEUE`] events (a full queue drops the event, with a log line): the
//! coordinator never waits for a webhook.
//!
//! The journal's native protocol: one datagram per entry to its socket, each
//! field `NAME=value\n`, or, for a value holding a newline, `NAME\n`, the
//! value's length as a little-endian u64, the value and `\n`
//! (systemd's `sd_journal_send`).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use qcluster::history::Event;

/// How many tries a webhook gets per event.
pub const TRIES: u32 = 3;
/// How long one try may take (connect, send, answer).
pub const WEBHOOK_LIMIT: Duration = Duration::from_secs(5);
/// How many events may wait for the webhook.
pub const QUEUE: usize = 256;

/// Where events go.
#[derive(Debug)]
pub struct Events {
    journal: PathBuf,
    webhook: Option<SyncSender<Event>>,
}

/// The webhook's place: `https://host[:port]/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (443 unless given).
    pub port: u16,
    /// Path and query (`/` unless given).
    pub path: String,
}

impl WebhookUrl {
    /// Parses `url`; only `https://` (events name the cluster's nodes and releases).
    pub fn parse(url: &str) -> Result<WebhookUrl, crate::Error> {
        Self::parts(url).map_err(|problem| crate::Error::Webhook {
            url: url.into(),
            problem,
        })
    }

    fn parts(url: &str) -> Result<WebhookUrl, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: an unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: {p:?} is not a port"))?,
        };
        Ok(WebhookUrl {
            host: host.into(),
            port,
            path: path.into(),
        })
    }
}

impl Events {
    /// Events to the journal at `journal` (its native socket), and nowhere else.
    pub fn new(journal: PathBuf) -> Events {
        Events {
            journal,
            webhook: None,
        }
    }

    /// Events to the journal at `journal`, and to `webhook` (its URL and the
    /// CA its certificate must chain to) if given: a thread of its own posts
    /// them, until this is dropped.
    pub fn with_webhook(journal: PathBuf, webhook: Option<(&str, Option<PathBuf>)>) -> Events {
        let mut e = Events::new(journal);
        if let Some((url, ca)) = webhook
            && let Ok(url) = WebhookUrl::parse(url)
        {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("qimgd-webhook".into())
                .spawn(move || deliver(&url, ca, &rx));
            match spawned {
                Ok(_) => e.webhook = Some(tx),
                Err(err) => crate::log(&format!("the event webhook's thread: {err}")),
            }
        }
        e
    }

    /// Tells `e`: to the journal (true), else to the log (false). Never blocks
    /// on a full journal (the datagram is sent without waiting) and never fails.
    pub fn tell(&self, e: &Event) -> bool {
        let entry = entry(e);
        let sent = UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            s.send_to(&entry, &self.journal)
        });
        if sent.is_err() {
            crate::log(&format!("event {}: {}", e.kind.name(), e.message));
        }
        if let Some(tx) = &self.webhook {
            match tx.try_send(e.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => crate::log(&format!(
                    "the event webhook is {QUEUE} events behind: event {} of upgrade {} not posted",
                    e.kind.name(),
                    e.generation
                )),
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        sent.is_ok()
    }
}

/// Posts each event to the webhook, [`TRIES`] tries at most (pauses of 1 s,
/// then 2 s), until the queue's sender is gone.
fn deliver(url: &WebhookUrl, ca: Option<PathBuf>, rx: &Receiver<Event>) {
    let options = qapi::Options {
        timeout: WEBHOOK_LIMIT,
        ca,
        root_port: false,
        identity: None,
    };
    let target = qapi::Target::Tcp {
        host: url.host.clone(),
        port: url.port,
    };
    for e in rx {
        let Ok(body) = serde_json::to_vec(&e) else {
            continue;
        };
        let mut last = String::new();
        let mut posted = false;
        for attempt in 0..TRIES {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
            }
            let r = qapi::Client::new(target.clone(), options.clone())
                .and_then(|mut c| c.request("POST", &url.path, Some(&body)));
            match r {
                Ok(r) if (200..300).contains(&r.status) => {
                    posted = true;
                    break;
                }
                Ok(r) => last = format!("it answered HTTP {}", r.status),
                Err(err) => last = qutil::chain(&err),
            }
        }
        if !posted {
            crate::log(&format!(
                "event {} of upgrade {} not posted to the webhook after {TRIES} tries: {last}",
                e.kind.name(),
                e.generation
            ));
        }
    }
}

/// The journal entry of `e`: its fields in the native protocol.
pub fn entry(e: &Event) -> Vec<u8> {
    let mut out = vec![];
    let mut field = |name: &str, value: &str| {
        if value.contains('\n') {
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    };
    field("MESSAGE", &e.message);
    field("MESSAGE_ID", e.kind.message_id());
    // warning, else informational.
    field("PRIORITY", if e.warning { "4" } else { "6" });
    field("SYSLOG_IDENTIFIER", "qimgd");
    field("QIMG_EVENT", e.kind.name());
    field("QIMG_GENERATION", &e.generation.to_string());
    field("QIMG_AT_MS", &e.at_ms.to_string());
    field("QIMG_TO_VERSION", &e.to_version);
    if let Some(v) = &e.from_version {
        field("QIMG_FROM_VERSION", v);
    }
    if let Some(p) = e.phase {
        field("QIMG_PHASE", p.name());
    }
    if let Some(n) = e.node {
        field("QIMG_NODE", &n.to_string());
    }
    if let Some(s) = e.step {
        field("QIMG_STEP", s.name());
    }
    if let Some(r) = e.result {
        field("QIMG_RESULT", r.name());
    }
    out
}

/// Reads the native protocol back (for tests): the fields of one entry.
pub fn parse_entry(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = vec![];
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8(line[..eq].to_vec()).ok()?,
                String::from_utf8(line[eq + 1..].to_vec()).ok()?,
            ));
            b = &b[nl + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).ok()?;
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8 + len)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            out.push((name, String::from_utf8(value.to_vec()).ok()?));
            b = &rest[9 + len..];
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcluster::history::{EVENT_SCHEMA, EventKind};
    use qcluster::{NodeStep, PlanPhase};

    fn ev() -> Event {
        Event {
            schema: EVENT_SCHEMA.into(),
            kind: EventKind::NodeStep,
            generation: 3,
            at_ms: 1_700_000_000_123,
            from_version: Some("1.0.0".into()),
            to_version: "2.0.0".into(),
            phase: Some(PlanPhase::RollingBack),
            node: Some(2),
            step: Some(NodeStep::RolledBack),
            result: None,
            warning: true,
            message: "upgrade 3: node 2 rolled back".into(),
        }
    }

    #[test]
    fn an_event_reaches_the_journal_socket_with_its_fields() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        journal
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(Events::new(path).tell(&ev()), "the journal took it");
        let mut buf = vec![0; 64 << 10];
        let n = journal.recv(&mut buf).expect("the entry within 5 s");
        let fields = parse_entry(&buf[..n]).expect("the native protocol");
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MESSAGE_ID"), Some(EventKind::NodeStep.message_id()));
        assert_eq!(get("MESSAGE"), Some("upgrade 3: node 2 rolled back"));
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get("QIMG_GENERATION"), Some("3"));
        assert_eq!(get("QIMG_NODE"), Some("2"));
        assert_eq!(get("QIMG_STEP"), Some("rolled_back"));
        assert_eq!(get("QIMG_PHASE"), Some("rolling_back"));
        assert_eq!(get("QIMG_FROM_VERSION"), Some("1.0.0"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("qimgd"));
        assert_eq!(get("QIMG_RESULT"), None);
    }

    #[test]
    fn a_value_with_a_newline_is_sent_with_its_length() {
        let mut e = ev();
        e.message = "two\nlines".into();
        let b = entry(&e);
        let fields = parse_entry(&b).unwrap();
        assert_eq!(fields[0], ("MESSAGE".into(), "two\nlines".into()));
        assert!(b.starts_with(b"MESSAGE\n\x09\0\0\0\0\0\0\0two\nlines\n"));
    }

    #[test]
    fn webhook_urls_are_https_with_a_host() {
        let u = WebhookUrl::parse("https://hooks.example:8443/a/b?c=d").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hooks.example", 8443, "/a/b?c=d")
        );
        let u = WebhookUrl::parse("https://[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 443, "/")
        );
        for bad in [
            "http://x/",
            "https:///p",
            "https://x:0/",
            "https://x:y/",
            "https://u:p@x/",
            "https://[::1/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_journal_the_event_is_not_lost_and_nothing_fails() {
        // No socket at the path: the log line instead, at once.
        let t = std::time::Instant::now();
        assert!(!Events::new("/nonexistent/journal.socket".into()).tell(&ev()));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
