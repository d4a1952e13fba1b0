//! Errors as HTTP answers: JSON for API routes, with the status from the error
//! taxonomy; internals are logged, not shown.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use spotoken::{Error, ErrorKind};

/// What a handler fails with.
#[derive(Debug)]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub enum AppError {
    /// No session cookie: this browser never logged in (or logged out here).
    Unauthenticated,
    /// A session cookie that names no live session: it timed out (idle or
    /// absolute), or was ended by a logout elsewhere.
    SessionExpired,
    /// The session's account needs a new login.
    Reauthorize(String),
    /// CSRF checks failed.
    Forbidden(&'static str),
    /// The request itself is wrong.
    BadRequest(String),
    /// Nothing here by that name.
    NotFound,
    /// The route exists, not for this method.
    MethodNotAllowed,
    /// Too large.
    TooLarge,
    /// The upstream API timed out.
    UpstreamTimeout,
    /// The team's app server (`--app-upstream`) cannot be reached.
    AppUnavailable,
    /// A library error.
    Spotoken(Error),
}

/// Every error this server answers itself, as JSON, set aside on the
/// response so that the request log's middleware can add the request id
/// ([`crate::trace::traced`]), which the handler does not know.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub struct ErrorBody(pub serde_json::Value);

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        match &e {
            Error::AuthorizationNeeded { reason, .. } => AppError::Reauthorize(reason.to_string()),
            _ => AppError::Spotoken(e),
        }
    }
}

/// `{"error": code, "message": …, "login": …}`; `login` names where to log in
/// for the codes a new login cures, else null.
fn body(code: &str, message: impl Into<String>) -> serde_json::Value {
    let login =
        matches!(code, "unauthenticated" | "session_expired" | "reauthorize").then_some(LOGIN);
    json!({"error": code, "message": message.into(), "login": login})
}

const LOGIN: &str = "/auth/login";

/// The response for an error body: JSON, with the body set aside for the
/// request id (see [`ErrorBody`]).
pub(crate) fn respond(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, Json(body.clone())).into_response();
    r.extensions_mut().insert(ErrorBody(body));
    r
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AppError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                body("unauthenticated", "no session: log in first"),
            ),
            AppError::SessionExpired => {
                let mut r = respond(
                    StatusCode::UNAUTHORIZED,
                    body(
                        "session_expired",
                        "the session has ended (timed out or logged out elsewhere): log in again",
                    ),
                );
                // The cookie names nothing any more: the next answer is
                // `unauthenticated`.
                r.headers_mut().append(
                    axum::http::header::SET_COOKIE,
                    crate::cookies::clear(crate::cookies::SESSION),
                );
                return r;
            }
            AppError::Reauthorize(reason) => {
                (StatusCode::UNAUTHORIZED, body("reauthorize", reason))
            }
            AppError::Forbidden(why) => (StatusCode::FORBIDDEN, body("forbidden", why)),
            AppError::BadRequest(m) => (StatusCode::BAD_REQUEST, body("bad_request", m)),
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                body("not_found", "nothing here by that name"),
            ),
            AppError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                body("method_not_allowed", "this path does not take that method"),
            ),
            AppError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                body("too_large", "request body too large"),
            ),
            AppError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                body("upstream_timeout", "the Web API did not answer in time"),
            ),
            AppError::AppUnavailable => (
                StatusCode::BAD_GATEWAY,
                body("app_unavailable", "the app's server did not answer"),
            ),
            AppError::Spotoken(e) => {
                let status = StatusCode::from_u16(e.kind().http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let code = match (&e, e.retry_after()) {
                    (Error::RateLimited { .. }, _) | (Error::Temporary { .. }, Some(_)) => {
                        "rate_limited"
                    }
                    _ => kind_name(e.kind()),
                };
                let mut b = body(code, public_message(&e));
                if let Some(wait) = e.retry_after() {
                    b["retry_after"] = json!(wait.as_secs());
                }
                if let Error::InsufficientScope { missing, .. } = &e {
                    b["missing_scopes"] = json!(missing);
                }
                if matches!(e.kind(), ErrorKind::Internal | ErrorKind::Configuration) {
                    tracing::error!(error = %e, "request failed");
                }
                let mut r = respond(status, b);
                if let Some(wait) = e.retry_after()
                    && let Ok(v) = wait.as_secs().max(1).to_string().parse()
                {
                    r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
                }
                return r;
            }
        };
        respond(status, body)
    }
}

/// Every `error` code the server answers with, for the documentation's table (a
/// test checks that the README lists each).
pub const CODES: [&str; 16] = [
    "unauthenticated",
    "session_expired",
    "reauthorize",
    "forbidden",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "too_large",
    "upstream_timeout",
    "app_unavailable",
    "rate_limited",
    "temporary",
    "configuration",
    "insufficient_scope",
    "upstream_protocol",
    "internal",
];

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::AuthorizationNeeded => "reauthorize",
        ErrorKind::Temporary => "temporary",
        ErrorKind::Configuration => "configuration",
        ErrorKind::InsufficientScope => "insufficient_scope",
        ErrorKind::Protocol => "upstream_protocol",
        ErrorKind::Internal => "internal",
        // A kind a newer library adds is a bug here until it is named.
        _ => "internal",
    }
}

fn public_message(e: &Error) -> String {
    match e.kind() {
        // Internals stay in the log.
        ErrorKind::Internal | ErrorKind::Configuration => {
            "internal error; see the server log".into()
        }
        _ => e.to_string(),
    }
}
