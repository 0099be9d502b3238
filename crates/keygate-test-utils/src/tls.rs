//! Throwaway TLS certificates for tests: a self-signed CA and a leaf certificate
//! for `localhost` and `127.0.0.1` signed by it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A freshly generated CA and a server certificate signed by it, all as PEM.
///
/// The leaf certificate is valid for the DNS name `localhost` and the IP address
/// `127.0.0.1`. Clients trust it by adding [`TestCerts::ca_pem`] as their only
/// root. `Debug` never prints the private key.
pub struct TestCerts {
    /// The self-signed CA certificate that signed the leaf.
    pub ca_pem: String,
    /// The leaf (server) certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

impl TestCerts {
    /// Generates a new CA and a leaf certificate for `localhost` and `127.0.0.1`.
    /// Panics (this is test code) if generation fails.
    pub fn generate() -> TestCerts {
        let ca_key =
            KeyPair::generate().unwrap_or_else(|e| panic!("cannot generate a CA key: {e}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| panic!("cannot build CA parameters: {e}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keygate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|e| panic!("cannot self-sign the CA: {e}"));
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key =
            KeyPair::generate().unwrap_or_else(|e| panic!("cannot generate a leaf key: {e}"));
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap_or_else(|e| panic!("cannot build leaf parameters: {e}"));
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .unwrap_or_else(|e| panic!("cannot sign the leaf certificate: {e}"));

        TestCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// A rustls server configuration (ring provider, safe default protocol
    /// versions, no client auth) serving the leaf certificate and offering the
    /// given ALPN protocols, e.g. `&[b"h2", b"http/1.1"]`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .unwrap_or_else(|e| panic!("cannot parse the leaf certificate: {e}"));
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("cannot parse the leaf key: {e}"));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("cannot choose TLS versions: {e}"))
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap_or_else(|e| panic!("cannot use the leaf certificate: {e}"));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir` and returns their
    /// paths in that order.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
        let ca = dir.join("ca.pem");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&ca, &self.ca_pem)?;
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((ca, cert, key))
    }
}

impl fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCerts")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}
