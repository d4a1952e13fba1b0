//! One structured log line per request, with a request id.
//!
//! The id is taken from an incoming `X-Request-Id` when it is short and plain
//! (so a front proxy's id carries through), otherwise generated, and returned
//! in the response, and in the body of every error this server answers
//! (`request_id`). The line carries method, path (never the query string,
//! which could carry a code), status and latency; no headers, so no cookie or
//! token can reach the log.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore as _;
use tracing::Instrument as _;

/// The header carrying the id.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The incoming id when it is short and plain, else a new one: 16 hex digits.
fn request_id<B>(req: &Request<B>) -> HeaderValue {
    if let Some(v) = req.headers().get(REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    {
        return v.clone();
    }
    let z = rand::rng().next_u64();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 16];
    for (i, d) in id.iter_mut().enumerate() {
        *d = HEX[((z >> (60 - 4 * i)) & 15) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's id, for handlers that show it (an error page the user can
/// quote to the operator, who finds the log line by it).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

/// The middleware.
pub(crate) async fn log_requests(req: Request, next: Next) -> Response {
    traced(req, |mut req, id| {
        req.extensions_mut()
            .insert(RequestId(id.to_str().unwrap_or("-").to_owned()));
        next.run(req)
    })
    .await
}

/// Runs `inner` on `req` inside the request's span, logs the outcome and sets
/// `X-Request-Id` on the response (the middleware, and the proxy's direct path
/// in [`crate::App`]).
pub(crate) async fn traced<B, F, Fut>(req: Request<B>, inner: F) -> Response
where
    F: FnOnce(Request<B>, &HeaderValue) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let id = request_id(&req);
    // Field values are only evaluated when the span is enabled.
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or("-"),
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = Instant::now();
    let mut resp = inner(req, &id).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    if let Some(crate::error::ErrorBody(mut body)) = resp.extensions_mut().remove() {
        body["request_id"] = serde_json::Value::from(id.to_str().unwrap_or("-"));
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        resp = Response::from_parts(parts, axum::body::Body::from(body.to_string()));
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "handled"
        );
    });
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}
