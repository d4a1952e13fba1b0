//! Errors as HTTP answers: JSON for API routes, with the status from the error
//! taxonomy; internals are logged, not shown.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use spotoken::{Error, ErrorKind};

/// What a handler fails with.
#[derive(Debug)]
pub enum AppError {
    /// No session cookie, or an unknown/ended session.
    Unauthenticated,
    /// The session's account needs a new login.
    Reauthorize(String),
    /// CSRF checks failed.
    Forbidden(&'static str),
    /// The request itself is wrong.
    BadRequest(String),
    /// Too large.
    TooLarge,
    /// The upstream API timed out.
    UpstreamTimeout,
    /// A library error.
    Spotoken(Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        match &e {
            Error::AuthorizationNeeded { reason, .. } => AppError::Reauthorize(reason.to_string()),
            _ => AppError::Spotoken(e),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let login = "/auth/login";
        let (status, body) = match self {
            AppError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthenticated", "message": "no session: log in first", "login": login}),
            ),
            AppError::Reauthorize(reason) => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "reauthorize", "message": reason, "login": login}),
            ),
            AppError::Forbidden(why) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "message": why}),
            ),
            AppError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": m}),
            ),
            AppError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "too_large", "message": "request body too large"}),
            ),
            AppError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": "upstream_timeout", "message": "the Web API did not answer in time"}),
            ),
            AppError::Spotoken(e) => {
                let status = StatusCode::from_u16(e.kind().http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut body = json!({"error": kind_name(e.kind()), "message": public_message(&e)});
                if let Some(wait) = e.retry_after() {
                    body["retry_after"] = json!(wait.as_secs());
                }
                if let Error::InsufficientScope { missing, .. } = &e {
                    body["missing_scopes"] = json!(missing);
                }
                if matches!(e.kind(), ErrorKind::Internal | ErrorKind::Configuration) {
                    tracing::error!(error = %e, "request failed");
                }
                let mut r = (status, Json(body)).into_response();
                if let Some(wait) = e.retry_after()
                    && let Ok(v) = wait.as_secs().to_string().parse()
                {
                    r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
                }
                return r;
            }
        };
        (status, Json(body)).into_response()
    }
}

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
