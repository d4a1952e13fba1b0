//! How spotoken reaches PostgreSQL: libpq's `sslmode` over rustls, and the
//! password from the environment or a password file.
//!
//! The store's connections carry refresh tokens (sealed, but still) and the
//! database password, so they follow the rule of every other connection
//! spotoken makes: encrypted, except to loopback. `sslmode` takes libpq's
//! values — `disable`, `prefer` (the default), `require`, `verify-ca`,
//! `verify-full` — with one difference: a plain connection to a host that is
//! not loopback is never made (`disable` is refused, and `prefer` requires
//! TLS there instead of falling back). `sslrootcert=FILE` adds a CA to the
//! system roots. `require` and `prefer` encrypt without checking the
//! certificate, as in libpq (`require` with `sslrootcert` checks the chain,
//! as libpq does too).
//!
//! A URL without a password takes it from `PGPASSWORD`, else from the
//! password file (`PGPASSFILE`, else `~/.pgpass`; libpq's format, used only
//! when no one else can read it), so it need not appear on a command line.

use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::Error;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plain; only to loopback hosts.
    Disable,
    /// TLS if the server offers it (loopback), TLS always (elsewhere); no
    /// certificate check.
    Prefer,
    /// TLS, no certificate check.
    Require,
    /// TLS, the chain checked against the roots, any host name.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Configuration(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A resolved connection: the driver's config and the TLS connector for it.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: PgTls,
    pub(crate) mode: SslMode,
}

/// Reads `url` (a URL or libpq's `key=value` form); `env` answers for
/// environment variables (`PGPASSWORD`, `PGPASSFILE`, `HOME`).
pub(crate) fn resolve(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Target, Error> {
    let (rest, mode, rootcert) = split_ssl_params(url);
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| Error::Configuration(format!("the database URL is not valid: {e}")))?;
    let mode = mode
        .as_deref()
        .map_or(Ok(SslMode::Prefer), SslMode::from_str)?;
    let rootcert = rootcert.filter(|r| r != "system").map(PathBuf::from);
    let loopback = is_loopback(&config);
    let wire = match mode {
        SslMode::Disable if !loopback => {
            return Err(Error::Configuration(format!(
                "sslmode=disable to a host that is not loopback ({}) would send the password and tokens \
                 unencrypted; use sslmode=verify-full (or require)",
                hosts(&config)
            )));
        }
        // libpq never uses TLS over a Unix socket; neither does the server.
        _ if config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_))) =>
        {
            tokio_postgres::config::SslMode::Disable
        }
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer if loopback => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    };
    config.ssl_mode(wire);
    if config.get_password().is_none()
        && let Some(password) = password_from_env(&config, env)
    {
        config.password(password);
    }
    let check = match (mode, &rootcert) {
        (SslMode::VerifyFull, _) => Check::Full,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Check::Chain,
        _ => Check::None,
    };
    let tls = PgTls::new(check, rootcert.as_deref())?;
    Ok(Target { config, tls, mode })
}

/// Takes `sslmode` and `sslrootcert` out of the URL (the driver knows only
/// some of libpq's values), returning the rest untouched.
fn split_ssl_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |k: &str, v: String| match k {
        "sslmode" => mode = Some(v),
        "sslrootcert" => root = Some(v),
        _ => {}
    };
    let is_ssl = |k: &str| k == "sslmode" || k == "sslrootcert";
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None, None);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
            match decoded {
                Some((k, v)) if is_ssl(&k) => take(&k, v.into_owned()),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, mode, root)
    } else {
        let mut kept = Vec::new();
        for item in url.split_whitespace() {
            match item.split_once('=') {
                Some((k, v)) if is_ssl(k.trim()) => take(k.trim(), v.trim().to_owned()),
                _ => kept.push(item),
            }
        }
        (kept.join(" "), mode, root)
    }
}

fn host_is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether every address the driver may connect to is on this machine.
fn is_loopback(config: &tokio_postgres::Config) -> bool {
    if !config.get_hostaddrs().is_empty() {
        return config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    }
    config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => host_is_loopback(name),
        Host::Unix(_) => true,
    })
}

/// The hosts (and ports) of a configuration, for messages.
pub(crate) fn hosts(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => path.display().to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `PGPASSWORD`, else the matching line of the password file.
fn password_from_env(
    config: &tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    if let Some(p) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Some(p);
    }
    let file = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = read_password_file(&file)?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    password_file_lookup(&text, &host, port, db, user)
}

/// The password file's text, if it exists and only its owner can read it
/// (otherwise libpq ignores it too, with a warning).
fn read_password_file(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "the password file can be read by others and is ignored; run `chmod 600` on it"
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The password of the first line `host:port:database:user:password` that
/// matches (`*` matches anything; `\:` and `\\` escape).
fn password_file_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let fields = split_password_line(line);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |field: &str, value: &str| field == "*" || field == value;
            (matches(&h, host) && matches(&p, &port) && matches(&d, db) && matches(&u, user))
                .then_some(password)
        })
}

fn split_password_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(last)) = (chars.next(), fields.last_mut()) {
                    last.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

/// What the connector checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    Chain,
    Full,
}

/// rustls for tokio-postgres, with the ring provider the rest of spotoken uses.
#[derive(Clone)]
pub(crate) struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

impl PgTls {
    fn new(check: Check, rootcert: Option<&Path>) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = match check {
            Check::None => None,
            Check::Chain | Check::Full => Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(rootcert)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| Error::Configuration(format!("PostgreSQL TLS roots: {e}")))?,
            ),
        };
        let verifier = Arc::new(Verifier {
            check,
            webpki,
            provider: provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("PostgreSQL TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// The system's roots plus the CA file, if any.
fn roots(rootcert: Option<&Path>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = rootcert {
        let bad = |e: String| {
            Error::Configuration(format!("cannot read sslrootcert {}: {e}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(Error::Configuration(
            "no CA certificates to check the PostgreSQL server with: install the system's CA \
             certificates or give sslrootcert=FILE in the database URL"
                .into(),
        ));
    }
    Ok(roots)
}

/// Checks the server's certificate as far as `sslmode` asks. Without webpki
/// (`prefer`, `require`) any certificate passes, but the handshake's
/// signatures are still checked, so the key is the certificate's. For
/// `verify-ca` a name error passes: webpki checks the chain before the name,
/// so a name error means the chain passed.
#[derive(Debug)]
struct Verifier {
    check: Check,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A failed TLS handshake, recognisable in the driver's error chain.
#[derive(Debug)]
pub(crate) struct TlsFailure(pub(crate) io::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for TlsFailure {}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = TlsFailure;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, TlsFailure> {
        let name = ServerName::try_from(domain.trim_matches(['[', ']']).to_owned())
            .map_err(|e| TlsFailure(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One handshake with one server name.
pub(crate) struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, TlsFailure>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            self.connector
                .connect(self.name, stream)
                .await
                .map(PgTlsStream)
                .map_err(TlsFailure)
        })
    }
}

/// The encrypted stream.
pub(crate) struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// SCRAM's channel binding ties the password exchange to this TLS
    /// connection: with `prefer` and `require`, which check no certificate,
    /// it is what stops a man in the middle from relaying a SCRAM login.
    fn channel_binding(&self) -> ChannelBinding {
        self.0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with the
/// hash of its signature algorithm (SHA-256 for MD5 and SHA-1); `None` for
/// algorithms it does not define (Ed25519, RSA-PSS), and SCRAM goes without.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let oid = signature_algorithm(cert)?;
    let hash = match (oid.split_last()?, oid) {
        (_, ECDSA_SHA1) => 256,
        ((last, head), _) if head == RSA => match last {
            0x04 | 0x05 | 0x0b => 256,
            0x0c => 384,
            0x0d => 512,
            _ => return None,
        },
        ((last, head), _) if head == ECDSA_SHA2 => match last {
            0x02 => 256,
            0x03 => 384,
            0x04 => 512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match hash {
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The OID of a DER certificate's `signatureAlgorithm` (the element after
/// `tbsCertificate` in the outer SEQUENCE).
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der_element(cert)? else {
        return None;
    };
    let (_, _tbs, rest) = der_element(body)?;
    let (0x30, algorithm, _) = der_element(rest)? else {
        return None;
    };
    match der_element(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// One DER element: its tag, its content and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// Turns a failure to connect into the taxonomy: TLS that cannot work as
/// configured is a configuration error, anything else temporary.
pub(crate) fn connect_error(
    e: &(dyn std::error::Error + 'static),
    target: &Target,
    describe: &str,
) -> Error {
    let mut chain = Vec::new();
    let mut tls_failure = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        chain.push(err.to_string());
        if let Some(t) = err.downcast_ref::<TlsFailure>() {
            tls_failure = Some(t);
        }
        cur = err.source();
    }
    let text = chain.join(": ");
    if chain.iter().any(|c| c == "server does not support TLS") {
        let why = if target.mode == SslMode::Prefer {
            " (sslmode=prefer falls back to plain only on loopback)"
        } else {
            ""
        };
        return Error::Configuration(format!(
            "{describe} does not offer TLS and sslmode={} requires it{why}",
            target.mode.name()
        ));
    }
    if let Some(t) = tls_failure
        && t.0
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
    {
        return Error::Configuration(format!(
            "the TLS handshake with {describe} failed (sslmode={}): {t}; check sslmode and sslrootcert",
            target.mode.name()
        ));
    }
    Error::temporary(
        format!("cannot reach PostgreSQL ({describe}): {text}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn sslmode_takes_libpqs_five_values() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(s.parse::<SslMode>().expect(s), m);
            assert_eq!(m.name(), s);
        }
        let e = "allow".parse::<SslMode>().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        let e = resolve("postgres://u@127.0.0.1/db?sslmode=verify_full", &no_env)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("verify_full"), "{e}");
    }

    #[test]
    fn ssl_parameters_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = split_ssl_params(
            "postgres://u@db.example:5433/app?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@db.example:5433/app?connect_timeout=5");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = split_ssl_params("host=db user=u sslmode=require dbname=app");
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
    }

    #[test]
    fn the_default_is_prefer_and_prefer_requires_tls_off_loopback() {
        let t = resolve("postgres://u@127.0.0.1/db", &no_env).expect("ok");
        assert_eq!(t.mode, SslMode::Prefer);
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let t = resolve("postgres://u@db.example/db", &no_env).expect("ok");
        assert_eq!(t.mode, SslMode::Prefer);
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn disable_is_refused_for_a_host_that_is_not_loopback() {
        let e = resolve("postgres://u@db.example/db?sslmode=disable", &no_env)
            .err()
            .expect("refused");
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        assert!(e.to_string().contains("db.example"), "{e}");
        for ok in [
            "postgres://u@localhost/db?sslmode=disable",
            "postgres://u@[::1]/db?sslmode=disable",
            "host=/run/postgresql user=u sslmode=disable",
            "host=/run/postgresql user=u sslmode=require",
        ] {
            let t = resolve(ok, &no_env).expect(ok);
            assert_eq!(
                t.config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Disable
            );
        }
    }

    #[test]
    fn password_file_lines_match_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5432:*:u:wrong\n\
                    db.example:*:app:u:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            password_file_lookup(text, "db.example", 5433, "app", "u").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            password_file_lookup(text, "db.example", 5432, "other", "u").as_deref(),
            Some("fallback")
        );
        assert_eq!(password_file_lookup("h:1:d:u", "h", 1, "d", "u"), None);
    }

    #[test]
    fn password_comes_from_the_url_then_pgpassword_then_a_private_password_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:u:from-file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let path = file.display().to_string();
        let env = |with_pgpassword: bool| {
            let path = path.clone();
            move |k: &str| match k {
                "PGPASSWORD" if with_pgpassword => Some("from-env".to_owned()),
                "PGPASSFILE" => Some(path.clone()),
                _ => None,
            }
        };
        let pw = |url: &str, e: &dyn Fn(&str) -> Option<String>| {
            resolve(url, e)
                .expect("ok")
                .config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        };
        let url = "postgres://u@127.0.0.1/db";
        assert_eq!(
            pw("postgres://u:in-url@127.0.0.1/db", &env(true)).as_deref(),
            Some("in-url")
        );
        assert_eq!(pw(url, &env(true)).as_deref(), Some("from-env"));
        assert_eq!(pw(url, &env(false)).as_deref(), Some("from-file"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            pw(url, &env(false)),
            None,
            "a readable password file is ignored"
        );
    }

    #[test]
    fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
        use sha2::Digest as _;
        let cert = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            rcgen::CertificateParams::new(vec!["db.example".to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("cert")
                .der()
                .to_vec()
        };
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&p256),
            Some(sha2::Sha256::digest(&p256).to_vec())
        );
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point(&p384),
            Some(sha2::Sha384::digest(&p384).to_vec())
        );
        assert_eq!(server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(server_end_point(&p256[..40]), None, "truncated");
        assert_eq!(server_end_point(b""), None);
    }

    /// A test PostgreSQL front: answers the SSL request (with TLS when given a
    /// certificate), then relays to the real server named by
    /// `SPOTOKEN_TEST_DATABASE_URL`, if any. CI needs nothing but the
    /// PostgreSQL the other store tests use, whatever its own `ssl` setting.
    async fn front(tls: Option<rustls::ServerConfig>) -> u16 {
        front_on("127.0.0.1:0", tls).await
    }

    async fn front_on(bind: &str, tls: Option<rustls::ServerConfig>) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let upstream = crate::store::postgres::tests::test_url_quiet().map(|u| {
            let c = tokio_postgres::Config::from_str(&u).expect("test url");
            let host = match c.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".to_owned(),
            };
            (host, c.get_ports().first().copied().unwrap_or(5432))
        });
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 8];
                    sock.read_exact(&mut request).await?;
                    if request != [0, 0, 0, 8, 4, 210, 22, 47] {
                        return Err(io::Error::other("expected an SSL request"));
                    }
                    let Some(upstream) = upstream else {
                        // Nothing to relay to: answer the handshake only.
                        sock.write_all(if acceptor.is_some() { b"S" } else { b"N" })
                            .await?;
                        if let Some(a) = acceptor {
                            let _ = a.accept(sock).await;
                        }
                        return Ok(());
                    };
                    let mut pg = tokio::net::TcpStream::connect(upstream).await?;
                    match acceptor {
                        Some(a) => {
                            sock.write_all(b"S").await?;
                            let mut tls = a.accept(sock).await?;
                            tokio::io::copy_bidirectional(&mut tls, &mut pg).await?;
                        }
                        None => {
                            sock.write_all(b"N").await?;
                            tokio::io::copy_bidirectional(&mut sock, &mut pg).await?;
                        }
                    }
                    Ok::<_, io::Error>(())
                });
            }
        });
        port
    }

    /// A CA (written to `dir/ca.pem`) and a server configuration whose
    /// certificate it signed for `names`.
    fn ca_and_server(dir: &Path, names: &[&str]) -> (PathBuf, rustls::ServerConfig) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("leaf");
        let ca_path = dir.join(format!("ca-{}.pem", rand::random::<u32>()));
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        (ca_path, config)
    }

    async fn open(url: &str) -> Result<crate::store::Postgres, Error> {
        let schema =
            crate::store::postgres::tests::fresh_schema(&format!("tls{}", rand::random::<u32>()));
        let store = crate::store::Postgres::connect_in_schema(url, Some(&schema)).await?;
        store.drop_schema_for_tests(&schema).await;
        Ok(store)
    }

    #[tokio::test]
    async fn require_against_a_server_without_tls_is_a_configuration_error() {
        let port = front(None).await;
        let e = open(&format!(
            "postgres://postgres@127.0.0.1:{port}/test?sslmode=require"
        ))
        .await
        .err()
        .expect("refused");
        assert_eq!(e.kind(), crate::ErrorKind::Configuration, "{e}");
        assert!(e.to_string().contains("does not offer TLS"), "{e}");
        assert!(e.to_string().contains("sslmode=require"), "{e}");
    }

    #[tokio::test]
    async fn prefer_off_loopback_refuses_a_server_without_tls() {
        // 0.0.0.0 is not a loopback address, yet on Linux a connection to it
        // reaches a listener on this machine: a "remote" server for the test.
        let port = front_on("0.0.0.0:0", None).await;
        let e = open(&format!("postgres://postgres@0.0.0.0:{port}/test"))
            .await
            .err()
            .expect("no plain fallback");
        assert_eq!(e.kind(), crate::ErrorKind::Configuration, "{e}");
        assert!(e.to_string().contains("does not offer TLS"), "{e}");
        assert!(e.to_string().contains("only on loopback"), "{e}");
    }

    #[tokio::test]
    async fn prefer_on_loopback_works_with_a_server_without_tls() {
        if crate::store::postgres::tests::test_url().is_none() {
            return;
        }
        let port = front(None).await;
        open(&format!("postgres://postgres@127.0.0.1:{port}/test"))
            .await
            .expect("plain on loopback");
    }

    #[tokio::test]
    async fn verify_full_checks_the_chain_and_the_host_name() {
        let dir = tempfile::tempdir().expect("tmp");
        // A certificate for another name: verify-full refuses it.
        let (ca, server) = ca_and_server(dir.path(), &["db.example"]);
        let port = front(Some(server)).await;
        let url = |mode: &str| {
            format!(
                "postgres://postgres@127.0.0.1:{port}/test?sslmode={mode}&sslrootcert={}",
                ca.display()
            )
        };
        let e = open(&url("verify-full")).await.err().expect("wrong name");
        assert_eq!(e.kind(), crate::ErrorKind::Configuration, "{e}");
        assert!(e.to_string().contains("TLS handshake"), "{e}");
        assert!(e.to_string().to_lowercase().contains("name"), "{e}");
        // A CA that did not sign it: verify-ca refuses it too.
        let (other_ca, _) = ca_and_server(dir.path(), &["db.example"]);
        let e = open(&format!(
            "postgres://postgres@127.0.0.1:{port}/test?sslmode=verify-ca&sslrootcert={}",
            other_ca.display()
        ))
        .await
        .err()
        .expect("unknown issuer");
        assert_eq!(e.kind(), crate::ErrorKind::Configuration, "{e}");
        if crate::store::postgres::tests::test_url().is_none() {
            return;
        }
        // The right CA: verify-ca accepts the other name, and verify-full a
        // certificate for the address connected to.
        open(&url("verify-ca")).await.expect("chain only");
        let (ca, server) = ca_and_server(dir.path(), &["127.0.0.1"]);
        let port = front(Some(server)).await;
        open(&format!(
            "postgres://postgres@127.0.0.1:{port}/test?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ))
        .await
        .expect("verified TLS");
    }
}
