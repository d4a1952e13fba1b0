//! `/api/{path}`: the Web API, reached through the session.
//!
//! Only the configured API origin is reachable, and only under the allowed
//! prefixes: the raw path is checked before anything is decoded (no `..`, no
//! encoded slashes or dots, no backslashes, no absolute URLs). The browser's
//! `Cookie` and `Authorization` never leave; the bearer token is injected;
//! hop-by-hop headers are dropped both ways. A 401 causes one refresh (shared
//! with every other request that saw it) and one retry; a 429 passes through
//! with its `Retry-After`; an upstream timeout is a 504 with a JSON error.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderName, Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use futures_util::TryStreamExt as _;

use crate::error::AppError;
use crate::state::{AppState, Session};

/// Request headers never forwarded.
const DROP_REQUEST: &[&str] = &[
    "host",
    "cookie",
    "authorization",
    "content-length",
    "origin",
    "referer",
    "x-requested-with",
    "x-csrf",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped both ways.
const HOP_BY_HOP: &[&str] = &[
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

/// Checks the raw (still percent-encoded) path after `/api/`; returns it if allowed.
pub fn checked_path<'a>(raw: &'a str, allowed: &[String]) -> Result<&'a str, AppError> {
    let lower = raw.to_ascii_lowercase();
    let bad = |why: &str| AppError::BadRequest(format!("path refused: {why}"));
    if ["%2f", "%5c", "%2e", "%00"]
        .iter()
        .any(|p| lower.contains(p))
    {
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

/// The proxy handler.
pub async fn proxy(
    State(st): State<AppState>,
    session: Session,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response<Body>, AppError> {
    let started = Instant::now();
    let raw = uri.path().strip_prefix("/api/").unwrap_or("");
    let path = checked_path(raw, &st.config.allowed_prefixes)?;
    let target = match uri.query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    let url = st.tokens.provider().api_url(&target)?;
    let body = axum::body::to_bytes(body, st.config.max_body)
        .await
        .map_err(|_| AppError::TooLarge)?;
    let listed = connection_listed(&headers);
    let mut forward = reqwest::header::HeaderMap::new();
    for (k, v) in &headers {
        let name = k.as_str();
        if DROP_REQUEST.contains(&name)
            || HOP_BY_HOP.contains(&name)
            || listed.iter().any(|l| l == name)
        {
            continue;
        }
        forward.append(k.clone(), v.clone());
    }
    let account = &session.record.account;
    let mut token = st.tokens.access_token(account).await?;
    let mut retried = false;
    let upstream = loop {
        let mut req = st
            .upstream
            .request(method.clone(), url.clone())
            .headers(forward.clone())
            .bearer_auth(token.expose());
        if !body.is_empty() {
            req = req.body(body.clone());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                AppError::UpstreamTimeout
            } else {
                AppError::Spotoken(spotoken::http::network_error(e))
            }
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED && !retried {
            retried = true;
            token = st.tokens.refresh_after_rejection(account, &token).await?;
            continue;
        }
        break resp;
    };
    let status = upstream.status();
    let mut out = Response::builder().status(status);
    let upstream_listed = connection_listed(upstream.headers());
    if let Some(h) = out.headers_mut() {
        for (k, v) in upstream.headers() {
            let name = k.as_str();
            if HOP_BY_HOP.contains(&name)
                || name == "set-cookie"
                || name == "content-length"
                || upstream_listed.iter().any(|l| l == name)
            {
                continue;
            }
            h.append(HeaderName::from(k), v.clone());
        }
    }
    st.metrics.proxied(status.as_u16(), started.elapsed());
    let stream = upstream.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream))
        .map_err(|e| AppError::Spotoken(spotoken::Error::Internal(e.to_string())))
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
