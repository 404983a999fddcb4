//! HTTPS: the rustls configuration from a PEM certificate chain and private key.
//!
//! The crypto provider is named explicitly (aws-lc-rs) rather than taken from the process
//! default, so the configuration builds the same whatever other crates of the binary enable.
//! Only HTTP/1.1 is offered by ALPN, which is what [`serve`](mod@crate::serve) speaks.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A problem with the certificate or key files; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read the TLS {what} file {}: {e}", path.display())))
}

/// The server's TLS configuration from a PEM certificate chain (the server's certificate
/// first, then intermediates) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert_path, "certificate")?;
    let key_pem = read(key_path, "private key")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "the TLS certificate file {} is not valid PEM: {e}",
                cert_path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "the TLS certificate file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        TlsError(format!(
            "the TLS private key file {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key_path.display()
        ))
    })?;
    config(certs, key).map_err(|e| {
        TlsError(format!(
            "cannot use the TLS certificate {} with the key {}: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })
}

/// The server's TLS configuration from a DER certificate chain and key.
pub fn config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
