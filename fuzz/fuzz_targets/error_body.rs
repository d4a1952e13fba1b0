//! Error answers from the provider (and the emulator that plays it): token
//! endpoint errors (`{"error":…,"error_description":…}`), Web API errors
//! (`{"error":{"status":…,"message":…,"reason":…}}`), HTML where JSON belongs,
//! or any bytes, with any status and `Retry-After`. Each goes through the
//! functions production classifies it with: the token answer parser, the
//! device poll, the Web API classifier and error message, and the server's
//! JSON error answer.
//!
//! Beyond "no panic": every classification is one of the kinds that function
//! documents; the wait asked for is kept; a temporary failure never ends a
//! device login; and no message, `Debug` form or server answer carries a
//! secret-shaped run, in particular not the real-looking refresh token
//! planted in the provider's text.
#![no_main]
use arbitrary::Arbitrary;
use axum::response::IntoResponse as _;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use spotoken::api::classify_api_error;
use spotoken::core::device::{PollAnswer, classify_poll};
use spotoken::core::protocol::{
    HttpAnswer, MAX_EXPIRES_IN, classify_token_error, parse_token_answer,
};
use spotoken::core::redact;
use spotoken::{ApiResponse, Error, ErrorKind, Scopes};
use spotoken_server::fuzzing::{AppError, ErrorBody};
use std::time::Duration;

/// A refresh token as Spotify issues them; never to be printed.
const PLANTED: &str = "AQDxJ3k9_Lq-7rVbN0pZ2sWcT8yHfGmUe4iKoA";

#[derive(Arbitrary, Debug)]
enum Body<'a> {
    Raw(&'a [u8]),
    Html(&'a str),
    TokenError {
        error: Option<&'a str>,
        description: Option<&'a str>,
        extra: Option<(&'a str, &'a str)>,
    },
    ApiError {
        status: Option<i64>,
        message: Option<&'a str>,
        reason: Option<&'a str>,
    },
    Known(u8, Option<&'a str>),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    status: u16,
    retry_after: Option<u32>,
    /// Where the planted token goes: prefix or suffix of one of the texts.
    plant: u8,
    body: Body<'a>,
}

/// `s`, with the planted token before or after it when `plant` says so.
fn planted(s: &str, plant: u8, slot: u8) -> String {
    match (plant % 8 == slot, plant & 0x80 != 0) {
        (true, true) => format!("{PLANTED}{s}"),
        (true, false) => format!("{s} {PLANTED}"),
        (false, _) => s.to_owned(),
    }
}

const KNOWN: [&str; 12] = [
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "slow_down",
    "temporarily_unavailable",
    "server_error",
    "authorization_pending",
    "access_denied",
    "expired_token",
    "invalid_request",
    "PREMIUM_REQUIRED",
    "Insufficient client scope",
];

fn render(body: &Body<'_>, plant: u8) -> Vec<u8> {
    let opt = |s: &Option<&str>, slot| s.map(|s| planted(s, plant, slot));
    match body {
        Body::Raw(b) => {
            let mut v = b.to_vec();
            if plant.is_multiple_of(8) {
                v.extend_from_slice(PLANTED.as_bytes());
            }
            v
        }
        Body::Html(s) => format!(
            "<html><body><h1>{}</h1></body></html>",
            planted(s, plant, 1)
        )
        .into_bytes(),
        Body::TokenError {
            error,
            description,
            extra,
        } => {
            let mut v = json!({});
            if let Some(e) = opt(error, 2) {
                v["error"] = json!(e);
            }
            if let Some(d) = opt(description, 3) {
                v["error_description"] = json!(d);
            }
            if let Some((k, val)) = extra {
                v[*k] = json!(planted(val, plant, 4));
            }
            v.to_string().into_bytes()
        }
        Body::ApiError {
            status,
            message,
            reason,
        } => {
            let mut e = json!({});
            if let Some(s) = status {
                e["status"] = json!(s);
            }
            if let Some(m) = opt(message, 5) {
                e["message"] = json!(m);
            }
            if let Some(r) = opt(reason, 6) {
                e["reason"] = json!(r);
            }
            json!({ "error": e }).to_string().into_bytes()
        }
        Body::Known(i, text) => {
            let code = KNOWN[usize::from(*i) % KNOWN.len()];
            let text = opt(text, 7).unwrap_or_default();
            if i & 0x80 == 0 {
                json!({"error": code, "error_description": text})
                    .to_string()
                    .into_bytes()
            } else {
                json!({"error": {"status": 403, "message": code, "reason": code}, "x": text})
                    .to_string()
                    .into_bytes()
            }
        }
    }
}

/// No secret in anything said about `e`: its message and `Debug` form hold no
/// token-shaped run (they are what redaction leaves), and never the planted token.
fn clean(e: &Error, what: &str) {
    let shown = e.to_string();
    let debug = format!("{e:?}");
    assert!(
        !shown.contains(PLANTED) && !debug.contains(PLANTED),
        "{what} leaks: {debug}"
    );
    assert_eq!(redact(&shown), shown, "{what} leaks a token-shaped run");
}

/// The server's JSON answer for `e`: the status its kind maps to, and no
/// secret in the body.
fn served(e: Error) {
    let status = e.kind().http_status();
    let response = AppError::from(e).into_response();
    assert_eq!(response.status().as_u16(), status);
    let body = response
        .extensions()
        .get::<ErrorBody>()
        .expect("error body")
        .0
        .to_string();
    assert!(!body.contains(PLANTED), "server answer leaks: {body}");
    let message = response
        .extensions()
        .get::<ErrorBody>()
        .and_then(|b| b.0.get("message").cloned());
    if let Some(Value::String(m)) = message {
        assert_eq!(redact(&m), m, "server answer leaks a token-shaped run");
    }
}

fuzz_target!(|input: Input<'_>| {
    let body = render(&input.body, input.plant);
    let retry_after = input.retry_after.map(|s| Duration::from_secs(u64::from(s)));
    let answer = HttpAnswer {
        status: input.status,
        retry_after,
        body: &body,
    };
    let success = (200..300).contains(&input.status);

    // The token endpoint: the refresh, the code exchange and the device poll.
    match parse_token_answer(answer, "acct") {
        Ok(t) => {
            assert!(success);
            assert!(!t.access_token.expose().is_empty());
            assert!(t.expires_in > Duration::ZERO && t.expires_in <= MAX_EXPIRES_IN);
        }
        Err(e) => {
            clean(&e, "token answer");
            if success {
                assert_eq!(e.kind(), ErrorKind::Protocol, "{e:?}");
            }
        }
    }
    let e = classify_token_error(answer, "acct");
    clean(&e, "token error");
    assert!(
        matches!(
            e.kind(),
            ErrorKind::AuthorizationNeeded
                | ErrorKind::Configuration
                | ErrorKind::Temporary
                | ErrorKind::Protocol
        ),
        "{e:?}"
    );
    if e.kind() == ErrorKind::Temporary {
        assert_eq!(e.retry_after(), retry_after, "the wait asked for is kept");
    }
    if input.status >= 500
        && !matches!(
            e.kind(),
            ErrorKind::AuthorizationNeeded | ErrorKind::Configuration
        )
    {
        assert_eq!(e.kind(), ErrorKind::Temporary, "a 5xx is temporary: {e:?}");
    }
    served(e);
    match classify_poll(answer, "acct") {
        PollAnswer::Temporary(e) => {
            clean(&e, "device poll");
            assert_eq!(e.kind(), ErrorKind::Temporary);
        }
        PollAnswer::Failed(e) => {
            clean(&e, "device poll");
            assert_ne!(
                e.kind(),
                ErrorKind::Temporary,
                "a temporary failure ended the login: {e:?}"
            );
        }
        PollAnswer::Tokens(_) => assert!(success),
        PollAnswer::Pending | PollAnswer::SlowDown | PollAnswer::Denied | PollAnswer::Expired => {
            assert!(!success);
        }
    }

    // The Web API.
    let api = spotoken::api::Answer {
        status: input.status,
        headers: Default::default(),
        retry_after,
        body: bytes::Bytes::from(body.clone()),
    };
    let granted = Scopes::parse("user-read-private");
    for (method, path) in [("GET", "/v1/me/player"), ("PUT", "/v1/me/tracks?ids=1")] {
        let e = classify_api_error(&api, method, path, &granted);
        clean(&e, "Web API error");
        match input.status {
            401 => assert_eq!(e.kind(), ErrorKind::AuthorizationNeeded),
            403 => assert!(matches!(
                e.kind(),
                ErrorKind::Configuration | ErrorKind::InsufficientScope | ErrorKind::Protocol
            )),
            429 => {
                assert_eq!(e.kind(), ErrorKind::Temporary);
                assert_eq!(e.retry_after(), retry_after);
            }
            _ => assert_eq!(e.kind(), ErrorKind::Protocol),
        }
        served(e);
    }
    let response = ApiResponse {
        status: input.status,
        headers: Default::default(),
        body: api.body,
    };
    if let Some(m) = response.error_message() {
        assert!(!m.contains(PLANTED));
        assert_eq!(redact(&m), m);
    }
});
