//! `/auth/*`: login with PKCE kept server-side, the callback, logout, who is
//! logged in, and short-lived access tokens for the Web Playback SDK.
//!
//! A started login is stored (sealed) in the database under a hash of its
//! `state`, bound to the browser by a short-lived cookie, and used once: a
//! replayed callback, a wrong `state` or another browser's callback creates no
//! session. A successful login always creates a new session id (the old
//! session, if any, is deleted), and only the id's hash is stored.

use axum::extract::{OriginalUri, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json, Router, routing};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::json;
use spotoken::store::sessions::hash;
use spotoken::store::{PendingRecord, SessionRecord};

use crate::cookies;
use crate::error::AppError;
use crate::state::{AppState, ClientAddr, Session, check_csrf};
use crate::trace::RequestId;

/// The `/auth` routes.
/// Every answer here depends on the browser's cookies: none may be cached
/// or shared (see [`crate::proxy::private_to_session`]).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", routing::get(login))
        .route("/auth/callback", routing::get(callback))
        .route("/auth/logout", routing::post(logout))
        .route("/auth/session", routing::get(session))
        .route("/auth/token", routing::get(token))
        .layer(axum::middleware::map_response(private_answer))
}

async fn private_answer(mut r: Response) -> Response {
    crate::proxy::private_to_session(r.headers_mut());
    r
}

/// 32 random bytes, base64url: session ids, login bindings.
pub(crate) fn random_id() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn account_name() -> String {
    let mut b = [0u8; 18];
    rand::rng().fill_bytes(&mut b);
    format!("web-{}", URL_SAFE_NO_PAD.encode(b).replace(['-', '_'], "x"))
}

/// Whether `return_to` is a path on this site (and nothing that a browser
/// could read as another origin).
pub(crate) fn safe_return_to(r: &str) -> bool {
    r.starts_with('/')
        && !r.starts_with("//")
        && !r.starts_with("/\\")
        && !r.contains('\\')
        && !r.chars().any(|c| c.is_control() || c.is_whitespace())
        && url::Url::parse("https://x.invalid")
            .and_then(|b| b.join(r))
            .is_ok_and(|u| u.host_str() == Some("x.invalid"))
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif\"><h1 id=\"title\">{t}</h1><p id=\"message\">{m}</p>\
         <p><a href=\"/auth/login\">Log in again</a> · <a href=\"/\">Home</a></p></body></html>",
        t = esc(title),
        m = esc(message)
    );
    let mut r = (status, Html(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
}

async fn login(
    State(st): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let return_to = q.return_to.unwrap_or_else(|| "/".into());
    if !safe_return_to(&return_to) {
        return page(
            StatusCode::BAD_REQUEST,
            "Login refused",
            "return_to must be a path on this site.",
        );
    }
    // Each login writes a pending row: bounded before anything is written.
    if let Err(wait) = st.logins.admit(client.0, std::time::Instant::now()) {
        tracing::warn!(client = ?client.0, "too many logins started; refused");
        let mut r = page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many logins",
            "Too many logins were started from here. Wait a minute and try again.",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let pending = match st.tokens.begin_login(
        &st.config.redirect_uri,
        &st.config.scopes,
        Default::default(),
    ) {
        Ok(p) => p,
        Err(e) => return AppError::from(e).into_response(),
    };
    let binding = random_id();
    let sealed = match st.tokens.seal_pending(&pending) {
        Ok(s) => s,
        Err(e) => return AppError::from(e).into_response(),
    };
    let record = PendingRecord {
        state_hash: hash(pending.state()),
        binding_hash: hash(&binding),
        sealed,
        return_to,
        expires_at: st.tokens.now() + st.config.login_ttl.as_secs() as i64,
    };
    if let Err(e) = st.sessions.put_pending(record).await {
        return AppError::from(e).into_response();
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(pending.url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().append(
        header::SET_COOKIE,
        cookies::set(
            cookies::LOGIN,
            &binding,
            st.config.login_ttl.as_secs(),
            st.config.same_site,
        ),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn callback(
    State(st): State<AppState>,
    Extension(id): Extension<RequestId>,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(state) = q.get("state") else {
        return login_failed(StatusCode::BAD_REQUEST, "The callback has no state.");
    };
    let now = st.tokens.now();
    let pending = match bound_pending(&st, state, &headers, now).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let login = match st.tokens.open_pending(state, &pending.sealed) {
        Ok(p) => p,
        Err(e) => return AppError::from(e).into_response(),
    };
    let account = account_name();
    let callback_path = uri.to_string();
    let outcome = match st
        .tokens
        .complete_login(&account, &login, &callback_path)
        .await
    {
        Ok(o) => o,
        Err(e) => return not_completed(&e, &id),
    };
    let session = match new_session(&st, &headers, &outcome.account, now).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    tracing::info!(
        user = outcome.user_id.as_deref().unwrap_or("?"),
        "logged in"
    );
    logged_in(&st, &pending.return_to, &session)
}

/// The failed callback's page; the login cookie is cleared.
fn login_failed(status: StatusCode, msg: &str) -> Response {
    let mut r = page(status, "Login failed", msg);
    r.headers_mut()
        .append(header::SET_COOKIE, cookies::clear(cookies::LOGIN));
    r
}

/// The started login a callback's `state` names, taken (it is used once),
/// if this browser started it; else the page saying why not.
async fn bound_pending(
    st: &AppState,
    state: &str,
    headers: &HeaderMap,
    now: i64,
) -> Result<PendingRecord, Response> {
    let pending = match st.sessions.take_pending(&hash(state), now).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(login_failed(
                StatusCode::BAD_REQUEST,
                "This login has expired or was already used. Start again.",
            ));
        }
        Err(e) => return Err(AppError::from(e).into_response()),
    };
    let bound = cookies::get(headers, cookies::LOGIN).is_some_and(|b| {
        spotoken::core::callback::constant_time_eq(&hash(b), &pending.binding_hash)
    });
    if !bound {
        return Err(login_failed(
            StatusCode::BAD_REQUEST,
            "This login was started in another browser (or its cookie expired). Start again.",
        ));
    }
    Ok(pending)
}

/// The page for a code exchange that failed: a declined access says so;
/// anything else names the request id, the details staying in the log.
fn not_completed(e: &spotoken::Error, id: &RequestId) -> Response {
    let (status, msg) = match e {
        spotoken::Error::AuthorizationNeeded {
            reason: spotoken::ReauthReason::AccessDenied,
            ..
        } => (
            StatusCode::FORBIDDEN,
            "You declined access. Nothing was stored.".to_owned(),
        ),
        _ => {
            // The provider's words and our internals stay in the log.
            tracing::warn!(error = %e, "login failed");
            (
                StatusCode::BAD_GATEWAY,
                format!(
                    "The login could not be completed. Try again; if it keeps failing, \
                     give the site's operator this request id: {}.",
                    id.0
                ),
            )
        }
    };
    login_failed(status, &msg)
}

/// A new session for `account`, always with a new id (returned); the
/// browser's old session, if any, ends with its tokens.
async fn new_session(
    st: &AppState,
    headers: &HeaderMap,
    account: &str,
    now: i64,
) -> Result<String, AppError> {
    if let Some(old) = cookies::get(headers, cookies::SESSION) {
        let old_hash = hash(old);
        let deleted = st.sessions.delete_session(&old_hash).await;
        st.forget(old);
        if let Ok(Some(old)) = deleted {
            st.metrics.session_ended();
            let _ = st.tokens.logout(&old.account).await;
        }
    }
    let id = random_id();
    let record = SessionRecord {
        id_hash: hash(&id),
        account: account.to_owned(),
        created_at: now,
        expires_at: st
            .session_end(now, now)
            .unwrap_or(now + st.config.session_ttl.as_secs() as i64),
    };
    st.sessions.put_session(record).await?;
    st.metrics.session_started();
    Ok(id)
}

/// The redirect back into the app, setting the session cookie and
/// clearing the login's.
fn logged_in(st: &AppState, return_to: &str, session: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(return_to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().append(
        header::SET_COOKIE,
        cookies::set(
            cookies::SESSION,
            session,
            st.config.session_ttl.as_secs(),
            st.config.same_site,
        ),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, cookies::clear(cookies::LOGIN));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct LogoutQuery {
    everywhere: Option<String>,
}

async fn logout(
    State(st): State<AppState>,
    Query(q): Query<LogoutQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    check_csrf(&headers, &st.config)?;
    let everywhere = matches!(q.everywhere.as_deref(), Some("1" | "true" | "yes"));
    let mut remove_access_at = None;
    let mut ended = 0u64;
    if let Some(value) = cookies::get(&headers, cookies::SESSION) {
        let id_hash = hash(value);
        // Delete, then forget: a request arriving between the two would
        // otherwise cache the row again and be served after the logout.
        let deleted = st.sessions.delete_session(&id_hash).await;
        st.forget(value);
        if let Some(s) = deleted? {
            st.metrics.session_ended();
            ended += 1;
            let user = match everywhere {
                true => st.tokens.status(&s.account).await?.and_then(|a| a.user_id),
                false => None,
            };
            remove_access_at = st.tokens.logout(&s.account).await?.remove_access_at;
            if let Some(user) = user {
                ended += logout_everywhere(&st, &user).await?;
            }
        }
    }
    let mut r = Json(json!({
        "logged_out": true,
        "sessions_ended": ended,
        "remove_access_at": remove_access_at,
    }))
    .into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, cookies::clear(cookies::SESSION));
    Ok(r)
}

/// Ends every session of the Spotify user `user` (each login made an
/// account of its own) and deletes their tokens. Reads the token store's
/// account list once: an explicit, CSRF-checked request of a logged-in
/// user, never a scan an anonymous client can cause. Other instances drop
/// their cached sessions through the store's logout notices; this one drops
/// its own here.
async fn logout_everywhere(st: &AppState, user: &str) -> Result<u64, AppError> {
    let accounts: Vec<String> = st
        .tokens
        .store()
        .list()
        .await?
        .into_iter()
        .filter(|row| row.user_id.as_deref() == Some(user))
        .map(|row| row.account)
        .collect();
    let mut ended = 0;
    for account in &accounts {
        let n = st.sessions.delete_account_sessions(account).await?;
        for _ in 0..n {
            st.metrics.session_ended();
        }
        ended += n;
    }
    st.forget_all();
    for account in &accounts {
        if let Err(e) = st.tokens.logout(account).await {
            tracing::warn!(error = %e, "cannot delete the tokens of an ended session");
        }
    }
    tracing::info!(sessions = ended, "logged out everywhere");
    Ok(ended)
}

async fn session(State(st): State<AppState>, s: Session) -> Result<Response, AppError> {
    let status = st
        .tokens
        .status(&s.record.account)
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if status.needs_reauth() {
        return Err(AppError::Reauthorize(
            status
                .reauth_reason
                .unwrap_or_else(|| "the authorization has ended".into()),
        ));
    }
    let mut r = Json(json!({
        "logged_in": true,
        "user": {"id": status.user_id, "display_name": status.display_name},
        "scopes": status.scopes,
        "access_token_expires_at": status.access_expires_at,
        "session_expires_at": s.record.expires_at,
        "authorized_at": status.authorized_at,
        "refresh_token_seconds_left": status.refresh_token_seconds_left,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn token(
    State(st): State<AppState>,
    headers: HeaderMap,
    s: Session,
) -> Result<Response, AppError> {
    check_csrf(&headers, &st.config)?;
    let token = st.tokens.access_token(&s.record.account).await?;
    let expires_in = st
        .tokens
        .expires_in(&s.record.account)
        .await?
        .unwrap_or_default();
    let mut r = Json(json!({
        "access_token": token.expose(),
        "token_type": "Bearer",
        "expires_in": expires_in.as_secs(),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_must_stay_on_this_site() {
        for ok in ["/", "/app", "/app?x=1#y", "/a/b/c"] {
            assert!(safe_return_to(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "javascript:alert(1)",
            "",
            "/ok\r\nSet-Cookie: x=y",
            "evil.example",
        ] {
            assert!(!safe_return_to(bad), "{bad}");
        }
    }
}
