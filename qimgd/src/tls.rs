//! The agent's TLS: the configured certificate and key, or a self-signed pair
//! generated on first start and kept (key mode 0600), as appliances do. rustls
//! speaks TLS 1.2 and 1.3 only, so clients offering older versions are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    let bad = |what: &'static str, path: &Path, problem: String| Error::Key {
        what,
        path: path.to_owned(),
        problem,
    };
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    let mut cfg = builder.with_single_cert(certs, key).map_err(Error::Tls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
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
}
