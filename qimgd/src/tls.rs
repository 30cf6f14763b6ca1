//! The agent's TLS: the configured certificate and key, or a self-signed pair
//! generated on first start and kept (key mode 0600), as appliances do. rustls
//! speaks TLS 1.2 and 1.3 only, so clients offering older versions are refused.
//!
//! The pair is read again when either file changes (a renewed certificate,
//! `qimgd cluster reissue`): the next connection gets it, no restart. A pair
//! that does not load (half copied, a key that is not the certificate's) is
//! not served: the one in use stays until the files agree again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, io_err};

/// Where the certificate and key come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The generated pair's place in the agent's state directory.
    pub fn generated(state: &Path) -> TlsFiles {
        TlsFiles {
            cert: state.join("tls/qimgd.crt"),
            key: state.join("tls/qimgd.key"),
        }
    }
}

/// Generates a self-signed certificate for `names` (DNS names or IP addresses)
/// into `files`, unless both files exist.
pub fn ensure_self_signed(files: &TlsFiles, names: &[String]) -> Result<bool, Error> {
    if files.cert.exists() && files.key.exists() {
        return Ok(false);
    }
    let key_err = |problem: String| Error::Key {
        what: "TLS certificate",
        path: files.cert.clone(),
        problem,
    };
    let ck =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| key_err(e.to_string()))?;
    for p in [&files.cert, &files.key] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
    }
    // The key first: a certificate without its key is never left behind alone.
    qutil::fs::write_secret(&files.key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(io_err("writing", &files.key))?;
    qutil::fs::write_atomic(&files.cert, ck.cert.pem().as_bytes())
        .map_err(io_err("writing", &files.cert))?;
    Ok(true)
}

/// The rustls server configuration for `files` (HTTP/1.1). With `client_ca` (a
/// node of a cluster: the cluster's CA), a client may present a certificate,
/// which must then be one the CA issued (another node); clients without one
/// (operators, Qumulo's client) are served as before.
pub fn server_config(
    files: &TlsFiles,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Reloading::new(files, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(Error::Tls)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad("cluster CA", ca, e.to_string()))?
            {
                let c = c.map_err(|e| bad("cluster CA", ca, e.to_string()))?;
                roots.add(c).map_err(Error::Tls)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| bad("cluster CA", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn bad(what: &'static str, path: &Path, problem: String) -> Error {
    Error::Key {
        what,
        path: path.to_owned(),
        problem,
    }
}

/// The certificate and key of `files`, checked to belong together.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("TLS certificate", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("TLS certificate", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "TLS certificate",
            &files.cert,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("TLS key", &files.key, e.to_string()))?;
    let ck = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| bad("TLS key", &files.key, e.to_string()))?;
    Ok(Arc::new(ck))
}

/// When the files last changed.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(files: &TlsFiles) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&files.cert), m(&files.key))
}

/// How long before its end a certificate is said to need renewing.
pub const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

/// Says when the certificate in `files` ends ([`expiry_note`]). Returns its
/// end (`None`: unreadable).
fn tell_expiry(files: &TlsFiles) -> Option<i64> {
    let pem = std::fs::read_to_string(&files.cert).ok()?;
    let (end, _) = qcluster::pki::expiry(&pem).ok()?;
    crate::log(&expiry_note(&files.cert, end, upgrade::now() as i64));
    Some(end)
}

/// What the log says of a certificate ending at `end`, at `now`: a warning
/// within [`RENEW_BEFORE_SECS`] of its end, or past it.
fn expiry_note(cert: &Path, end: i64, now: i64) -> String {
    let when = qapi::history::utc(end.max(0) as u64 * 1000);
    let cert = cert.display();
    match end - now {
        ..=0 => format!(
            "TLS: the certificate in {cert} EXPIRED at {when} UTC: renew it (qimgd cluster reissue)"
        ),
        left @ 1..RENEW_BEFORE_SECS => format!(
            "TLS: the certificate in {cert} expires in {} days ({when} UTC): renew it (qimgd cluster reissue)",
            left / 86_400
        ),
        _ => format!("TLS: the certificate in {cert} is valid until {when} UTC"),
    }
}

/// Serves the pair of `files`, read again when either file changed.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
    /// The certificate's end, and when it was last told.
    ends: Option<i64>,
    told: SystemTime,
}

impl Reloading {
    fn new(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Reloading, Error> {
        let stamp = stamp(files);
        Ok(Reloading {
            current: Mutex::new(Current {
                key: load(files, provider)?,
                stamp,
                ends: tell_expiry(files),
                told: SystemTime::now(),
            }),
            files: files.clone(),
            provider: provider.clone(),
        })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let at = stamp(&self.files);
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if at != cur.stamp {
            // Tried once per change of the files, not once per connection.
            cur.stamp = at;
            match load(&self.files, &self.provider) {
                Ok(ck) => {
                    crate::log(&format!(
                        "TLS: serving the certificate in {} as changed",
                        self.files.cert.display()
                    ));
                    cur.key = ck;
                    cur.ends = tell_expiry(&self.files);
                    cur.told = now;
                }
                Err(e) => crate::log(&format!(
                    "TLS: keeping the certificate in use: {}",
                    qutil::chain(&e)
                )),
            }
        }
        // Near its end, said again once a day (on a connection).
        let near = cur
            .ends
            .is_some_and(|e| e - (upgrade::now() as i64) < RENEW_BEFORE_SECS);
        if near
            && now
                .duration_since(cur.told)
                .is_ok_and(|d| d.as_secs() >= 86_400)
        {
            cur.told = now;
            tell_expiry(&self.files);
        }
        Some(cur.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_and_loads() {
        let d = tempfile::tempdir().unwrap();
        let f = TlsFiles::generated(d.path());
        assert!(ensure_self_signed(&f, &["localhost".into(), "127.0.0.1".into()]).unwrap());
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cert = std::fs::read(&f.cert).unwrap();
        assert!(!ensure_self_signed(&f, &["x".into()]).unwrap(), "kept");
        assert_eq!(std::fs::read(&f.cert).unwrap(), cert);
        server_config(&f, None).unwrap();
        server_config(&f, Some(&f.cert)).unwrap();
        std::fs::write(&f.key, b"not a key").unwrap();
        assert_eq!(server_config(&f, None).unwrap_err().code(), "key");
    }

    #[test]
    fn the_end_of_a_certificate_is_told_and_warned_of_within_30_days() {
        let c = Path::new("/c.crt");
        let day = 86_400;
        let table = [
            (400 * day, "is valid until 1971-02-15 00:00:00 UTC"),
            (30 * day, "is valid until"),
            (30 * day - 1, "expires in 29 days"),
            (1, "expires in 0 days"),
            (0, "EXPIRED at"),
            (-day, "EXPIRED at"),
        ];
        for (left, want) in table {
            let got = expiry_note(c, day * 10 + left, day * 10);
            assert!(got.contains(want), "{left}: {got}");
            assert!(got.contains("/c.crt"), "{got}");
        }
    }
}
