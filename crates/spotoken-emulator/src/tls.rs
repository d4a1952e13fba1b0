//! TLS for the emulator, so that it can stand in for a far-away
//! `api.spotify.com`: the real Web API speaks only HTTPS (and HTTP/2), and a
//! proxy in front of it pays for handshakes and connection reuse in ways a
//! plain loopback port never shows.
//!
//! Each emulator makes its own test CA and a certificate for `127.0.0.1` and
//! `localhost` signed by it, in memory. A client trusts the emulator by
//! adding the CA ([`TestCa::ca_pem`]) to its roots; nothing here ever asks a
//! client to skip verification.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA and the server configuration of a certificate it signed.
#[derive(Clone)]
pub struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA and a server certificate for `127.0.0.1` and `localhost`,
    /// offering HTTP/2 by ALPN when `http2` (HTTP/1.1 always).
    pub fn new(http2: bool) -> std::io::Result<Self> {
        let err = |e: rcgen::Error| std::io::Error::other(format!("test certificate: {e}"));
        let ca_key = rcgen::KeyPair::generate().map_err(err)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "spotoken emulator test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;
        let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(err)?
            .signed_by(&leaf_key, &ca)
            .map_err(err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .map_err(std::io::Error::other)?;
        // Room to resume every connection of a busy proxy (rustls keeps 256).
        server.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        server.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server: Arc::new(server),
        })
    }

    /// The CA certificate in PEM: what a client adds to its roots.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The server side of the handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}
