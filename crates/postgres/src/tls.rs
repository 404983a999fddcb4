//! TLS to PostgreSQL with rustls, with libpq's meaning of `sslmode` and `sslrootcert`.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and leaves the
//! certificate to the TLS connector: the connector here is where `verify-ca` and `verify-full`
//! verify, and where `prefer` and `require` do not (unless given `sslrootcert`, which makes
//! them verify the chain, as libpq does).
//!
//! | sslmode | TLS | chain verified | host name verified |
//! | --- | --- | --- | --- |
//! | `disable` | never | | |
//! | `prefer` (default) | when the server offers it | only with `sslrootcert` | no |
//! | `require` | always | only with `sslrootcert` | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! The trusted CA certificates are those of the PEM file `sslrootcert`, or the system's when
//! it is not given (or is `system`, which libpq allows with `verify-full` only). Whatever the
//! mode, the handshake's signatures are checked against the certificate the server sent.
//!
//! The crypto provider is named explicitly (aws-lc-rs), as for the HTTPS server, rather than
//! taken from the process default.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::PgError;

/// libpq's `sslmode`, less `allow` (plain first, TLS only if refused), which tokio-postgres
/// cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, PgError> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(PgError::Config(format!(
                "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does before the handshake: the verifying modes are `require` to it.
    pub(crate) fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The CA certificates a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// None given: the system's for `verify-ca` and `verify-full`, no verification otherwise.
    Unset,
    /// `sslrootcert=system`.
    System,
    /// `sslrootcert=<PEM file>`.
    File(PathBuf),
}

impl RootCert {
    pub fn parse(text: Option<&str>) -> RootCert {
        match text {
            None | Some("") => RootCert::Unset,
            Some("system") => RootCert::System,
            Some(path) => RootCert::File(PathBuf::from(path)),
        }
    }
}

/// The TLS connector for every connection to one database: cheap to clone.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    /// The mode and the roots, said in handshake errors.
    context: Arc<str>,
}

impl fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRustls")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl MakeRustls {
    /// The connector for `mode` and `root_cert`; reads the CA certificates now.
    pub fn new(mode: SslMode, root_cert: &RootCert) -> Result<MakeRustls, PgError> {
        if *root_cert == RootCert::System && mode != SslMode::VerifyFull {
            // libpq's rule: the public CAs vouch for any name they signed, so trusting them
            // without checking the name would trust anyone's certificate.
            return Err(PgError::Config(format!(
                "sslmode={} may not be used with sslrootcert=system: use sslmode=verify-full",
                mode.name()
            )));
        }
        let (roots, trusting) = match (mode, root_cert) {
            (SslMode::Disable, _) => (None, String::new()),
            (_, RootCert::File(path)) => (
                Some(file_roots(path)?),
                format!(", trusting the CA certificates of {}", path.display()),
            ),
            (SslMode::VerifyCa | SslMode::VerifyFull, RootCert::Unset | RootCert::System) => (
                Some(system_roots()?),
                ", trusting the system's CA certificates".to_owned(),
            ),
            (SslMode::Prefer | SslMode::Require, _) => (None, ", certificate not verified".to_owned()),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Verifier {
            roots: roots.map(Arc::new),
            check_name: mode == SslMode::VerifyFull,
            algorithms: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Config(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(MakeRustls {
            config: Arc::new(config),
            context: format!("sslmode={}{trusting}", mode.name()).into(),
        })
    }
}

fn file_roots(path: &std::path::Path) -> Result<RootCertStore, PgError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PgError::Config(format!("sslrootcert {}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(PgError::Config(format!(
            "sslrootcert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, PgError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(String::new, |e| format!(" ({e})"));
        return Err(PgError::Config(format!(
            "no system CA certificates found{why}: give sslrootcert=<PEM file>"
        )));
    }
    Ok(roots)
}

/// Verifies what the mode asks for: the chain when there are roots, the name with
/// `verify-full`, the handshake's signatures always.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algorithms.all)?;
            if self.check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = PgError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, PgError> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| PgError::Config(format!("'{domain}' cannot be a TLS server name: {e}")))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            context: self.context.clone(),
            name,
        })
    }
}

/// One connection's handshake.
#[derive(Debug)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    context: Arc<str>,
    name: ServerName<'static>,
}

/// A failed handshake, with the mode and the roots it was made with: "invalid peer
/// certificate: UnknownIssuer (sslmode=verify-full, trusting the CA certificates of ca.pem)".
#[derive(Debug)]
pub struct HandshakeError {
    error: io::Error,
    context: Arc<str>,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.error, self.context)
    }
}

// No `source`: the text above already says the error, and chains would say it twice.
impl std::error::Error for HandshakeError {}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        let context = self.context;
        Box::pin(async move {
            match connector.connect(self.name, stream).await {
                Ok(stream) => Ok(RustlsStream(Box::new(stream))),
                Err(error) => Err(HandshakeError { error, context }),
            }
        })
    }
}

/// A connection over TLS.
#[derive(Debug)]
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // No channel binding: SCRAM runs without it over TLS (tokio-postgres' `prefer`).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
