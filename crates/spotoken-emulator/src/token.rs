//! `POST /api/token`: code exchange, refresh and client credentials, with
//! Spotify's error bodies.
//!
//! Order of checks: injected failure, rate limit, client authentication, then the
//! grant. Every app has a secret, sent as HTTP Basic or as `client_secret` in
//! the body; PKCE flows send only `client_id`. No credentials at all is
//! `{"error":"invalid_client"}` with no description. Every request is counted by grant and outcome, and refreshes in flight
//! are tracked per user so tests can see a double refresh as a peak of 2.

use std::collections::HashMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::model::{Endpoint, RefreshState, Rotation, World};
use crate::serve::DropConnection;
use crate::{Shared, json_response};

/// The token endpoint.
pub(crate) async fn token(
    State(shared): State<Shared>,
    hangup: Option<Extension<DropConnection>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let grant_key = if grant.is_empty() {
        "missing".to_owned()
    } else {
        grant.clone()
    };

    let (failure, lose_answer, latency, limited) = {
        let mut w = shared.lock();
        w.count_token_arrival();
        let mut failure = w.take_failure(Endpoint::Token, Some(&grant), "/api/token");
        // The grant a refresh is for: for the Retry-After bookkeeping.
        let refresh_grant = (grant == "refresh_token")
            .then(|| form.get("refresh_token").and_then(|t| w.refresh.get(t)))
            .flatten()
            .map(|r| r.grant);
        if let Some(g) = refresh_grant {
            w.note_refresh_timing(g);
        }
        if failure.is_none() {
            failure = w.chaos_failure(Endpoint::Token);
            if let (Some(f), Some(g)) = (&failure, refresh_grant)
                && f.status == 429
                && let Some(secs) = f.headers.get("Retry-After").and_then(|v| v.parse().ok())
            {
                w.note_retry_after(g, secs);
            }
        }
        // A failure after processing lets the request through and loses the answer.
        let lose_answer = failure.take_if(|f| f.drop_connection && f.after_processing);
        if failure.is_some() {
            w.count_token(&grant_key, "injected");
        }
        let client = basic_client(&headers)
            .map(|(id, _)| id)
            .or_else(|| form.get("client_id").cloned())
            .unwrap_or_default();
        let limited = if failure.is_none() {
            w.rate_limited(Endpoint::Token, &client)
        } else {
            None
        };
        if limited.is_some() {
            w.count_token(&grant_key, "rate_limited");
        }
        (failure, lose_answer, w.settings.token_latency_ms, limited)
    };
    if let Some(f) = failure {
        return crate::injected(f, hangup.as_ref().map(|e| &e.0)).await;
    }
    if let Some(hit) = limited {
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": "rate_limit_exceeded", "error_description": "Too many requests"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, hit.retry_after_secs.into());
        return r;
    }

    // Track refreshes in flight per user across the emulated latency.
    let account = (grant == "refresh_token").then(|| InFlight::start(&shared, &form));
    crate::latency(latency).await;
    std::mem::drop(account);

    let response = answer(&shared, &headers, &form, &grant, &grant_key);
    if let (Some(_), Some(hangup)) = (lose_answer, &hangup) {
        hangup.0.fire().await;
    }
    response
}

/// Handles the grant and builds the answer.
fn answer(
    shared: &Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    grant: &str,
    grant_key: &str,
) -> Response<Body> {
    let mut w = shared.lock();
    let outcome = match client_auth(&w, headers, form) {
        Err(e) => Err(e),
        Ok(auth) => match grant {
            "authorization_code" => exchange_code(&mut w, &auth, form),
            "refresh_token" => refresh(&mut w, &auth, form),
            "client_credentials" => client_credentials(&mut w, &auth),
            spotoken_core::device::DEVICE_CODE_GRANT => crate::device::poll(&mut w, &auth.id, form)
                .map_err(|(error, description)| TokenError::new(error, description)),
            "" => Err(TokenError::new(
                "unsupported_grant_type",
                "grant_type parameter is missing",
            )),
            _ => Err(TokenError::new(
                "unsupported_grant_type",
                "grant_type parameter is invalid: must be authorization_code, refresh_token or client_credentials",
            )),
        },
    };
    match outcome {
        Ok(body) => {
            w.count_token(grant_key, "ok");
            let mut r = json_response(StatusCode::OK, &body);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => {
            w.count_token(grant_key, e.error);
            let body = match &e.description {
                Some(d) => json!({"error": e.error, "error_description": d}),
                None => json!({ "error": e.error }),
            };
            json_response(StatusCode::BAD_REQUEST, &body)
        }
    }
}

impl InFlight {
    /// Counts a refresh in flight for the user the refresh token belongs to
    /// (`unknown` if none), and raises that user's peak.
    fn start(shared: &Shared, form: &HashMap<String, String>) -> Self {
        let mut w = shared.lock();
        let user = form
            .get("refresh_token")
            .and_then(|t| w.refresh.get(t))
            .and_then(|r| w.grants.get(&r.grant))
            .map_or_else(|| "unknown".to_owned(), |g| g.user.clone());
        let n = w.in_flight_refreshes.entry(user.clone()).or_default();
        *n += 1;
        let now = *n;
        let peak = w
            .counters
            .peak_concurrent_refreshes
            .entry(user.clone())
            .or_default();
        *peak = (*peak).max(now);
        InFlight {
            shared: shared.clone(),
            user,
        }
    }
}

struct InFlight {
    shared: Shared,
    user: String,
}

impl Drop for InFlight {
    // Also runs if the client hangs up mid-latency, so counts never leak.
    fn drop(&mut self) {
        let mut w = self.shared.lock();
        if let Some(n) = w.in_flight_refreshes.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
    }
}

struct TokenError {
    error: &'static str,
    description: Option<String>,
}

impl TokenError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: Some(description.into()),
        }
    }

    /// `{"error":"invalid_client"}` and nothing else: no credentials, or no
    /// secret where the flow needs one.
    fn no_credentials() -> Self {
        Self {
            error: "invalid_client",
            description: None,
        }
    }
}

/// How the client authenticated.
struct ClientAuth {
    id: String,
    /// True when the secret was presented (HTTP Basic or the body).
    with_secret: bool,
}

fn basic_client(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn client_auth(
    w: &World,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<ClientAuth, TokenError> {
    let basic = headers.get(header::AUTHORIZATION).is_some();
    let (id, secret) = match basic_client(headers) {
        Some((id, secret)) => (id, Some(secret)),
        // A header that is not `Basic base64(id:secret)`.
        None if basic => return Err(TokenError::no_credentials()),
        None => match form.get("client_id") {
            Some(id) => (id.clone(), form.get("client_secret").cloned()),
            None => return Err(TokenError::no_credentials()),
        },
    };
    let client = w
        .client(&id)
        .ok_or_else(|| TokenError::new("invalid_client", "Invalid client"))?;
    match secret {
        Some(s) if s == client.secret => Ok(ClientAuth {
            id,
            with_secret: true,
        }),
        Some(_) => Err(TokenError::new("invalid_client", "Invalid client secret")),
        None => Ok(ClientAuth {
            id,
            with_secret: false,
        }),
    }
}

/// RFC 7636: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `client_credentials`: an app token (no user, no refresh token, no scope);
/// the secret is required.
fn client_credentials(w: &mut World, auth: &ClientAuth) -> Result<serde_json::Value, TokenError> {
    if !auth.with_secret {
        return Err(TokenError::no_credentials());
    }
    let access = w.issue_app_access(&auth.id);
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": w.settings.access_token_lifetime_secs,
    }))
}

fn exchange_code(
    w: &mut World,
    auth: &ClientAuth,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, TokenError> {
    let code = form
        .get("code")
        .ok_or_else(|| TokenError::new("invalid_request", "code must be supplied"))?;
    let now = w.now_ms();
    let lifetime_ms = (w.settings.code_lifetime_secs as i64) * 1000;
    let rec = w
        .codes
        .get_mut(code)
        .ok_or_else(|| TokenError::new("invalid_grant", "Invalid authorization code"))?;
    if rec.used || rec.client_id != auth.id {
        return Err(TokenError::new(
            "invalid_grant",
            "Invalid authorization code",
        ));
    }
    if now - rec.issued_at_ms > lifetime_ms {
        return Err(TokenError::new(
            "invalid_grant",
            "Authorization code expired",
        ));
    }
    if form.get("redirect_uri") != Some(&rec.redirect_uri) {
        return Err(TokenError::new("invalid_grant", "Invalid redirect URI"));
    }
    match (&rec.challenge, form.get("code_verifier")) {
        (Some(_), Some(verifier)) if !valid_verifier(verifier) => {
            return Err(TokenError::new(
                "invalid_request",
                "code_verifier must be 43 to 128 characters of A-Z, a-z, 0-9, '-', '.', '_' and '~'",
            ));
        }
        (Some(challenge), Some(verifier)) => {
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if computed != *challenge {
                return Err(TokenError::new(
                    "invalid_grant",
                    "code_verifier was incorrect",
                ));
            }
        }
        (Some(_), None) => {
            return Err(TokenError::new("invalid_request", "code_verifier required"));
        }
        (None, _) if !auth.with_secret => {
            return Err(TokenError::no_credentials());
        }
        (None, _) => {}
    }
    rec.used = true;
    let (user, scopes, pkce) = (
        rec.user.clone(),
        rec.scopes.clone(),
        rec.challenge.is_some(),
    );
    Ok(new_grant_answer(w, &auth.id, &user, scopes, pkce))
}

/// Starts a grant and answers with its first tokens (code exchange, device flow).
pub(crate) fn new_grant_answer(
    w: &mut World,
    client_id: &str,
    user: &str,
    scopes: spotoken_core::scope::Scopes,
    pkce: bool,
) -> serde_json::Value {
    let (_, access, refresh) = w.new_grant(client_id, user, scopes.clone(), pkce);
    json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": w.settings.access_token_lifetime_secs,
        "refresh_token": refresh,
        "scope": scopes.to_wire(),
    })
}

fn refresh(
    w: &mut World,
    auth: &ClientAuth,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, TokenError> {
    let token = form
        .get("refresh_token")
        .ok_or_else(|| TokenError::new("invalid_request", "refresh_token must be supplied"))?
        .clone();
    let key = crate::refresh_token_key(&token);
    if let Some(n) = w.counters.refresh_token_uses.get_mut(&key) {
        *n += 1;
    } else if w.refresh.contains_key(&token) {
        w.counters.refresh_token_uses.insert(key, 1);
    }
    let rec = w
        .refresh
        .get(&token)
        .cloned()
        .ok_or_else(|| TokenError::new("invalid_grant", "Invalid refresh token"))?;
    let grant = w
        .grants
        .get(&rec.grant)
        .cloned()
        .ok_or_else(|| TokenError::new("invalid_grant", "Invalid refresh token"))?;
    if grant.client_id != auth.id {
        return Err(TokenError::new("invalid_grant", "Invalid refresh token"));
    }
    if !grant.pkce && !auth.with_secret {
        return Err(TokenError::no_credentials());
    }
    if grant.revoked {
        return Err(TokenError::new("invalid_grant", "Refresh token revoked"));
    }
    let now = w.now_ms();
    if now - grant.authorized_at_ms > (w.settings.refresh_token_lifetime_secs as i64) * 1000 {
        return Err(TokenError::new("invalid_grant", "Refresh token expired"));
    }
    let rotation = w.settings.rotation;
    let grace_ms = (w.settings.grace_secs as i64) * 1000;
    let new_refresh = match rec.state {
        RefreshState::Rotated { at_ms, successor } => {
            if now - at_ms < grace_ms {
                // Within grace: the old token still works and the family's
                // current token is handed back again.
                Some(successor)
            } else if rotation == Rotation::RotateReuseDetection {
                w.revoke_grant(rec.grant);
                return Err(TokenError::new("invalid_grant", "Refresh token revoked"));
            } else {
                return Err(TokenError::new("invalid_grant", "Invalid refresh token"));
            }
        }
        RefreshState::Active if rotation == Rotation::None => None,
        RefreshState::Active => {
            let next = w.issue_refresh(rec.grant);
            if let Some(r) = w.refresh.get_mut(&token) {
                r.state = RefreshState::Rotated {
                    at_ms: now,
                    successor: next.clone(),
                };
            }
            Some(next)
        }
    };
    let access = w.issue_access(rec.grant);
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": w.settings.access_token_lifetime_secs,
        "scope": grant.scopes.to_wire(),
    });
    if let Some(r) = new_refresh {
        body["refresh_token"] = json!(r);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_are_43_to_128_unreserved_characters() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"A-._~9".repeat(22)[..128]));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(50))));
        assert!(!valid_verifier("abc"));
    }
}
