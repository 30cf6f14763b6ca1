//! The cluster CA and the certificates it issues: one per node, used by its agent
//! and its etcd member as server and as client (mutual TLS). ECDSA P-256.
//!
//! Every certificate has a finite lifetime: the CA [`CA_DAYS`], a node
//! [`NODE_CERT_DAYS`] (renewed each year by `qimgd cluster reissue`, which
//! loads the CA from the operator's copy of its key), each valid from an hour
//! before its issue (the nodes' clocks differ a little).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::Error;

/// How long the CA is valid: ten years.
pub const CA_DAYS: u32 = 3650;

/// How long a node's certificate is valid: 397 days (a year and a month to
/// renew it in, the most browsers accept).
pub const NODE_CERT_DAYS: u32 = 397;

/// The cluster's CA, able to issue.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

fn cert_err(subject: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Cert {
        subject: subject.to_owned(),
        source,
    }
}

fn bad_cert(subject: &str, problem: impl Into<String>) -> Error {
    Error::BadCert {
        subject: subject.to_owned(),
        problem: problem.into(),
    }
}

/// Valid from an hour ago for `days`.
fn valid_for(p: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days));
}

impl Ca {
    /// A new CA for cluster `name`, valid [`CA_DAYS`].
    pub fn new(name: &str) -> Result<Ca, Error> {
        let subject = format!("qimg cluster {name} CA");
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, subject.as_str());
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        valid_for(&mut p, CA_DAYS);
        let key = KeyPair::generate().map_err(cert_err(&subject))?;
        let key_pem = key.serialize_pem();
        let cert = p.self_signed(&key).map_err(cert_err(&subject))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
            key_pem,
        })
    }

    /// The CA of `cert_pem` with its key `key_pem` (the operator's copy):
    /// refused when the key is not the certificate's or the CA has expired.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let subject = "the cluster CA";
        let key = KeyPair::from_pem(key_pem).map_err(cert_err(subject))?;
        let der = pem_der(cert_pem).ok_or_else(|| bad_cert(subject, "no certificate in PEM"))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad_cert(subject, format!("unreadable: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad_cert(subject, "the key is not the certificate's"));
        }
        if x509.validity().not_after.timestamp() <= now_secs() {
            return Err(bad_cert(subject, "it has expired: make a new cluster CA"));
        }
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_err(subject))?,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA key (PEM): kept by the operator, never on a node.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `subject` valid for `names` (DNS names or IP addresses),
    /// for TLS servers and clients, for [`NODE_CERT_DAYS`], with a new key.
    pub fn issue(&self, subject: &str, names: &[String]) -> Result<Issued, Error> {
        let key = KeyPair::generate().map_err(cert_err(subject))?;
        self.issue_for(subject, names, key)
    }

    /// [`Ca::issue`] for the key `key_pem` (a renewal that keeps the node's key).
    pub fn renew(&self, subject: &str, names: &[String], key_pem: &str) -> Result<Issued, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err(subject))?;
        self.issue_for(subject, names, key)
    }

    fn issue_for(&self, subject: &str, names: &[String], key: KeyPair) -> Result<Issued, Error> {
        let mut p = CertificateParams::new(names.to_vec()).map_err(cert_err(subject))?;
        p.distinguished_name.push(DnType::CommonName, subject);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        valid_for(&mut p, NODE_CERT_DAYS);
        let cert = p.signed_by(&key, &self.issuer).map_err(cert_err(subject))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (p.label == "CERTIFICATE").then_some(p.contents)
}

/// The last second (Unix) the first certificate of `pem` is valid, and its
/// subject, as it says.
pub fn expiry(pem: &str) -> Result<(i64, String), Error> {
    let what = "a certificate";
    let der = pem_der(pem).ok_or_else(|| bad_cert(what, "no certificate in PEM"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad_cert(what, format!("unreadable: {e}")))?;
    Ok((
        x509.validity().not_after.timestamp(),
        x509.subject().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_expire_and_a_loaded_ca_issues_what_the_new_one_did() {
        let ca = Ca::new("t").unwrap();
        let now = now_secs();
        let (ca_end, ca_subject) = expiry(&ca.cert_pem()).unwrap();
        assert!(ca_subject.contains("qimg cluster t CA"), "{ca_subject}");
        let day = 86_400;
        assert!(
            (ca_end - now - i64::from(CA_DAYS) * day).abs() < 60,
            "{ca_end}"
        );
        let node = ca.issue("t node a", &["a".into()]).unwrap();
        let (end, _) = expiry(&node.cert_pem).unwrap();
        assert!((end - now - i64::from(NODE_CERT_DAYS) * day).abs() < 60);
        // The operator's copy: loaded, it renews keeping the node's key.
        let loaded = Ca::load(&ca.cert_pem(), ca.key_pem()).unwrap();
        let renewed = loaded
            .renew("t node a", &["a".into()], &node.key_pem)
            .unwrap();
        assert_eq!(renewed.key_pem, node.key_pem);
        assert_ne!(renewed.cert_pem, node.cert_pem);
        // Another CA's key is refused by name.
        let other = Ca::new("u").unwrap();
        let e = Ca::load(&ca.cert_pem(), other.key_pem()).err().unwrap();
        assert!(e.to_string().contains("not the certificate's"), "{e}");
        assert!(Ca::load("junk", ca.key_pem()).is_err());
    }
}
