//! Shared state, and the extractor for "the logged-in session".
//!
//! Sessions are read through a short-lived in-memory cache (a few seconds, the
//! `session_cache_ttl`), and tokens through the engine's cache, so a proxied
//! request costs no database round trip; the store stays the source of truth
//! across instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use spotoken::Tokens;
use spotoken::store::{SessionRecord, SessionStore, sessions::hash, unix_now};

use crate::config::ServerConfig;
use crate::cookies;
use crate::error::AppError;
use crate::metrics::Metrics;

/// Session id (the cookie's value) → (session, when it was read from the
/// store). Keyed by the id itself, so a cached request computes no SHA-256;
/// the store only ever sees the id's hash.
type SessionCache = HashMap<Box<str>, (Arc<SessionRecord>, Instant)>;

/// Everything a handler needs, behind one `Arc`: axum clones the state for
/// every extractor of every request, so a clone is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state's contents.
pub struct Shared {
    /// The token engine.
    pub tokens: Tokens,
    /// Sessions and pending logins.
    pub sessions: Arc<dyn SessionStore>,
    /// Settings.
    pub config: Arc<ServerConfig>,
    /// The upstream API (each thread pools its own connections).
    pub upstream: crate::upstream::Upstream,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    cache: Mutex<SessionCache>,
}

impl AppState {
    /// Builds the state.
    pub fn new(
        tokens: Tokens,
        sessions: Arc<dyn SessionStore>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, spotoken::Error> {
        let upstream = crate::upstream::Upstream::new(&tokens.provider().api_base)?;
        Ok(Self(Arc::new(Shared {
            tokens,
            sessions,
            config: Arc::new(config),
            upstream,
            metrics,
            cache: Mutex::new(HashMap::new()),
        })))
    }
}

impl Shared {
    /// The session a cookie value names, through the cache.
    pub async fn session_for(
        &self,
        cookie_value: &str,
    ) -> Result<Option<Arc<SessionRecord>>, AppError> {
        let now = unix_now();
        let ttl = self.config.session_cache_ttl;
        if let Some((s, at)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(cookie_value)
            && at.elapsed() < ttl
            && s.expires_at > now
        {
            return Ok(Some(s.clone()));
        }
        let found = self
            .sessions
            .get_session(&hash(cookie_value), now)
            .await?
            .map(Arc::new);
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &found {
            Some(s) => {
                if cache.len() > 100_000 {
                    cache.retain(|_, (s, at)| at.elapsed() < ttl && s.expires_at > now);
                }
                cache.insert(cookie_value.into(), (s.clone(), Instant::now()));
            }
            None => {
                cache.remove(cookie_value);
            }
        }
        Ok(found)
    }

    /// Forgets a cached session, by the cookie's value (after logout on this
    /// instance).
    pub fn forget(&self, cookie_value: &str) {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(cookie_value);
    }
}

/// The logged-in session of a request (401 if there is none).
pub struct Session {
    /// The record (shared with the session cache).
    pub record: Arc<SessionRecord>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value =
            cookies::get(&parts.headers, cookies::SESSION).ok_or(AppError::Unauthenticated)?;
        let record = state
            .session_for(value)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        Ok(Session { record })
    }
}

/// CSRF check for state-changing routes and `/auth/token`: a custom header
/// (`X-Requested-With` or `X-CSRF`, any non-empty value), which a cross-site
/// form cannot send, and when the browser sends `Origin`, our own origin.
pub fn check_csrf(parts: &axum::http::HeaderMap, config: &ServerConfig) -> Result<(), AppError> {
    let has_header = ["x-requested-with", "x-csrf"]
        .iter()
        .any(|h| parts.get(*h).is_some_and(|v| !v.as_bytes().is_empty()));
    if !has_header {
        return Err(AppError::Forbidden(
            "missing X-Requested-With or X-CSRF header",
        ));
    }
    if let Some(origin) = parts.get(axum::http::header::ORIGIN)
        && origin.to_str().ok() != Some(config.origin().as_str())
    {
        return Err(AppError::Forbidden("cross-origin request refused"));
    }
    Ok(())
}
