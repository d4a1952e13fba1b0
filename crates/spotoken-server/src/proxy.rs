//! `/api/{path}`: the Web API, reached through the session.
//!
//! Only the configured API origin is reachable, and only under the allowed
//! prefixes: the raw path is checked before anything is decoded (no `..`, no
//! encoded slashes or dots, no backslashes, no absolute URLs). The browser's
//! `Cookie` and `Authorization` never leave; the bearer token is injected;
//! hop-by-hop headers are dropped both ways. A 401 causes one refresh (shared
//! with every other request that saw it) and one retry; a 429 passes through
//! with its `Retry-After`; an upstream timeout is a 504 with a JSON error.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::AppError;
use crate::state::{AppState, Session};

/// Request headers never forwarded (names as `http` stores them: lowercase).
fn never_forwarded(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "cookie"
            | "authorization"
            | "content-length"
            | "origin"
            | "referer"
            | "x-requested-with"
            | "x-csrf"
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped both ways.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Opens connections to the upstream API: rustls with the platform's
/// verifier (HTTPS, or plain HTTP to loopback, as the configured API URL was
/// checked at start), 10 s to connect. Built once: its TLS configuration (the
/// system's certificates, read from disk) is shared by every thread's pool.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pool of keep-alive connections. Plain hyper rather than reqwest: the
/// proxy hands the upstream body to the browser as it arrives, with its
/// length, without re-framing.
type Upstream = Client<Connector, Full<Bytes>>;

thread_local! {
    /// This thread's upstream pool. With one event loop per thread
    /// (`serve_on_threads`), a proxied request and the upstream connection it
    /// uses are driven by the same thread; a pool shared across threads would
    /// hand a request to a connection task on another thread, and back.
    static UPSTREAM: std::cell::OnceCell<Upstream> = const { std::cell::OnceCell::new() };
}

/// Sends `req` through this thread's pool, made on first use from the state's
/// connector (connections are per origin, so states sharing a thread, as
/// tests do, share the pool safely).
fn upstream(
    st: &AppState,
    req: Request<Full<Bytes>>,
) -> hyper_util::client::legacy::ResponseFuture {
    UPSTREAM.with(|pool| {
        pool.get_or_init(|| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(512)
                .build(st.upstream.clone())
        })
        .request(req)
    })
}

/// Builds the [`Connector`].
pub fn connector() -> Connector {
    spotoken::http::install_crypto_provider();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_platform_verifier()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// Checks the raw (still percent-encoded) path after `/api/`; returns it if allowed.
pub fn checked_path<'a>(raw: &'a str, allowed: &[String]) -> Result<&'a str, AppError> {
    let bad = |why: &str| AppError::BadRequest(format!("path refused: {why}"));
    let encoded_separator = raw.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f' | b'e') | (b'5', b'c') | (b'0', b'0')
            )
    });
    if encoded_separator {
        return Err(bad("encoded slash, backslash, dot or NUL"));
    }
    if raw.contains('\\') || raw.contains("://") || raw.starts_with('/') {
        return Err(bad("not a relative API path"));
    }
    if raw.split('/').any(|seg| seg == "." || seg == "..") || raw.contains("//") {
        return Err(bad("dot segments or empty segments"));
    }
    if !allowed.iter().any(|p| raw.starts_with(p.as_str())) {
        return Err(bad("not under an allowed prefix"));
    }
    Ok(raw)
}

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// The proxy for a whole request: what [`crate::App`] calls for `/api/…`,
/// without the router.
pub async fn handle(st: AppState, req: Request<Body>) -> Response<Body> {
    use axum::extract::FromRequestParts as _;
    let (mut parts, body) = req.into_parts();
    let session = match Session::from_request_parts(&mut parts, &st).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    forward(&st, &session, parts.method, &parts.uri, parts.headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn forward(
    st: &AppState,
    session: &Session,
    method: Method,
    uri: &axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response<Body>, AppError> {
    let started = Instant::now();
    let raw = uri.path().strip_prefix("/api/").unwrap_or("");
    let path = checked_path(raw, &st.config.allowed_prefixes)?;
    // The path is checked above, so it is appended to the configured (and
    // start-up-checked) API base as it is: no parse-and-join per request.
    let base = st.tokens.provider().api_base.as_str().trim_end_matches('/');
    let url = match uri.query() {
        Some(q) => format!("{base}/{path}?{q}"),
        None => format!("{base}/{path}"),
    };
    let body = axum::body::to_bytes(body, st.config.max_body)
        .await
        .map_err(|_| AppError::TooLarge)?;
    let listed = connection_listed(&headers);
    let mut forward = HeaderMap::with_capacity(headers.len());
    for (k, v) in &headers {
        let name = k.as_str();
        if never_forwarded(name) || hop_by_hop(name) || listed.iter().any(|l| l == name) {
            continue;
        }
        forward.append(k.clone(), v.clone());
    }
    if let Some(host) = &st.upstream_host {
        forward.insert(header::HOST, host.clone());
    }
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| AppError::BadRequest("not a valid upstream URL".into()))?;
    let account = &session.record.account;
    let mut token = st.tokens.access_token(account).await?;
    let mut retried = false;
    let upstream = loop {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Full::new(body.clone()))
            .map_err(|e| AppError::BadRequest(format!("cannot forward the request: {e}")))?;
        *req.headers_mut() = forward.clone();
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                AppError::Spotoken(spotoken::Error::Internal(
                    "token is not a header value".into(),
                ))
            })?;
        bearer.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, bearer);
        let resp = match tokio::time::timeout(st.config.upstream_timeout, upstream(st, req)).await {
            Err(_) => return Err(AppError::UpstreamTimeout),
            Ok(Err(e)) => {
                return Err(AppError::Spotoken(spotoken::Error::temporary(
                    format!("network: cannot reach the Web API ({e})"),
                    None,
                )));
            }
            Ok(Ok(r)) => r,
        };
        if resp.status() == StatusCode::UNAUTHORIZED && !retried {
            retried = true;
            token = st.tokens.refresh_after_rejection(account, &token).await?;
            continue;
        }
        break resp;
    };
    let status = upstream.status();
    let (mut parts, incoming) = upstream.into_parts();
    let upstream_listed = connection_listed(&parts.headers);
    // Most responses carry none of these: look before removing.
    if parts
        .headers
        .keys()
        .any(|k| hop_by_hop(k.as_str()) || k == header::SET_COOKIE)
    {
        for name in HOP_BY_HOP.into_iter().chain(["set-cookie"]) {
            parts.headers.remove(name);
        }
    }
    for name in upstream_listed {
        parts.headers.remove(name.as_str());
    }
    st.metrics.proxied(status.as_u16(), started.elapsed());
    Ok(Response::from_parts(parts, Body::new(incoming)))
}

/// `/api` and `/api/` alone.
pub async fn not_a_path() -> impl IntoResponse {
    AppError::BadRequest("name an API path, such as /api/v1/me".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["v1/".into()]
    }

    #[test]
    fn accepts_ordinary_paths() {
        for p in ["v1/me", "v1/me/player/currently-playing", "v1/search"] {
            assert!(checked_path(p, &allowed()).is_ok(), "{p}");
        }
    }

    #[test]
    fn refuses_traversal_and_smuggling() {
        for p in [
            "v1/../admin",
            "v1/./me",
            "v1/me/..",
            "v1%2f..%2fadmin",
            "v1/%2e%2e/x",
            "v1/me%5c..",
            "v1//me",
            "https://evil.example/v1/me",
            "/v1/me",
            "v2/me",
            "",
            "v1\\..\\x",
            "v1/%00",
        ] {
            assert!(checked_path(p, &allowed()).is_err(), "{p}");
        }
    }
}
