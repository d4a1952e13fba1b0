//! The refresh engine: `access_token(account)` always returns a usable token,
//! and at most one refresh per account is in flight anywhere.
//!
//! Three layers keep refreshes single:
//! 1. an in-memory cache answers while the token has more than the margin left
//!    (no I/O: a lock and a copy);
//! 2. a per-account async mutex in this process: the first caller refreshes,
//!    the others wait and then find the fresh token in the cache;
//! 3. the store's per-account lock across processes and instances; after taking
//!    it the holder re-reads the row and refreshes only if it is still stale.
//!
//! A new refresh token is committed durably before the access token that came
//! with it is handed out; a response without one keeps the old one.
//! `invalid_grant` flags the account (never deletes it), calls the
//! re-authorization hook, and stops all further token requests until a login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spotoken_core::backoff::{Backoff, Retry};
use spotoken_core::endpoint::Provider;
use spotoken_core::error::ReauthReason;
use spotoken_core::freshness::{self, Freshness, REFRESH_TOKEN_LIFETIME};
use spotoken_core::protocol::{self, ClientAuth, TokenSet};
use spotoken_core::scope::Scopes;
use spotoken_core::secret::{AccessToken, RefreshToken};

use crate::crypto::{Field, KeyRing};
use crate::store::{AccountLock, AccountState, Row, TokenStore, unix_now};
use crate::{Error, http};
use spotoken_core::sync::LockUnpoisoned as _;

/// Called once when an account moves to "re-authorization required".
pub type ReauthHook = Arc<dyn Fn(&ReauthEvent) + Send + Sync>;

/// How a refresh attempt (including its retries) ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new access token was stored.
    Refreshed,
    /// Another task, process or instance had refreshed; its token was used.
    Shared,
    /// The account needs re-authorization.
    ReauthRequired,
    /// Gave up on a temporary failure.
    Temporary,
    /// Any other error.
    Failed,
}

impl RefreshOutcome {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Refreshed => "refreshed",
            RefreshOutcome::Shared => "shared",
            RefreshOutcome::ReauthRequired => "reauth_required",
            RefreshOutcome::Temporary => "temporary",
            RefreshOutcome::Failed => "failed",
        }
    }
}

/// Called after every refresh attempt that took the store lock.
pub type RefreshHook = Arc<dyn Fn(&str, RefreshOutcome) + Send + Sync>;

/// What the re-authorization hook is told.
#[derive(Debug, Clone)]
pub struct ReauthEvent {
    /// The account.
    pub account: String,
    /// Why.
    pub reason: ReauthReason,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    expires_at: i64,
    scopes: Arc<Scopes>,
    /// Bumped each time the cache entry is replaced, so a waiter can tell that
    /// someone refreshed while it waited.
    generation: u64,
}

/// A token this recent is never refreshed again to satisfy a `min_valid`
/// longer than the provider's lifetime.
const JUST_OBTAINED_SECS: i64 = 30;

/// A token obtained less than this long ago is not refreshed because the API
/// answered 401 to it: the 401 goes back to the caller. An endpoint that
/// answers 401 to valid tokens would otherwise cost a refresh per request,
/// spending the app's rate limit for every user; so 401s cause at most one
/// refresh per account per interval.
pub const REFRESH_AFTER_401_INTERVAL_SECS: i64 = 60;

/// A token another holder of the lock obtained while we waited for it is
/// used if it stays valid this long: it is as new as our refresh would make
/// it, and the caller's margin was for a token read before the wait.
const ANOTHER_HOLDERS_TOKEN_VALID_FOR: Duration = Duration::from_secs(1);

/// The parser bounds `expires_in` (`MAX_EXPIRES_IN`), so it always fits in
/// seconds as `i64`; should it not, the lifetime assumed when none is given.
const UNREPRESENTABLE_EXPIRES_IN_SECS: i64 =
    spotoken_core::protocol::DEFAULT_EXPIRES_IN.as_secs() as i64;

/// The engine's idea of "now" in unix seconds (injectable for tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) client: ClientAuth,
    pub(crate) providers: crate::discovery::Providers,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) keys: KeyRing,
    pub(crate) http: reqwest::Client,
    pub(crate) margin: Duration,
    pub(crate) backoff: Backoff,
    on_reauth: Option<ReauthHook>,
    on_refresh: Option<RefreshHook>,
    /// Asked before every token-endpoint request (the app's shared budget).
    budget: Option<Arc<dyn crate::budget::RequestBudget>>,
    clock: Clock,
    cache: Mutex<HashMap<String, Cached>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Until when (unix seconds, by `clock`) the token endpoint asked us to
    /// wait with `Retry-After` (a 429): no token request is sent before.
    token_endpoint_closed_until: std::sync::atomic::AtomicI64,
}

/// Fresh tokens for every account in a store. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Tokens {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("client_id", &self.inner.client.client_id)
            .field("store", &self.inner.store.describe())
            .finish_non_exhaustive()
    }
}

/// Builds [`Tokens`].
#[derive(Default)]
pub struct TokensBuilder {
    client_id: Option<String>,
    client_secret: Option<spotoken_core::secret::ClientSecret>,
    provider: Option<Provider>,
    issuer: Option<(String, String)>,
    store: Option<Arc<dyn TokenStore>>,
    keys: Option<KeyRing>,
    margin: Option<Duration>,
    backoff: Option<Backoff>,
    timeout: Option<Duration>,
    http_client: Option<reqwest::Client>,
    on_reauth: Option<ReauthHook>,
    on_refresh: Option<RefreshHook>,
    budget: Option<Arc<dyn crate::budget::RequestBudget>>,
    clock: Option<Clock>,
}

impl TokensBuilder {
    #[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
    /// Replaces the clock (unix seconds). For tests that move time.
    pub fn clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The app's client id (required).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Makes this a confidential client (HTTP Basic at the token endpoint).
    pub fn client_secret(mut self, secret: spotoken_core::secret::ClientSecret) -> Self {
        self.client_secret = Some(secret);
        self
    }

    /// The provider's endpoints (default: Spotify).
    pub fn provider(mut self, p: Provider) -> Self {
        self.provider = Some(p);
        self
    }

    /// Any OAuth 2.0 provider by its issuer: its endpoints come from its
    /// discovery document (RFC 8414), fetched when first needed, so building
    /// costs no request. `api_base` is the resource API the tokens are for.
    /// Overrides [`provider`](Self::provider).
    pub fn issuer(mut self, issuer: impl Into<String>, api_base: impl Into<String>) -> Self {
        self.issuer = Some((issuer.into(), api_base.into()));
        self
    }

    /// Where tokens are kept (required).
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Where tokens are kept, already shared.
    pub fn shared_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The encryption keys (required; see [`crate::crypto::load_key_ring`]).
    pub fn keys(mut self, keys: KeyRing) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Refresh when less than this is left (default five minutes).
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// Retry policy for temporary failures.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = Some(b);
        self
    }

    /// Per-request HTTP timeout (default 30 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The HTTP client for the token endpoint and the Web API, instead of the
    /// one spotoken builds (no redirects, 10 s connect and [`timeout`](Self::timeout)
    /// total timeouts). Give one that does not follow redirects and has
    /// timeouts; plain `http://` is refused except to loopback either way.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Called once each time an account needs re-authorization.
    pub fn on_reauth(mut self, hook: impl Fn(&ReauthEvent) + Send + Sync + 'static) -> Self {
        self.on_reauth = Some(Arc::new(hook));
        self
    }

    /// Called after each refresh attempt with its outcome (for metrics).
    pub fn on_refresh(
        mut self,
        hook: impl Fn(&str, RefreshOutcome) + Send + Sync + 'static,
    ) -> Self {
        self.on_refresh = Some(Arc::new(hook));
        self
    }

    /// Asks `budget` before every request to the token endpoint (refreshes,
    /// code exchanges, device polls) and tells it when the endpoint asks the
    /// app to wait: for several instances sharing one app's rate limit (see
    /// [`crate::budget`]). Without one, nothing is asked.
    pub fn request_budget(mut self, budget: Arc<dyn crate::budget::RequestBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Checks the configuration and builds.
    pub fn build(self) -> Result<Tokens, Error> {
        let client_id = self.client_id.filter(|c| !c.is_empty()).ok_or_else(|| {
            Error::Configuration("no client id configured (TokensBuilder::client_id)".into())
        })?;
        let source = match (self.issuer, self.provider) {
            (Some((issuer, api)), _) => {
                spotoken_core::discovery::metadata_urls(&issuer)?;
                crate::discovery::Source::Issuer {
                    issuer,
                    api_base: spotoken_core::endpoint::parse_endpoint(&api, "API URL")?,
                }
            }
            (None, Some(p)) => crate::discovery::Source::Fixed(Box::new(p)),
            (None, None) => crate::discovery::Source::Fixed(Box::new(Provider::spotify()?)),
        };
        let store = self
            .store
            .ok_or_else(|| Error::Configuration("no token store configured".into()))?;
        let keys = self
            .keys
            .ok_or_else(|| Error::Configuration("no encryption key configured".into()))?;
        Ok(Tokens {
            inner: Arc::new(Inner {
                client: ClientAuth {
                    client_id,
                    client_secret: self.client_secret,
                },
                providers: crate::discovery::Providers::new(source),
                store,
                keys,
                http: match self.http_client {
                    Some(c) => c,
                    None => http::client(self.timeout.unwrap_or(Duration::from_secs(30)))?,
                },
                margin: self.margin.unwrap_or(freshness::DEFAULT_MARGIN),
                backoff: self.backoff.unwrap_or_default(),
                on_reauth: self.on_reauth,
                on_refresh: self.on_refresh,
                budget: self.budget,
                clock: self.clock.unwrap_or_else(|| Arc::new(unix_now)),
                cache: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                token_endpoint_closed_until: std::sync::atomic::AtomicI64::new(0),
            }),
        })
    }
}

/// What to refresh past: nothing (refresh only if stale), a token the API
/// rejected, or anything (a forced refresh).
#[derive(Clone, Copy)]
enum Trigger<'a> {
    Stale,
    Rejected(&'a AccessToken),
    Force,
}

impl Tokens {
    /// Starts a builder.
    pub fn builder() -> TokensBuilder {
        TokensBuilder::default()
    }

    /// Now, in unix seconds, by the engine's clock.
    pub fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    /// How much longer the token endpoint asked us to wait (its last
    /// `Retry-After`), if that wait has not elapsed. Meanwhile no token
    /// request is sent: refreshes and logins fail at once with a temporary
    /// error carrying the rest of the wait.
    pub fn token_endpoint_wait(&self) -> Option<Duration> {
        let until = self
            .inner
            .token_endpoint_closed_until
            .load(std::sync::atomic::Ordering::Acquire);
        let left = until - self.now();
        (left > 0).then(|| Duration::from_secs(left as u64))
    }

    /// Refuses to send a token request while the endpoint's wait runs.
    pub(crate) fn token_endpoint_open(&self) -> Result<(), Error> {
        match self.token_endpoint_wait() {
            Some(wait) => Err(Error::RateLimited {
                by: spotoken_core::error::RateLimiter::TokenEndpoint,
                reason: "still waiting as it asked; no request sent".into(),
                retry_after: Some(wait),
            }),
            None => Ok(()),
        }
    }

    /// Spends one request of the app's budget, if one is set: called right
    /// before each request to the token endpoint.
    pub(crate) async fn spend_token_budget(&self) -> Result<(), Error> {
        match &self.inner.budget {
            Some(b) => b.acquire().await,
            None => Ok(()),
        }
    }

    /// Remembers a wait the token endpoint asked for (`Retry-After` on a 429
    /// or 503), for every account: the limit is the app's, not the user's;
    /// the budget, if any, tells the other instances.
    pub(crate) async fn note_token_endpoint_answer(&self, e: &Error) {
        if e.kind() == crate::ErrorKind::Temporary
            && let Some(wait) = e.retry_after()
        {
            // The clock counts whole seconds: `now` may be up to a second
            // behind the moment the answer came, so one more second keeps
            // the next request from going out before the wait is over.
            let until = self
                .now()
                .saturating_add(i64::try_from(wait.as_secs().max(1)).unwrap_or(i64::MAX))
                .saturating_add(1);
            self.inner
                .token_endpoint_closed_until
                .fetch_max(until, std::sync::atomic::Ordering::AcqRel);
            if let Some(b) = &self.inner.budget {
                b.pause_until(until).await;
            }
            tracing::warn!(
                wait_s = wait.as_secs(),
                "the token endpoint asked us to wait; no token request before then"
            );
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.inner.store
    }

    /// The configured provider's endpoints, if known: always for a fixed
    /// provider, after [`discover_provider`](Self::discover_provider) for an issuer.
    pub fn provider(&self) -> Option<Provider> {
        self.inner.providers.known()
    }

    /// The configured provider, fetching its discovery document if it is
    /// named by an issuer and not cached (call before
    /// [`begin_login`](Self::begin_login) for such a provider).
    pub async fn discover_provider(&self) -> Result<Provider, Error> {
        self.inner.providers.configured(&self.inner.http).await
    }

    /// The resource API's base URL.
    pub fn api_base(&self) -> &url::Url {
        self.inner.providers.api_base()
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client.client_id
    }

    /// A token with more than the configured margin left, refreshing first if needed.
    pub async fn access_token(&self, account: &str) -> Result<AccessToken, Error> {
        self.access_token_with(account, self.inner.margin).await
    }

    /// A token with more than `min_valid` left, refreshing first if needed.
    pub async fn access_token_with(
        &self,
        account: &str,
        min_valid: Duration,
    ) -> Result<AccessToken, Error> {
        self.fresh(account, min_valid).await.map(|c| c.token)
    }

    /// The cache entry if it has more than `min_valid` left, else the slow
    /// path's. Boxed: the refresh is a future of a few kilobytes, and every
    /// caller's future would otherwise carry (and move) it on the cached path
    /// too.
    async fn fresh(&self, account: &str, min_valid: Duration) -> Result<Cached, Error> {
        match self.cached(account, min_valid) {
            Some(c) => Ok(c),
            None => Box::pin(self.slow_path(account, min_valid, Trigger::Stale)).await,
        }
    }

    /// Like [`access_token`](Self::access_token), with how much longer the
    /// engine will hand out this same token (its time left less the margin):
    /// for callers that keep their own copy, such as a server's per-thread
    /// cache.
    pub async fn access_token_fresh_for(
        &self,
        account: &str,
    ) -> Result<(AccessToken, Duration), Error> {
        let margin = self.inner.margin;
        let c = self.fresh(account, margin).await?;
        let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
        let left = c
            .expires_at
            .saturating_sub(self.now())
            .saturating_sub(margin);
        Ok((
            c.token,
            Duration::from_secs(u64::try_from(left).unwrap_or(0)),
        ))
    }

    /// Refreshes now, whatever the expiry (`spotoken refresh`). Still single-flight.
    pub async fn force_refresh(&self, account: &str) -> Result<AccessToken, Error> {
        self.slow_path(account, self.inner.margin, Trigger::Force)
            .await
            .map(|c| c.token)
    }

    /// After the API answered 401 to `rejected`: a different token if someone
    /// already refreshed, else a refresh. Many callers rejected at once cause
    /// one refresh. `None` when `rejected` is still the newest token and was
    /// obtained less than [`REFRESH_AFTER_401_INTERVAL_SECS`] ago: refreshing
    /// again would not help and would spend the app's rate limit, so the
    /// caller passes the 401 on.
    pub async fn refresh_after_rejection(
        &self,
        account: &str,
        rejected: &AccessToken,
    ) -> Result<Option<AccessToken>, Error> {
        if let Some(c) = self.peek_cache(account)
            && c.token.expose() != rejected.expose()
            && c.expires_at > self.now()
        {
            return Ok(Some(c.token));
        }
        let row = self.active_row(account).await?;
        if self.rejected_too_soon(&row, rejected)? {
            tracing::info!(
                account,
                "the API refused a token obtained moments ago; not refreshing again"
            );
            return Ok(None);
        }
        Box::pin(self.slow_path(account, self.inner.margin, Trigger::Rejected(rejected)))
            .await
            .map(|c| Some(c.token))
    }

    /// Whether the row still holds `rejected`, obtained too recently to
    /// refresh because of a 401.
    fn rejected_too_soon(&self, row: &Row, rejected: &AccessToken) -> Result<bool, Error> {
        let obtained_at = row.last_refresh.unwrap_or(row.authorized_at);
        if self.now().saturating_sub(obtained_at) >= REFRESH_AFTER_401_INTERVAL_SECS {
            return Ok(false);
        }
        let Some(sealed) = &row.access_token else {
            return Ok(false);
        };
        let plain =
            self.inner
                .keys
                .open_row(&row.account, Field::AccessToken, row.version, sealed)?;
        Ok(plain.as_slice() == rejected.expose().as_bytes())
    }

    /// The granted scopes as last known (cache, else store).
    pub async fn granted_scopes(&self, account: &str) -> Result<Scopes, Error> {
        if let Some(c) = self.peek_cache(account) {
            return Ok((*c.scopes).clone());
        }
        Ok(self
            .inner
            .store
            .load(account)
            .await?
            .map(|r| r.scopes)
            .unwrap_or_default())
    }

    fn peek_cache(&self, account: &str) -> Option<Cached> {
        self.inner.cache.lock_unpoisoned().get(account).cloned()
    }

    fn cached(&self, account: &str, min_valid: Duration) -> Option<Cached> {
        let cache = self.inner.cache.lock_unpoisoned();
        let c = cache.get(account)?;
        (freshness::freshness(c.expires_at, self.now(), min_valid) == Freshness::Fresh)
            .then(|| c.clone())
    }

    pub(crate) fn evict(&self, account: &str) {
        self.inner.cache.lock_unpoisoned().remove(account);
    }

    fn flight(&self, account: &str) -> Flight<'_> {
        let cell = self
            .inner
            .flights
            .lock_unpoisoned()
            .entry(account.to_owned())
            .or_default()
            .clone();
        Flight {
            inner: &self.inner,
            account: account.to_owned(),
            cell,
        }
    }

    /// How many accounts have a single-flight entry (tests).
    #[cfg(test)]
    pub(crate) fn flights_len(&self) -> usize {
        self.inner.flights.lock_unpoisoned().len()
    }

    /// Decrypts the row's access token if it satisfies the trigger.
    fn usable(
        &self,
        row: &Row,
        min_valid: Duration,
        trigger: Trigger<'_>,
    ) -> Result<Option<Cached>, Error> {
        if matches!(trigger, Trigger::Force) {
            return Ok(None);
        }
        let Some(sealed) = &row.access_token else {
            return Ok(None);
        };
        let now = self.now();
        let fresh = freshness::freshness(row.access_expires_at, now, min_valid) == Freshness::Fresh;
        // A token obtained moments ago is as fresh as a refresh can make it: when
        // the provider's lifetime is shorter than the caller's `min_valid`,
        // refreshing again would burn a request (and a rotation) for nothing.
        let obtained_at = row.last_refresh.unwrap_or(row.authorized_at);
        let just_obtained =
            now.saturating_sub(obtained_at) < JUST_OBTAINED_SECS && row.access_expires_at > now;
        if !fresh && !just_obtained {
            return Ok(None);
        }
        let plain =
            self.inner
                .keys
                .open_row(&row.account, Field::AccessToken, row.version, sealed)?;
        let token = AccessToken::new(String::from_utf8_lossy(&plain).into_owned());
        if let Trigger::Rejected(r) = trigger
            && r.expose() == token.expose()
        {
            return Ok(None);
        }
        Ok(Some(Cached {
            token,
            expires_at: row.access_expires_at,
            scopes: Arc::new(row.scopes.clone()),
            generation: 0,
        }))
    }

    fn remember(&self, account: &str, c: &Cached) {
        let mut cache = self.inner.cache.lock_unpoisoned();
        let generation = cache.get(account).map_or(1, |old| old.generation + 1);
        cache.insert(
            account.to_owned(),
            Cached {
                generation,
                ..c.clone()
            },
        );
    }

    /// Whether a token someone else obtained while we waited will do: any
    /// unexpired token that is new to us (the provider's lifetime may be shorter
    /// than the caller's `min_valid`; refreshing again would not help).
    fn newer_will_do(trigger: Trigger<'_>, token: &AccessToken) -> bool {
        match trigger {
            Trigger::Stale => true,
            Trigger::Rejected(r) => r.expose() != token.expose(),
            Trigger::Force => false,
        }
    }

    /// The account's stored row, if it is logged in and not flagged.
    async fn active_row(&self, account: &str) -> Result<Row, Error> {
        let row = self
            .inner
            .store
            .load(account)
            .await?
            .ok_or_else(|| not_logged_in(account))?;
        Self::check_state(&row)?;
        Ok(row)
    }

    fn check_state(row: &Row) -> Result<(), Error> {
        match &row.state {
            AccountState::Active => Ok(()),
            AccountState::ReauthRequired(reason) => Err(Error::AuthorizationNeeded {
                account: row.account.clone(),
                reason: ReauthReason::from_stored(reason),
            }),
        }
    }

    async fn slow_path(
        &self,
        account: &str,
        min_valid: Duration,
        trigger: Trigger<'_>,
    ) -> Result<Cached, Error> {
        let seen_generation = self.peek_cache(account).map(|c| c.generation);
        let flight = self.flight(account);
        let _in_flight = flight.cell.lock().await;
        // Someone ahead of us in this process may have refreshed already.
        if let Some(c) = self.peek_cache(account) {
            let fresh =
                freshness::freshness(c.expires_at, self.now(), min_valid) == Freshness::Fresh;
            let newer = Some(c.generation) != seen_generation && c.expires_at > self.now();
            if (fresh || newer) && Self::newer_will_do(trigger, &c.token) {
                return Ok(c);
            }
        }
        let row = self.active_row(account).await?;
        if let Some(c) = self.usable(&row, min_valid, trigger)? {
            self.remember(account, &c);
            return Ok(c);
        }
        let mut lock = self.inner.store.lock(account).await?;
        let result = self
            .refresh_locked(&mut *lock, account, min_valid, trigger, row.version)
            .await;
        if let Err(e) = lock.release().await {
            tracing::warn!(account, error = %e, "releasing the refresh lock failed");
        }
        if let Some(hook) = &self.inner.on_refresh {
            let outcome = match &result {
                Ok((_, true)) => RefreshOutcome::Refreshed,
                Ok((_, false)) => RefreshOutcome::Shared,
                Err(e) => match e.kind() {
                    crate::ErrorKind::AuthorizationNeeded => RefreshOutcome::ReauthRequired,
                    crate::ErrorKind::Temporary => RefreshOutcome::Temporary,
                    _ => RefreshOutcome::Failed,
                },
            };
            hook(account, outcome);
        }
        let (c, _) = result?;
        self.remember(account, &c);
        Ok(c)
    }

    async fn refresh_locked(
        &self,
        lock: &mut dyn AccountLock,
        account: &str,
        min_valid: Duration,
        trigger: Trigger<'_>,
        seen_version: i64,
    ) -> Result<(Cached, bool), Error> {
        // Re-read under the lock: another process or instance may have refreshed.
        let row = lock.load().await?.ok_or_else(|| not_logged_in(account))?;
        Self::check_state(&row)?;
        if let Some(c) = self.refreshed_by_another(&row, min_valid, trigger, seen_version)? {
            tracing::debug!(account, "token was refreshed by another holder of the lock");
            return Ok((c, false));
        }
        let refresh = {
            let plain = self.inner.keys.open_row(
                account,
                Field::RefreshToken,
                row.version,
                &row.refresh_token,
            )?;
            RefreshToken::new(String::from_utf8_lossy(&plain).into_owned())
        };
        let set = match self.request_refresh(lock, &row, &refresh).await {
            Ok(Refreshed::Answer(set)) => set,
            Ok(Refreshed::Changed(row)) => return self.adopt_written(&row),
            Err(Error::AuthorizationNeeded { reason, .. }) => {
                let reason = self.reauth_reason(reason, &row);
                self.flag_reauth(lock, row, &reason).await;
                return Err(Error::AuthorizationNeeded {
                    account: account.to_owned(),
                    reason,
                });
            }
            Err(e) => return Err(e),
        };
        crate::crash::point("after-token-response");
        self.commit(lock, account, &row, set, &refresh).await
    }

    /// The token in a row re-read under the lock, if it will do: fresh
    /// enough for `min_valid`, or, when the row changed since it was read
    /// before the lock (another holder of the lock refreshed meanwhile),
    /// still valid at all; unless a refresh is forced.
    fn refreshed_by_another(
        &self,
        row: &Row,
        min_valid: Duration,
        trigger: Trigger<'_>,
        seen_version: i64,
    ) -> Result<Option<Cached>, Error> {
        if let Some(c) = self.usable(row, min_valid, trigger)? {
            return Ok(Some(c));
        }
        if row.version != seen_version && !matches!(trigger, Trigger::Force) {
            return self.usable(row, ANOTHER_HOLDERS_TOKEN_VALID_FOR, trigger);
        }
        Ok(None)
    }

    /// Why the account needs a new login, as the token endpoint said; an
    /// `invalid_grant` past the refresh token's lifetime says it expired.
    fn reauth_reason(&self, said: ReauthReason, row: &Row) -> ReauthReason {
        match said {
            ReauthReason::InvalidGrant { .. }
                if freshness::refresh_token_lifetime(
                    row.authorized_at,
                    self.now(),
                    REFRESH_TOKEN_LIFETIME,
                ) == freshness::Lifetime::Expired =>
            {
                ReauthReason::RefreshTokenExpired
            }
            r => r,
        }
    }

    /// Writes a refresh's result over `row` (still under the lock), with
    /// the rotated refresh token or the kept one, and returns the new token;
    /// a row someone else wrote meanwhile (a new login) wins.
    async fn commit(
        &self,
        lock: &mut dyn AccountLock,
        account: &str,
        row: &Row,
        set: TokenSet,
        refresh: &RefreshToken,
    ) -> Result<(Cached, bool), Error> {
        let rotated = set.refresh_token.is_some();
        let now = self.now();
        let expires_at = now
            + i64::try_from(set.expires_in.as_secs()).unwrap_or(UNREPRESENTABLE_EXPIRES_IN_SECS);
        // Both secrets are sealed for the version this write gives the row,
        // the kept refresh token too.
        let written_version = row.version + 1;
        let keys = &self.inner.keys;
        let mut next = row.clone();
        next.access_token = Some(keys.seal_row(
            account,
            Field::AccessToken,
            written_version,
            set.access_token.expose().as_bytes(),
        )?);
        next.access_expires_at = expires_at;
        let kept = set.refresh_token.as_ref().unwrap_or(refresh);
        next.refresh_token = keys.seal_row(
            account,
            Field::RefreshToken,
            written_version,
            kept.expose().as_bytes(),
        )?;
        if let Some(s) = set.scope {
            next.scopes = s;
        }
        next.last_refresh = Some(now);
        next.state = AccountState::Active;
        let Some(written) = lock.update(next).await? else {
            // Someone wrote the row meanwhile (a new login): theirs wins.
            let row = lock.load().await?.ok_or_else(|| not_logged_in(account))?;
            return self.adopt_written(&row);
        };
        tracing::info!(
            account,
            rotated,
            expires_in = set.expires_in.as_secs(),
            "refreshed"
        );
        Ok((
            Cached {
                token: set.access_token,
                expires_at,
                scopes: Arc::new(written.scopes),
                generation: 0,
            },
            true,
        ))
    }

    /// Uses a row someone else wrote while we were refreshing.
    fn adopt_written(&self, row: &Row) -> Result<(Cached, bool), Error> {
        Self::check_state(row)?;
        self.usable(row, Duration::ZERO, Trigger::Stale)?
            .map(|c| (c, false))
            .ok_or_else(|| {
                Error::temporary(
                    "the account changed while refreshing (a new login?); try again",
                    None,
                )
            })
    }

    /// The client a stored account's refresh token belongs to: the one that
    /// obtained it, as its row records. That is the configured client (with
    /// its secret, if any), unless the account was logged in under another
    /// client id; then that id, as a public client. An authorization server
    /// refuses a refresh token presented by any other client, which would
    /// look like a revoked grant.
    pub(crate) fn client_for(&self, row_client_id: &str) -> std::borrow::Cow<'_, ClientAuth> {
        if row_client_id.is_empty() || row_client_id == self.inner.client.client_id {
            std::borrow::Cow::Borrowed(&self.inner.client)
        } else {
            std::borrow::Cow::Owned(ClientAuth::public(row_client_id))
        }
    }

    /// One refresh request, retried within the backoff budget.
    ///
    /// A request whose answer was lost (a timeout, a connection broken after
    /// sending) may have been carried out: under rotation the provider then
    /// holds a new refresh token we never saw. Before such a retry the row is
    /// read again (another writer's result wins over presenting the old
    /// token), and an `invalid_grant` after it is reported as a lost rotation.
    async fn request_refresh(
        &self,
        lock: &mut dyn AccountLock,
        row: &Row,
        refresh: &RefreshToken,
    ) -> Result<Refreshed, Error> {
        let account = row.account.as_str();
        let row_client_id = row.client_id.as_str();
        let row_issuer = row.issuer.as_deref();
        let client = self.client_for(row_client_id);
        if matches!(client, std::borrow::Cow::Owned(_)) {
            tracing::debug!(
                account,
                client_id = row_client_id,
                "refreshing with the client id the account was logged in with"
            );
        }
        let token_url = self.token_url_for(row_issuer).await?;
        let req = protocol::refresh_request(&token_url, &client, refresh);
        let started = Instant::now();
        let mut attempt = 1;
        let mut lost = false;
        // Checked once: a retry below has waited the Retry-After itself.
        self.token_endpoint_open()?;
        crate::crash::point("before-token-request");
        loop {
            self.spend_token_budget().await?;
            let outcome = match http::send_form_tracked(&self.inner.http, &req).await {
                Ok(answer) => protocol::parse_token_answer(answer.as_core(), account),
                Err(f) => {
                    lost |= f.maybe_delivered;
                    self.inner.providers.forget(row_issuer);
                    Err(f.error)
                }
            };
            let err = match outcome {
                Ok(set) => return Ok(Refreshed::Answer(set)),
                Err(Error::AuthorizationNeeded {
                    account,
                    reason: ReauthReason::InvalidGrant { description },
                }) if lost => Error::AuthorizationNeeded {
                    account,
                    reason: ReauthReason::LostRotation { description },
                },
                Err(e) => e,
            };
            self.note_token_endpoint_answer(&err).await;
            match self
                .inner
                .backoff
                .decide(err, attempt, started.elapsed(), rand::random())
            {
                Retry::After(d) => {
                    tracing::warn!(
                        account,
                        attempt,
                        wait_ms = d.as_millis() as u64,
                        "refresh failed; retrying"
                    );
                    tokio::time::sleep(d).await;
                    attempt += 1;
                    if lost
                        && let Some(now) = lock.load().await?
                        && now.version != row.version
                    {
                        tracing::info!(account, "the row changed after a lost refresh answer");
                        return Ok(Refreshed::Changed(now));
                    }
                }
                Retry::GiveUp(e) => return Err(e),
            }
        }
    }

    async fn flag_reauth(&self, lock: &mut dyn AccountLock, mut row: Row, reason: &ReauthReason) {
        let account = row.account.clone();
        row.state = AccountState::ReauthRequired(reason.to_string());
        row.access_token = None;
        // Keep the refresh token openable in the row's next version (logout
        // may still revoke it).
        let _ = row.carry_secrets_to_next_version(&self.inner.keys);
        match lock.update(row).await {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(account, error = %e, "could not flag the account for re-authorization")
            }
        }
        self.evict(&account);
        tracing::warn!(account, %reason, "re-authorization required");
        if let Some(hook) = &self.inner.on_reauth {
            hook(&ReauthEvent {
                account,
                reason: reason.clone(),
            });
        }
    }

    /// Re-encrypts every row not sealed with the active key (or not yet bound
    /// to its row version); returns how many.
    pub async fn rekey(&self) -> Result<usize, Error> {
        let mut n = 0;
        for listed in self.inner.store.list().await? {
            let account = listed.account.clone();
            let stale = !self.inner.keys.is_current(&listed.refresh_token)
                || listed
                    .access_token
                    .as_ref()
                    .is_some_and(|a| !self.inner.keys.is_current(a));
            if !stale {
                continue;
            }
            let mut lock = self.inner.store.lock(&account).await?;
            let result = async {
                let Some(mut row) = lock.load().await? else {
                    return Ok(false);
                };
                row.carry_secrets_to_next_version(&self.inner.keys)?;
                Ok::<_, Error>(lock.update(row).await?.is_some())
            }
            .await;
            lock.release().await?;
            if result? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// What a refresh request came to.
enum Refreshed {
    /// The provider's answer.
    Answer(TokenSet),
    /// The row changed while an answer was lost: someone else's result.
    Changed(Row),
}

/// A place in an account's single flight. The map entry goes when the last
/// holder or waiter leaves, so a process serving many accounts keeps one entry
/// per refresh in progress, not one per account ever seen.
struct Flight<'a> {
    inner: &'a Inner,
    account: String,
    cell: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.inner.flights.lock_unpoisoned();
        // Clones are made only under this map lock, so the count cannot grow
        // while we look: two means the map's and ours.
        if Arc::strong_count(&self.cell) == 2
            && flights
                .get(&self.account)
                .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            flights.remove(&self.account);
        }
    }
}

fn not_logged_in(account: &str) -> Error {
    Error::AuthorizationNeeded {
        account: account.to_owned(),
        reason: ReauthReason::NotLoggedIn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Sqlite;

    /// An engine over a store holding `n` accounts with valid access tokens,
    /// sealed as today (`legacy`: as before row versions were bound).
    async fn engine_with_accounts(n: usize, legacy: bool) -> (Tokens, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tmp");
        let keys = KeyRing::generate();
        let store = Sqlite::open(dir.path().join("tokens.db")).expect("store");
        let now = unix_now();
        for i in 0..n {
            let account = format!("acct{i}");
            let mut row = crate::store::suite::row(&account);
            let seal = |field, plain: &[u8]| {
                if legacy {
                    keys.seal(&account, field, plain)
                } else {
                    keys.seal_row(&account, field, 1, plain)
                }
                .expect("seal")
            };
            row.access_token = Some(seal(Field::AccessToken, b"BQaccess"));
            row.refresh_token = seal(Field::RefreshToken, b"AQrefresh");
            row.access_expires_at = now + 3600;
            store.upsert(row).await.expect("upsert");
        }
        let tokens = Tokens::builder()
            .client_id("cid")
            .provider(
                Provider::spotify_like("http://127.0.0.1:9", "http://127.0.0.1:9")
                    .expect("provider"),
            )
            .store(store)
            .keys(keys)
            .build()
            .expect("tokens");
        (tokens, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_single_flight_map_keeps_no_entry_once_callers_are_done() {
        let (tokens, _dir) = engine_with_accounts(200, false).await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            for _ in 0..3 {
                let tokens = tokens.clone();
                tasks.push(tokio::spawn(async move {
                    tokens.access_token(&format!("acct{i}")).await
                }));
            }
        }
        for t in tasks {
            t.await.expect("join").expect("token");
        }
        assert_eq!(
            tokens.flights_len(),
            0,
            "200 accounts served, no entry left"
        );
    }

    #[tokio::test]
    async fn rows_sealed_before_versions_were_bound_open_and_rekey_binds_them() {
        let (tokens, _dir) = engine_with_accounts(3, true).await;
        let token = tokens
            .access_token("acct1")
            .await
            .expect("legacy row opens");
        assert_eq!(token.expose(), "BQaccess");
        assert_eq!(tokens.rekey().await.expect("rekey"), 3);
        for row in tokens.store().list().await.expect("list") {
            assert!(tokens.inner.keys.is_current(&row.refresh_token));
            assert!(
                row.access_token
                    .as_ref()
                    .is_some_and(|a| tokens.inner.keys.is_current(a))
            );
        }
        tokens.evict("acct1");
        assert_eq!(
            tokens.access_token("acct1").await.expect("open").expose(),
            "BQaccess"
        );
        assert_eq!(
            tokens.rekey().await.expect("rekey"),
            0,
            "nothing left to rewrite"
        );
    }
}
