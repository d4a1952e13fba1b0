//! One structured log line per request, with a request id.
//!
//! The id is taken from an incoming `X-Request-Id` when it is short and plain
//! (so a front proxy's id carries through), otherwise generated, and returned
//! in the response. The line carries method, path (never the query string,
//! which could carry a code), status and latency; no headers, so no cookie or
//! token can reach the log.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore as _;
use tracing::Instrument as _;

/// The header carrying the id.
pub const REQUEST_ID: &str = "x-request-id";

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut b = [0u8; 8];
            rand::rng().fill_bytes(&mut b);
            let mut id = String::with_capacity(16);
            for x in b {
                id.push(char::from(HEX[usize::from(x >> 4)]));
                id.push(char::from(HEX[usize::from(x & 15)]));
            }
            id
        })
}

/// The middleware.
pub async fn log_requests(req: Request, next: Next) -> Response {
    traced(req, |req| next.run(req)).await
}

/// Runs `inner` on `req` inside the request's span, logs the outcome and sets
/// `X-Request-Id` on the response (the middleware, and the proxy's direct path
/// in [`crate::App`]).
pub async fn traced<F, Fut>(req: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let id = request_id(&req);
    // Field values are only evaluated when the span is enabled.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = Instant::now();
    let mut resp = inner(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "handled"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}
