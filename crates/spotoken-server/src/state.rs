//! Shared state, and the extractor for "the logged-in session".
//!
//! Sessions are read through a short-lived in-memory cache (a few seconds, the
//! `session_cache_ttl`), and tokens through the engine's cache, so a proxied
//! request costs no database round trip; the store stays the source of truth
//! across instances.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use thread_local::ThreadLocal;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use spotoken::Tokens;
use spotoken::store::{SessionRecord, SessionStore, sessions::hash};

use crate::config::ServerConfig;
use crate::cookies;
use crate::error::AppError;
use crate::metrics::Metrics;
use spotoken::core::sync::LockUnpoisoned as _;

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

/// The state's contents, for this crate's handlers (through `Deref`);
/// embedders read them through [`AppState`]'s accessors.
pub struct Shared {
    /// The token engine.
    pub(crate) tokens: Tokens,
    /// Sessions and pending logins.
    pub(crate) sessions: Arc<dyn SessionStore>,
    /// Settings.
    pub(crate) config: Arc<ServerConfig>,
    /// The upstream API (each thread pools its own connections).
    pub(crate) upstream: crate::upstream::Upstream,
    /// Counters for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Bounds on started logins.
    pub(crate) logins: crate::limits::LoginLimiter,
    /// What answers the paths that are not spotoken's own.
    pub(crate) front: Front,
    /// Accounts in use, for the background refresher.
    pub(crate) activity: crate::activity::Activity,
    /// The app's request budgets, shared with the other instances.
    pub(crate) budgets: crate::budget::Budgets,
    cache: Mutex<SessionCache>,
    identities: Mutex<HashMap<String, (Arc<Identity>, Instant)>>,
    /// The last token endpoint probe for `/readyz`: when, and whether it
    /// connected.
    probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
    views: ThreadLocal<RefCell<Views>>,
    /// Bumped at every logout on this instance: views made before are dropped.
    generation: AtomicU64,
}

/// What a proxied request needs from its session: the record and the
/// `Authorization` header for the account's current token. Each thread keeps
/// its own views of the sessions it served, valid until the session cache's
/// time-to-live, the token's freshness or the session's end, whichever comes
/// first, and all dropped at a logout on this instance. A proxied request
/// then takes no lock shared with the other event loops (each such lock moves
/// a cache line between cores), computes no SipHash and builds no header
/// (what the shared caches cost: docs/BENCHMARKS.md).
#[derive(Clone)]
pub(crate) struct View {
    /// The session.
    pub record: Arc<SessionRecord>,
    /// `Bearer …` for its account's token.
    pub bearer: HeaderValue,
    until: Instant,
}

/// One thread's views, keyed by cookie value. Only sessions found in the
/// store are inserted, so a fast hash is safe from flooding.
struct Views {
    generation: u64,
    map: HashMap<Box<str>, View, foldhash::fast::RandomState>,
    prune_at: usize,
}

impl Default for Views {
    fn default() -> Self {
        Self {
            generation: 0,
            map: HashMap::default(),
            prune_at: 1024,
        }
    }
}

/// `Authorization: Bearer …` for `token`.
pub(crate) fn bearer(token: &spotoken::core::secret::AccessToken) -> Result<HeaderValue, AppError> {
    let token = token.expose();
    let mut v = String::with_capacity("Bearer ".len() + token.len());
    v.push_str("Bearer ");
    v.push_str(token);
    let mut v = HeaderValue::try_from(v)
        .map_err(|_| spotoken::Error::Internal("token is not a header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

impl AppState {
    /// Forgets every session this process cached, on every thread (an
    /// embedder that deleted sessions in the store behind the server's back).
    pub fn forget_cached_sessions(&self) {
        self.0.forget_all();
    }

    /// The token engine.
    pub fn tokens(&self) -> &Tokens {
        &self.0.tokens
    }

    /// Sessions and pending logins.
    pub fn sessions(&self) -> &Arc<dyn SessionStore> {
        &self.0.sessions
    }

    /// Settings.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// Builds the state.
    pub fn new(
        tokens: Tokens,
        sessions: Arc<dyn SessionStore>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, spotoken::Error> {
        Self::with_budgets(tokens, sessions, config, metrics, Default::default())
    }

    /// Builds the state with the app's request budgets (the token budget is
    /// also `tokens`' own hook: see [`crate::Budgets`]).
    pub fn with_budgets(
        tokens: Tokens,
        sessions: Arc<dyn SessionStore>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
        budgets: crate::budget::Budgets,
    ) -> Result<Self, spotoken::Error> {
        let upstream = crate::upstream::Upstream::configured(
            tokens.api_base(),
            config.upstream_ca.as_deref(),
            config.upstream_http2,
        )?
        .stall_timeout(config.upstream_timeout);
        let front = match (&config.static_dir, &config.app_upstream) {
            (Some(_), Some(_)) => {
                return Err(spotoken::Error::Configuration(
                    "--static and --app-upstream exclude each other: serve the app's files \
                     or send its paths to its server"
                        .into(),
                ));
            }
            (Some(dir), None) => Front::Static(crate::static_files::StaticFiles::new(dir)?),
            (None, Some(url)) => Front::App(Box::new(crate::app_proxy::AppUpstream::new(
                url,
                config.upstream_timeout,
            )?)),
            (None, None) => Front::None,
        };
        Ok(Self(Arc::new(Shared {
            tokens,
            sessions,
            logins: crate::limits::LoginLimiter::new(config.login_limits),
            front,
            activity: crate::activity::Activity::default(),
            budgets,
            config: Arc::new(config),
            upstream,
            metrics,
            cache: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            probe: tokio::sync::Mutex::new(None),
            views: ThreadLocal::new(),
            generation: AtomicU64::new(0),
        })))
    }
}

impl Shared {
    /// The session a cookie value names, through the cache.
    pub(crate) async fn session_for(
        &self,
        cookie_value: &str,
    ) -> Result<Option<Arc<SessionRecord>>, AppError> {
        let generation = self.generation.load(Ordering::Acquire);
        Ok(self
            .session_entry(cookie_value, generation)
            .await?
            .map(|(s, _)| s))
    }

    /// [`Self::session_for`], with when the record was read from the store.
    /// `generation` is the logout generation seen before the read: a record
    /// read before a logout that finished meanwhile is not cached (it may be
    /// the session that logout deleted).
    async fn session_entry(
        &self,
        cookie_value: &str,
        generation: u64,
    ) -> Result<Option<(Arc<SessionRecord>, Instant)>, AppError> {
        let now = self.tokens.now();
        let ttl = self.config.session_cache_ttl;
        if let Some((s, at)) = self.cache.lock_unpoisoned().get(cookie_value)
            && at.elapsed() < ttl
            && s.expires_at > now
        {
            self.activity.note(&s.account, now);
            return Ok(Some((s.clone(), *at)));
        }
        let id_hash = hash(cookie_value);
        let mut found = self.sessions.get_session(&id_hash, now).await?;
        if let Some(s) = &mut found {
            self.touch(&id_hash, s, now).await?;
            self.activity.note(&s.account, now);
        }
        let found = found.map(Arc::new);
        let read_at = Instant::now();
        let mut cache = self.cache.lock_unpoisoned();
        match &found {
            // Checked under the cache's lock, which logouts bump it under.
            Some(_) if self.generation.load(Ordering::Acquire) != generation => {}
            Some(s) => {
                if cache.len() > 100_000 {
                    cache.retain(|_, (s, at)| at.elapsed() < ttl && s.expires_at > now);
                }
                cache.insert(cookie_value.into(), (s.clone(), read_at));
            }
            None => {
                cache.remove(cookie_value);
            }
        }
        Ok(found.map(|s| (s, read_at)))
    }

    /// With an idle timeout: moves the session's end to `now + idle` (never
    /// past its absolute end), at most once a minute per session, so an
    /// active session costs a write a minute rather than one per request.
    /// The end is within a minute of `idle` after the last use.
    async fn touch(&self, id_hash: &[u8], s: &mut SessionRecord, now: i64) -> Result<(), AppError> {
        let Some(end) = self.session_end(s.created_at, now) else {
            return Ok(());
        };
        if end - s.expires_at >= TOUCH_EVERY_SECS
            && self.sessions.touch_session(id_hash, end, now).await?
        {
            s.expires_at = end;
        }
        Ok(())
    }

    /// When a session created at `created_at` and used at `now` ends: its
    /// absolute end, or `now + idle` if sooner. `None` without an idle
    /// timeout (the end never moves).
    pub(crate) fn session_end(&self, created_at: i64, now: i64) -> Option<i64> {
        let idle = self.config.session_idle?;
        let absolute = created_at.saturating_add(secs(self.config.session_ttl));
        Some(absolute.min(now.saturating_add(secs(idle))))
    }

    /// Whether a TCP connection to the token endpoint opens (within 3 s),
    /// probed at most every 10 s whatever the rate of `/readyz` calls.
    pub(crate) async fn token_endpoint_reachable(&self) -> bool {
        let mut probe = self.probe.lock().await;
        if let Some((at, ok)) = *probe
            && at.elapsed() < Duration::from_secs(10)
        {
            return ok;
        }
        // A provider named by its issuer is discovered first (cached after).
        let url = match self.tokens.discover_provider().await {
            Ok(p) => p.token_url,
            Err(e) => {
                tracing::warn!(error = %e, "the token endpoint is unknown");
                *probe = Some((Instant::now(), false));
                return false;
            }
        };
        let ok = match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                matches!(
                    tokio::time::timeout(
                        Duration::from_secs(3),
                        tokio::net::TcpStream::connect((host, port))
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
            _ => false,
        };
        *probe = Some((Instant::now(), ok));
        ok
    }

    /// Who a session's account is, for the app's server: the Spotify user
    /// and the granted scopes, cached as long as sessions are.
    pub(crate) async fn identity(&self, account: &str) -> Result<Option<Arc<Identity>>, AppError> {
        let ttl = self.config.session_cache_ttl;
        if let Some((id, at)) = self.identities.lock_unpoisoned().get(account)
            && at.elapsed() < ttl
        {
            return Ok(Some(id.clone()));
        }
        let Some(status) = self.tokens.status(account).await? else {
            return Ok(None);
        };
        if status.needs_reauth() {
            return Ok(None);
        }
        let id = Arc::new(Identity {
            user: status.user_id.and_then(|u| HeaderValue::from_str(&u).ok()),
            scopes: HeaderValue::from_str(&status.scopes.to_wire()).ok(),
        });
        let mut ids = self.identities.lock_unpoisoned();
        if ids.len() > 100_000 {
            ids.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        ids.insert(account.to_owned(), (id.clone(), Instant::now()));
        Ok(Some(id))
    }

    /// What a proxied request needs, through this thread's views (see
    /// [`View`]); `None` when the cookie names no live session.
    pub(crate) async fn view(&self, cookie_value: &str) -> Result<Option<View>, AppError> {
        let now = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        {
            let mut views = self.views.get_or_default().borrow_mut();
            if views.generation != generation {
                views.map.clear();
                views.generation = generation;
            }
            if let Some(v) = views.map.get(cookie_value)
                && v.until > now
            {
                return Ok(Some(v.clone()));
            }
        }
        let Some((record, read_at)) = self.session_entry(cookie_value, generation).await? else {
            return Ok(None);
        };
        let (token, fresh_for) = self.tokens.access_token_fresh_for(&record.account).await?;
        let session_left =
            u64::try_from(record.expires_at.saturating_sub(self.tokens.now())).unwrap_or(0);
        let until = (read_at + self.config.session_cache_ttl)
            .min(now + fresh_for)
            .min(now + Duration::from_secs(session_left));
        let view = View {
            // A copy of this thread's own: an `Arc` shared with other threads
            // would have its count updated by every core on every request.
            record: Arc::new(SessionRecord::clone(&record)),
            bearer: bearer(&token)?,
            until,
        };
        let mut views = self.views.get_or_default().borrow_mut();
        // A logout while this view was being made: it may be the one logged out.
        if views.generation == generation && self.generation.load(Ordering::Acquire) == generation {
            if views.map.len() >= views.prune_at {
                views.map.retain(|_, v| v.until > now);
                views.prune_at = (views.map.len() * 2).max(1024);
            }
            views.map.insert(cookie_value.into(), view.clone());
        }
        Ok(Some(view))
    }

    /// Forgets every cached session, on every thread: another instance
    /// deleted a session, and only its hash is known here.
    pub(crate) fn forget_all(&self) {
        self.identities.lock_unpoisoned().clear();
        let mut cache = self.cache.lock_unpoisoned();
        cache.clear();
        // Under the lock: a record read before this cannot be cached after it.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops this thread's view of a session (its token was refused).
    pub(crate) fn drop_view(&self, cookie_value: &str) {
        self.views
            .get_or_default()
            .borrow_mut()
            .map
            .remove(cookie_value);
    }

    /// Forgets a cached session, by the cookie's value, once its row is
    /// deleted (a logout on this instance): deleting first means no request
    /// can cache it again from the store afterwards.
    pub(crate) fn forget(&self, cookie_value: &str) {
        let mut cache = self.cache.lock_unpoisoned();
        cache.remove(cookie_value);
        // Under the lock: a record read before this cannot be cached after
        // it; and every thread drops its views at its next request.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What answers the paths that are not spotoken's own (`/auth/*`, `/api/*`,
/// the operations routes).
#[derive(Debug)]
pub(crate) enum Front {
    /// Nothing: a JSON 404 (and `/` is the demo page with `--demo`).
    None,
    /// The app's built files (`--static`).
    Static(crate::static_files::StaticFiles),
    /// The app's own server (`--app-upstream`).
    App(Box<crate::app_proxy::AppUpstream>),
}

/// A session is moved forward at most this often (see [`Shared::touch`]).
const TOUCH_EVERY_SECS: i64 = 60;

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A session's user as the app's server sees it (`Spotoken-User`,
/// `Spotoken-Scopes`); a field that is not a valid header value is left out.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The Spotify user id.
    pub user: Option<HeaderValue>,
    /// The granted scopes, space-separated.
    pub scopes: Option<HeaderValue>,
}

/// The client's address, for bounds on unauthenticated work and for the
/// app's server: the connection's peer, or what a trusted proxy says (see
/// [`client_addr`]); `None` when unknown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub Option<std::net::IpAddr>);

/// The client's address: the connection's `peer`, unless the peer is one of
/// the `trusted` proxies, in which case the last `X-Forwarded-For` entry (the
/// one that proxy added: entries before it are the client's own claims).
pub(crate) fn client_addr(
    peer: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let said = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    Some(said.unwrap_or(peer))
}

/// The logged-in session of a request (401 if there is none).
pub(crate) struct Session {
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
        // A cookie naming no live session: it ended (timed out, or a logout
        // elsewhere); told apart from a browser that never logged in.
        let record = state
            .session_for(value)
            .await?
            .ok_or(AppError::SessionExpired)?;
        Ok(Session { record })
    }
}

/// CSRF check for state-changing routes and `/auth/token`: a custom header
/// (`X-Requested-With` or `X-CSRF`, any non-empty value), which a cross-site
/// form cannot send, and when the browser sends `Origin`, our own origin.
pub(crate) fn check_csrf(
    parts: &axum::http::HeaderMap,
    config: &ServerConfig,
) -> Result<(), AppError> {
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

/// With a store shared by several instances: forgets the cached sessions
/// whenever any instance deletes one (a logout), so a logged-out cookie stops
/// working everywhere at once rather than when the cache entries expire.
/// Runs until the store stops reporting; returns at once for a store only
/// this process serves from.
pub(crate) async fn watch_logouts(state: AppState) {
    let Some(mut logouts) = state.sessions.logouts().await else {
        return;
    };
    while logouts.changed().await.is_ok() {
        state.forget_all();
    }
}
