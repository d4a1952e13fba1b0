//! Beyond Spotify: a discovery document (RFC 8414), the device
//! authorization grant (RFC 8628) and token revocation (RFC 7009), so
//! spotoken's code paths for other providers run against the emulator too. Spotify publishes neither for
//! third-party apps; `docs/EMULATOR.md` marks them as extensions.
//!
//! Approval follows the consent setting: with automatic consent the user
//! "approves" when the first poll arrives (that poll still answers
//! `authorization_pending`, as a real server would before the user is done),
//! or refuses when `deny` is set. A poll sooner than the interval answers
//! `slow_down` and adds five seconds to that code's interval, as RFC 8628
//! §3.5 describes.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode, header};
use serde_json::json;
use spotoken_core::scope::Scopes;

use crate::model::{World, random_token};
use crate::{Shared, json_response};

/// Where the device authorization endpoint is.
pub(crate) const DEVICE_AUTHORIZATION_PATH: &str = "/oauth2/device_authorization";
/// Where the RFC 7009 revocation endpoint is.
pub(crate) const REVOCATION_PATH: &str = "/oauth2/revoke";
/// How long device codes live.
const DEVICE_CODE_LIFETIME_SECS: i64 = 600;

/// One device login.
#[derive(Debug, Clone)]
pub(crate) struct DeviceRec {
    client_id: String,
    scopes: Scopes,
    issued_at_ms: i64,
    interval_secs: u64,
    last_poll_ms: Option<i64>,
    approved: bool,
    used: bool,
}

fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// `GET /.well-known/oauth-authorization-server`: the emulator's endpoints,
/// its issuer being the origin it was reached at.
pub(crate) async fn metadata(State(shared): State<Shared>, headers: HeaderMap) -> Response<Body> {
    shared.lock().counters.discovery_requests += 1;
    let issuer = origin(&headers);
    let mut r = json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/api/token"),
            "device_authorization_endpoint": format!("{issuer}{DEVICE_AUTHORIZATION_PATH}"),
            "revocation_endpoint": format!("{issuer}{REVOCATION_PATH}"),
            "response_types_supported": ["code"],
            "grant_types_supported": [
                "authorization_code", "refresh_token", "client_credentials",
                "urn:ietf:params:oauth:grant-type:device_code"
            ],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        }),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// `POST /oauth2/device_authorization`: a device code and a user code.
pub(crate) async fn authorize(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut w = shared.lock();
    let Some(client) = form.get("client_id").and_then(|id| w.client(id)).cloned() else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client", "error_description": "Invalid client"}),
        );
    };
    let device_code = random_token("DC", 43);
    let user_code = random_token("", 8).to_ascii_uppercase();
    let issuer = origin(&headers);
    let interval_secs = w.settings.device_interval_secs;
    let issued_at_ms = w.now_ms();
    w.device_codes.insert(
        device_code.clone(),
        DeviceRec {
            client_id: client.id,
            scopes: Scopes::parse(form.get("scope").map_or("", String::as_str)),
            issued_at_ms,
            interval_secs,
            last_poll_ms: None,
            approved: false,
            used: false,
        },
    );
    json_response(
        StatusCode::OK,
        &json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": format!("{issuer}/device"),
            "verification_uri_complete": format!("{issuer}/device?user_code={user_code}"),
            "expires_in": DEVICE_CODE_LIFETIME_SECS,
            "interval": interval_secs,
        }),
    )
}

/// `POST /oauth2/revoke`: revokes a refresh token's whole grant (an access
/// token's too); 200 whatever the token was, as RFC 7009 §2.2 says.
pub(crate) async fn revoke(
    State(shared): State<Shared>,
    body: axum::body::Bytes,
) -> Response<Body> {
    let failure = shared
        .lock()
        .take_failure(crate::model::Endpoint::Any, None, REVOCATION_PATH);
    if let Some(f) = failure {
        return crate::injected(f, None).await;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut w = shared.lock();
    let token = form.get("token").map_or("", String::as_str);
    let grant = w
        .refresh
        .get(token)
        .map(|r| r.grant)
        .or_else(|| w.access.get(token).and_then(|a| a.grant));
    if let Some(g) = grant {
        w.revoke_grant(g);
    }
    w.count_token(
        "revocation",
        if grant.is_some() {
            "revoked"
        } else {
            "unknown"
        },
    );
    json_response(StatusCode::OK, &json!({}))
}

/// A device-code poll of the token endpoint: tokens, or the RFC 8628 error.
pub(crate) fn poll(
    w: &mut World,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, (&'static str, &'static str)> {
    let now = w.now_ms();
    let deny = w.settings.deny;
    let code = form
        .get("device_code")
        .ok_or(("invalid_request", "device_code must be supplied"))?;
    let rec = w
        .device_codes
        .get_mut(code)
        .filter(|r| r.client_id == client_id && !r.used)
        .ok_or(("invalid_grant", "Invalid device code"))?;
    if now - rec.issued_at_ms > DEVICE_CODE_LIFETIME_SECS * 1000 {
        return Err(("expired_token", "The device code has expired"));
    }
    let too_soon = rec
        .last_poll_ms
        .is_some_and(|last| now - last < i64::try_from(rec.interval_secs * 1000).unwrap_or(0));
    rec.last_poll_ms = Some(now);
    if too_soon {
        rec.interval_secs += 5;
        return Err(("slow_down", "Polling too fast"));
    }
    if deny {
        return Err(("access_denied", "The user denied the request"));
    }
    if !rec.approved {
        rec.approved = true;
        return Err(("authorization_pending", "The user has not approved yet"));
    }
    rec.used = true;
    let scopes = rec.scopes.clone();
    let user = w.settings.default_user.clone();
    Ok(crate::token::new_grant_answer(
        w, client_id, &user, scopes, true,
    ))
}
