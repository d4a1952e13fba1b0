//! `/api/{path}`: the Web API, reached through the session.
//!
//! Only the configured API origin is reachable, and only under the allowed
//! prefixes: the raw path is checked before anything is decoded (no `..`, no
//! encoded slashes or dots, no backslashes, no absolute URLs). The browser's
//! `Cookie` and `Authorization` never leave; the bearer token is injected;
//! hop-by-hop headers are dropped both ways. A 401 causes one refresh (shared
//! with every other request that saw it) and one retry; an idempotent request
//! whose kept-alive connection hung up before answering goes once more on a
//! new connection; a 429 passes through
//! with its `Retry-After`; an upstream timeout is a 504 with a JSON error. A
//! 403 passes through too, with [`MISSING_SCOPE`] naming the scopes the
//! endpoint needs that the session's login did not grant (Spotify's
//! `Insufficient client scope` never says which).

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;

use crate::cookies;
use crate::error::AppError;
use crate::state::{AppState, View, check_csrf};
use crate::upstream::SendError;
use spotoken::core::scope;
use spotoken::core::secret::AccessToken;

/// On a 403: the scopes (space-separated) the endpoint needs that this
/// session was not granted, from the scope table. Absent when the grant
/// covers the endpoint or the table does not know it.
pub(crate) const MISSING_SCOPE: header::HeaderName =
    header::HeaderName::from_static("spotoken-missing-scope");

/// On every answer that comes from an upstream (the Web API, or the app's
/// server) rather than from spotoken itself: its status and body passed on
/// unchanged. Without it, the answer is spotoken's own (JSON errors in the
/// one documented format).
pub(crate) const FROM_UPSTREAM: header::HeaderName =
    header::HeaderName::from_static("spotoken-upstream");

/// Request headers never forwarded to the Web API (names as `http` stores them: lowercase):
/// the browser's credentials and CSRF proof, framing (we frame the request),
/// and every header an upstream or a proxy in front of it might read as a
/// statement about the client, the method or the path, which only this
/// server may make. `Expect` goes too: the body is read whole before the
/// request is sent, so there is nothing left to wait for.
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
            | "expect"
            | "forwarded"
            | "x-real-ip"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-original-url"
            | "x-rewrite-url"
            | "spotoken-user"
            | "spotoken-scopes"
    ) || name.starts_with("x-forwarded-")
}

/// Response headers the upstream never sets on our answer: its framing (the
/// answer to the browser is framed by this server alone; an upstream's
/// `Content-Length` beside a chunked body let a browser read a second,
/// forged response out of the first), cookies, and what marks the answer as
/// private to this session.
const NEVER_RETURNED: [&str; 5] = [
    "content-length",
    "set-cookie",
    "cache-control",
    "vary",
    "x-content-type-options",
];

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

pub(crate) fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Whether `raw` is under `prefix`, a whole path segment at a time: `v1/me`
/// covers `v1/me` and `v1/me/player`, never `v1/meX`.
fn under_prefix(raw: &str, prefix: &str) -> bool {
    match raw.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Checks the raw (still percent-encoded) path after `/api/`; returns it if allowed.
pub(crate) fn checked_path<'a>(raw: &'a str, allowed: &[String]) -> Result<&'a str, AppError> {
    let bad = |why: &str| AppError::BadRequest(format!("path refused: {why}"));
    if !raw.is_ascii() || raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad("bytes outside printable ASCII"));
    }
    // `%25` decodes to `%`: a second decoding anywhere behind us would see
    // the separators the checks below look for.
    if raw
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && w[2] == b'5')
    {
        return Err(bad("double percent-encoding"));
    }
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
    // `..;x` is a dot segment to servers that strip path parameters.
    let dots = |seg: &str| matches!(seg.split(';').next(), Some("." | ".."));
    if raw.split('/').any(dots) || raw.contains("//") {
        return Err(bad("dot segments or empty segments"));
    }
    if !allowed.iter().any(|p| under_prefix(raw, p)) {
        return Err(bad("not under an allowed prefix"));
    }
    Ok(raw)
}

/// Methods that change nothing (RFC 9110 §9.2.1), and so need no CSRF proof.
pub(crate) fn is_safe(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub(crate) fn connection_listed(headers: &HeaderMap) -> Vec<String> {
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
pub(crate) async fn handle<B>(st: AppState, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut resp = answer(st, req).await;
    private_to_session(resp.headers_mut());
    resp
}

async fn answer<B>(st: AppState, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (parts, body) = req.into_parts();
    let Some(cookie) = cookies::get(&parts.headers, cookies::SESSION) else {
        return AppError::Unauthenticated.into_response();
    };
    // A write is the browser's only when it proves it (a header a form or
    // a simple cross-site request cannot send, and our own Origin):
    // SameSite=Lax lets a sibling origin's `text/plain` POST carry the
    // cookie without a preflight.
    if !is_safe(&parts.method)
        && let Err(e) = check_csrf(&parts.headers, &st.config)
    {
        return e.into_response();
    }
    let view = match st.view(cookie).await {
        Ok(Some(v)) => v,
        Ok(None) => return AppError::SessionExpired.into_response(),
        Err(e) => return e.into_response(),
    };
    forward(&st, cookie, view, &parts, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The headers sent upstream: the browser's, less credentials, hop-by-hop
/// headers and those its `Connection` names, plus `Host` and the bearer.
fn upstream_headers(st: &AppState, headers: &HeaderMap, bearer: HeaderValue) -> HeaderMap {
    let listed = connection_listed(headers);
    // Room for Host and Authorization: a full map would grow (rehash) for them.
    let mut forward = HeaderMap::with_capacity(headers.len() + 2);
    for (k, v) in headers {
        let name = k.as_str();
        if never_forwarded(name) || hop_by_hop(name) || listed.iter().any(|l| l == name) {
            continue;
        }
        forward.append(k.clone(), v.clone());
    }
    forward.insert(header::HOST, st.upstream.host().clone());
    forward.insert(header::AUTHORIZATION, bearer);
    forward
}

/// Sends the browser's request upstream with the session's token and
/// answers with the upstream's response, its headers made fit for the
/// browser.
async fn forward<B>(
    st: &AppState,
    cookie: &str,
    view: View,
    parts: &axum::http::request::Parts,
    body: B,
) -> Result<Response<Body>, AppError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let started = Instant::now();
    let _in_flight = st.metrics.started();
    let raw = parts.uri.path().strip_prefix("/api/").unwrap_or("");
    let path = checked_path(raw, &st.config.allowed_prefixes)?;
    // The path is checked above, so it is appended to the configured (and
    // start-up-checked) API base as it is: no parse-and-join per request.
    let target = st.upstream.target(path, parts.uri.query());
    let body = read_body(body, st.config.max_body).await?;
    let headers = upstream_headers(st, &parts.headers, view.bearer);
    let upstream = send_with_retry(
        st,
        cookie,
        &view.record.account,
        parts,
        &target,
        headers,
        &body,
    )
    .await?;
    let status = upstream.status();
    st.budgets
        .note_api_answer(status, upstream.headers(), st.tokens.now())
        .await;
    let missing = if status == StatusCode::FORBIDDEN {
        missing_scopes(st, &view.record.account, parts.method.as_str(), path).await
    } else {
        None
    };
    let (mut parts, upstream_body) = upstream.into_parts();
    answer_headers(&mut parts.headers, missing);
    st.metrics.proxied(status.as_u16(), started.elapsed());
    Ok(Response::from_parts(parts, Body::new(upstream_body)))
}

/// The request's body, whole (the upstream client sends it in one write),
/// refused past `max` bytes.
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, AppError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AppError::TooLarge),
        Err(_) => Err(AppError::BadRequest("the request body was cut off".into())),
    }
}

/// Sends the request upstream: once more on a new connection when a reused
/// one turns out closed (idempotent requests only), and once more with a
/// new token when the API refuses the one sent (401).
async fn send_with_retry(
    st: &AppState,
    cookie: &str,
    account: &str,
    parts: &axum::http::request::Parts,
    target: &str,
    mut headers: HeaderMap,
    body: &[u8],
) -> Result<Response<crate::upstream::UpstreamBody>, AppError> {
    let mut retried = false;
    let mut on_new = false;
    loop {
        st.budgets.spend_api().await?;
        let sent = st
            .upstream
            .send(&parts.method, target, &headers, body, on_new);
        let resp = match tokio::time::timeout(st.config.upstream_timeout, sent).await {
            Err(_) => return Err(AppError::UpstreamTimeout),
            // The upstream closed a kept-alive connection as it was
            // reused: a request that is safe to repeat goes again, once,
            // on a new connection.
            Ok(Err(SendError::Stale(e))) if !on_new && parts.method.is_idempotent() => {
                tracing::debug!(error = %e, "retrying on a new upstream connection");
                on_new = true;
                continue;
            }
            Ok(Err(e)) => return Err(send_failed(e)),
            Ok(Ok(r)) => r,
        };
        if resp.status() != StatusCode::UNAUTHORIZED || retried {
            return Ok(resp);
        }
        retried = true;
        st.drop_view(cookie);
        let rejected = headers[header::AUTHORIZATION]
            .to_str()
            .ok()
            .and_then(|b| b.strip_prefix("Bearer "))
            .map(AccessToken::new)
            .ok_or_else(|| spotoken::Error::Internal("the bearer header lost its token".into()))?;
        // None: the token is moments old; the 401 goes back as it is.
        let Some(token) = st
            .tokens
            .refresh_after_rejection(account, &rejected)
            .await?
        else {
            return Ok(resp);
        };
        headers.insert(header::AUTHORIZATION, crate::state::bearer(&token)?);
    }
}

/// What a failed upstream exchange tells the browser: an answer our parser
/// refused is the API's protocol error, anything else a network failure.
fn send_failed(e: SendError) -> AppError {
    let e = match e {
        SendError::Failed(e) if e.is::<crate::http1::Malformed>() => spotoken::Error::Protocol {
            status: None,
            message: format!("the Web API's answer was refused ({e})"),
            snippet: String::new(),
        },
        e => spotoken::Error::temporary(format!("network: cannot reach the Web API ({e})"), None),
    };
    e.into()
}

/// The upstream answer's headers as the browser gets them: no hop-by-hop
/// fields or fields its `Connection` names, none of [`NEVER_RETURNED`], no
/// CORS grants; the missing scope when a 403 names one, and the mark that
/// the answer is the API's.
fn answer_headers(headers: &mut HeaderMap, missing: Option<HeaderValue>) {
    let upstream_listed = connection_listed(headers);
    // One pass over the (few) fields the answer has, rather than a lookup
    // for each of the fourteen names on every proxied request.
    let unwanted = |k: &header::HeaderName| {
        let n = k.as_str();
        hop_by_hop(n) || NEVER_RETURNED.contains(&n)
    };
    if headers.keys().any(unwanted) {
        for name in HOP_BY_HOP.into_iter().chain(NEVER_RETURNED) {
            headers.remove(name);
        }
    }
    for name in upstream_listed {
        headers.remove(name.as_str());
    }
    // The Web API allows any origin (`Access-Control-Allow-Origin: *`); the
    // proxy is for this origin alone, and says nothing to others.
    let cors: Vec<header::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
    if let Some(missing) = missing {
        headers.insert(MISSING_SCOPE, missing);
    }
    headers.insert(FROM_UPSTREAM, HeaderValue::from_static("1"));
}

/// Marks an answer that depends on the session: no shared cache may keep
/// it or serve it to another cookie, and no browser may guess its type.
pub(crate) fn private_to_session(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Cookie"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// What a 403 for `method path` is most likely about: the scopes the endpoint
/// needs that the account's grant lacks. Logged with what to do about it:
/// log in again when the configured scopes include them, else add them.
async fn missing_scopes(
    st: &AppState,
    account: &str,
    method: &str,
    path: &str,
) -> Option<HeaderValue> {
    let granted = match st.tokens.granted_scopes(account).await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(error = %e, "granted scopes unknown");
            return None;
        }
    };
    let endpoint = format!("/{path}");
    let missing = scope::missing_for(method, &endpoint, &granted);
    if missing.is_empty() {
        return None;
    }
    let names = missing.join(" ");
    if missing.iter().all(|m| st.config.scopes.contains(m)) {
        tracing::info!(%method, %endpoint, missing = %names,
            "the Web API refused a scope this session was not granted; a new login asks for it");
    } else {
        tracing::warn!(%method, %endpoint, missing = %names,
            "the Web API refused a scope that `--scopes` does not ask for; add it");
    }
    HeaderValue::from_str(&names).ok()
}

/// `/api` and `/api/` alone.
pub(crate) async fn not_a_path() -> impl IntoResponse {
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
            // Issue 11, finding 10.
            "v1/..;/admin",
            "v1/me/..;x",
            "v1/%252e%252e/admin",
            "v1/%25",
            "v1/m\u{e9}",
            "v1/me me",
        ] {
            assert!(checked_path(p, &allowed()).is_err(), "{p}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let allowed = vec!["v1/me".to_owned()];
        for ok in ["v1/me", "v1/me/player", "v1/me/player/play"] {
            assert!(checked_path(ok, &allowed).is_ok(), "{ok}");
        }
        for bad in ["v1/meX", "v1/me-evil", "v1/mex/player", "v1/m"] {
            assert!(checked_path(bad, &allowed).is_err(), "{bad}");
        }
        assert!(checked_path("v1/anything", &["v1/".to_owned()]).is_ok());
    }

    #[test]
    fn client_statements_are_never_forwarded() {
        for h in [
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "x-http-method-override",
            "x-original-url",
            "x-rewrite-url",
            "expect",
            "spotoken-user",
        ] {
            assert!(never_forwarded(h), "{h}");
        }
        assert!(!never_forwarded("content-type"));
        assert!(!never_forwarded("accept"));
    }

    proptest::proptest! {
        /// Whatever the path, an accepted one is relative, under an allowed
        /// prefix, and free of every form of traversal or smuggling.
        #[test]
        fn accepted_paths_are_plain(raw in "[a-zA-Z0-9/%.:\\\\?_-]{0,40}") {
            let prefixed = format!("v1/{raw}");
            for p in [raw.as_str(), prefixed.as_str()] {
                if let Ok(ok) = checked_path(p, &allowed()) {
                    let lower = ok.to_ascii_lowercase();
                    proptest::prop_assert!(ok.starts_with("v1/"));
                    proptest::prop_assert!(!ok.starts_with('/'));
                    proptest::prop_assert!(!ok.contains('\\') && !ok.contains("://"));
                    proptest::prop_assert!(!ok.contains("//"));
                    proptest::prop_assert!(!ok.split('/').any(|s| s == "." || s == ".."));
                    for enc in ["%2f", "%2e", "%5c", "%00"] {
                        proptest::prop_assert!(!lower.contains(enc), "{ok}");
                    }
                }
            }
        }
    }
}
