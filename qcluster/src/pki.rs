//! The cluster CA and the certificates it issues: one per node, used by its agent
//! and its etcd member as server and as client (mutual TLS). ECDSA P-256.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::Error;

/// A new CA, able to issue.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
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

impl Ca {
    /// A CA for cluster `name`.
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
        let key = KeyPair::generate().map_err(cert_err(&subject))?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(p, key).map_err(cert_err(&subject))?;
        Ok(Ca { issuer, key_pem })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA key (PEM): kept by the operator, never on a node.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `subject` valid for `names` (DNS names or IP addresses),
    /// for TLS servers and clients.
    pub fn issue(&self, subject: &str, names: &[String]) -> Result<Issued, Error> {
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
        let key = KeyPair::generate().map_err(cert_err(subject))?;
        let cert = p.signed_by(&key, &self.issuer).map_err(cert_err(subject))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
