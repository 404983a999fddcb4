//! HTTPS: the client reaches a server whose certificate is signed by an authority it was
//! given (as a self-signed deployment would), and refuses one it was not given.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use factstore_client::{AppendRequest, Client, Error, NewEvent, RetryPolicy};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use support::Server;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority, and a TLS front for `upstream` with a certificate for
/// `localhost` signed by it. Returns the front's https URL and the authority's PEM.
async fn tls_front(upstream: std::net::SocketAddr) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    (format!("https://localhost:{port}"), ca.pem())
}

#[tokio::test]
async fn https_with_a_given_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (url, ca_pem) = tls_front(server.addr).await;

    let client = Client::builder(&url)
        .add_root_certificate_pem(ca_pem.as_bytes())
        .build()
        .unwrap();
    assert_eq!(client.health().await.unwrap().status, "ok");
    let outcome = client
        .append(
            "account:1",
            AppendRequest::new([NewEvent::new("Account", "Opened", json!({}))]),
        )
        .await
        .unwrap();
    assert_eq!(outcome.position, 1);

    // Without the authority the certificate is not trusted: a transport error, not retried
    // into success.
    let stranger = Client::builder(&url).retry(RetryPolicy::none()).build().unwrap();
    match stranger.health().await {
        Err(error @ Error::Transport(_)) => {
            assert!(
                error.to_string().to_lowercase().contains("certificate"),
                "{error}"
            )
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    server.stop().await;
}
