//! The one HTTP client: rustls, timeouts, no redirects, capped bodies, and no
//! plain `http://` except to loopback (the check is made where URLs are
//! configured, in [`spotoken_core::endpoint`], and again here before sending).
//!
//! It returns what the pure core needs to classify an answer: the status, the
//! parsed `Retry-After`, and the body. Network failures become temporary errors.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use spotoken_core::endpoint::check_secure;
use spotoken_core::protocol::FormRequest;
use spotoken_core::wait::parse_retry_after;

use crate::Error;

/// Largest response body we read (token responses are a few hundred bytes;
/// Web API pages are rarely over a few hundred KiB).
pub(crate) const MAX_BODY: usize = 8 * 1024 * 1024;

/// An answer with its body read.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Parsed `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The body (at most `MAX_BODY` bytes).
    pub body: Bytes,
}

impl Answer {
    /// The view the core's parsers take.
    pub(crate) fn as_core(&self) -> spotoken_core::protocol::HttpAnswer<'_> {
        spotoken_core::protocol::HttpAnswer {
            status: self.status,
            retry_after: self.retry_after,
            body: &self.body,
        }
    }
}

/// Installs rustls' ring provider as the process-wide default, once, unless
/// one is installed already.
///
/// Only builds without the `default-tls` feature need it: reqwest then has no
/// provider of its own, and any `reqwest::Client` built before one is
/// installed panics. spotoken calls it before building its own client; an app
/// built that way that makes its own client first calls it at start-up.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds the client: no redirects, connect and total timeouts, pooled
/// keep-alive connections, a recognizable user agent.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, Error> {
    // With `default-tls` reqwest falls back to its own aws-lc provider, and a
    // library must not claim the process-wide default the app may want to set.
    #[cfg(not(feature = "default-tls"))]
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("spotoken/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
}

/// A failed send, and whether the request may have reached the server: a
/// timeout or a connection that broke after sending may hide an answer the
/// server did produce; a refused connection cannot.
#[derive(Debug)]
pub(crate) struct SendFailure {
    pub(crate) error: Error,
    pub(crate) maybe_delivered: bool,
}

impl From<Error> for SendFailure {
    fn from(error: Error) -> Self {
        Self {
            error,
            maybe_delivered: false,
        }
    }
}

fn transport_failure(e: reqwest::Error) -> SendFailure {
    SendFailure {
        maybe_delivered: !e.is_connect() && !e.is_builder(),
        error: network_error(e),
    }
}

/// Sends a prepared form POST (token or revocation request).
pub(crate) async fn send_form(
    client: &reqwest::Client,
    req: &FormRequest,
) -> Result<Answer, Error> {
    send_form_tracked(client, req).await.map_err(|f| f.error)
}

/// [`send_form`], telling whether a failed request may have been delivered.
pub(crate) async fn send_form_tracked(
    client: &reqwest::Client,
    req: &FormRequest,
) -> Result<Answer, SendFailure> {
    check_secure(&req.url, "endpoint")?;
    let mut b = client
        .post(req.url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(req.body.as_bytes().to_vec());
    if let Some(auth) = &req.authorization {
        let mut v = HeaderValue::from_str(auth).map_err(|_| {
            Error::Configuration("the client credentials contain invalid characters".into())
        })?;
        v.set_sensitive(true);
        b = b.header(AUTHORIZATION, v);
    }
    send_tracked(b).await
}

/// Sends a request and reads the answer, capping the body.
pub(crate) async fn send(b: reqwest::RequestBuilder) -> Result<Answer, Error> {
    send_tracked(b).await.map_err(|f| f.error)
}

async fn send_tracked(b: reqwest::RequestBuilder) -> Result<Answer, SendFailure> {
    let mut resp = b.send().await.map_err(transport_failure)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Error::protocol(Some(status), "response body too large", b"").into());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport_failure)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Error::protocol(Some(status), "response body too large", b"").into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        retry_after,
        body: body.freeze(),
    })
}

/// A transport failure, as a temporary error that names the host but never the
/// query string (which could carry a secret).
pub(crate) fn network_error(e: reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the connection broke while reading the answer"
    } else {
        "the request failed"
    };
    let host = e
        .url()
        .map(|u| format!(" to {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    Error::temporary(format!("network: {what}{host}"), None)
}
