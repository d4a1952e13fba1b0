//! The emulator's world: clients, users, codes, tokens, settings and counters.
//!
//! Everything here is plain data behind one mutex held for microseconds; the HTTP
//! handlers lock it, decide, unlock, and only then sleep (latency) or write.
//! Time is the wall clock plus an offset that `/_emulator/advance` moves, so tests
//! can expire codes and refresh tokens without waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use spotoken_core::scope::Scopes;

/// The app every emulator knows. Like every Spotify app it has a secret
/// ([`DEFAULT_CLIENT_SECRET`]); PKCE clients never send it.
pub const DEFAULT_CLIENT_ID: &str = "spotoken-emulator-client";
/// The secret of [`DEFAULT_CLIENT_ID`] (HTTP Basic or `client_secret` in the body).
pub const DEFAULT_CLIENT_SECRET: &str = "emulator-secret";
/// Redirect URIs registered for the default clients. Loopback entries without a
/// port match any port, as Spotify does for loopback.
pub const DEFAULT_REDIRECT_URIS: &[&str] = &[
    "http://127.0.0.1/callback",
    "http://[::1]/callback",
    "http://127.0.0.1/auth/callback",
    "http://[::1]/auth/callback",
];

/// A registered application. Every Spotify app has a secret; whether a flow
/// uses it (authorization code, client credentials) or not (PKCE) is the
/// app's choice at each request, not a kind of client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    /// The client id.
    pub id: String,
    /// The client secret (a random one when registered without).
    #[serde(default = "new_secret")]
    pub secret: String,
    /// Registered redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

/// An emulated Spotify user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// Spotify user id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// E-mail (returned only with `user-read-email`, in extended quota mode).
    pub email: String,
    /// Country (returned only with `user-read-private`, in extended quota mode).
    pub country: String,
    /// `premium` or `free` (returned only with `user-read-private`, in extended
    /// quota mode); a free user's player commands get 403 `PREMIUM_REQUIRED`.
    pub product: String,
    /// Whether the user is on the development-mode allowlist. An unregistered
    /// user gets Spotify's plain-text 403 from the API in development mode.
    pub registered: bool,
}

/// A random client secret, 32 hex digits as Spotify's.
pub fn new_secret() -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| HEX[rng.random_range(0..HEX.len())] as char)
        .collect()
}

fn default_users() -> Vec<User> {
    let u = |id: &str, name: &str, country: &str, product: &str, registered: bool| User {
        id: id.into(),
        display_name: name.into(),
        email: format!("{id}@example.com"),
        country: country.into(),
        product: product.into(),
        registered,
    };
    vec![
        u("alice", "Alice Emulated", "SE", "premium", true),
        u("bob", "Bob Emulated", "US", "free", true),
        u("carol", "Carol Emulated", "GB", "premium", true),
        u("dave", "Dave Unregistered", "DE", "free", false),
    ]
}

/// How the token endpoint treats refresh tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Rotation {
    /// No `refresh_token` in refresh responses; the old one stays valid (Spotify, 2026).
    #[default]
    None,
    /// A new refresh token on every refresh; the old one dies (after the grace period).
    Rotate,
    /// As `rotate`, and presenting a dead one revokes the whole grant.
    RotateReuseDetection,
}

/// How `/authorize` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Consent {
    /// Decide at once, per [`Settings::deny`] (default: approve).
    #[default]
    Auto,
    /// Show an HTML page with Approve and Deny buttons.
    Page,
}

/// Which rules the app lives under (Spotify's "quota mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AppMode {
    /// What a newly registered app gets (Spotify, from 2026-02-11): five users
    /// on an allowlist, an owner with Premium, fewer endpoints and fields,
    /// search pages of at most 10.
    #[default]
    Development,
    /// Extended quota mode: every user, every endpoint, the pre-2026 shapes.
    Extended,
}

/// Which part of the emulator an injected failure or a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// Every endpoint except the control plane.
    #[default]
    Any,
    /// `POST /api/token`.
    Token,
    /// The Web API under `/v1/`.
    Api,
    /// `GET /authorize`.
    Authorize,
}

impl Endpoint {
    /// Whether a filter of `self` covers a request to `actual`.
    pub fn covers(self, actual: Endpoint) -> bool {
        self == Endpoint::Any || self == actual
    }
}

/// A rolling-window rate limit per app (Spotify counts per app over 30 s), on
/// the emulator's clock. Each endpoint kind it applies to (the token endpoint,
/// the Web API) has a window of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests allowed in the window.
    pub requests: u32,
    /// Window length in seconds.
    #[serde(default = "thirty")]
    pub window_secs: u64,
    /// Which endpoints count (default: the Web API); `any` gives the token
    /// endpoint and the Web API a window each.
    #[serde(default = "api_endpoint")]
    pub applies_to: Endpoint,
    /// Answer as the development-mode quota (`"reason": "QUOTA_EXCEEDED"`)
    /// rather than the rolling-window limit.
    #[serde(default)]
    pub quota_exceeded: bool,
}

/// A rate limit that was hit: how long to wait, and which kind it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    /// Seconds until the window has room again (`Retry-After`).
    pub retry_after_secs: u64,
    /// The development-mode quota rather than the rolling window.
    pub quota: bool,
}

fn thirty() -> u64 {
    30
}
fn api_endpoint() -> Endpoint {
    Endpoint::Api
}

/// Behaviour switches, all changeable at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Lifetime of new access tokens (Spotify: 3600).
    pub access_token_lifetime_secs: u64,
    /// Refresh-token rotation mode.
    pub rotation: Rotation,
    /// How long a rotated-out refresh token keeps working.
    pub grace_secs: u64,
    /// Refresh tokens die this long after the original authorization, however
    /// often they were used (Spotify: about six months).
    pub refresh_token_lifetime_secs: u64,
    /// Authorization codes die this long after issue (Spotify: 60 s... roughly).
    pub code_lifetime_secs: u64,
    /// Added delay before the token endpoint answers.
    pub token_latency_ms: u64,
    /// Added delay before the Web API answers.
    pub api_latency_ms: u64,
    /// Auto-approve or show a consent page.
    pub consent: Consent,
    /// With automatic consent: answer `error=access_denied` instead of approving.
    pub deny: bool,
    /// Grant only these of the requested scopes (the user unticked the rest).
    pub grant_only: Option<Vec<String>>,
    /// The user who "logs in" unless `/authorize` names one (`emulator_user=`).
    pub default_user: String,
    /// Message of every Web API 401, whatever the cause (Spotify changes it;
    /// the cause is in `WWW-Authenticate`).
    pub unauthorized_message: String,
    /// Rolling-window rate limits (none by default).
    pub rate_limits: Vec<RateLimit>,
    /// Development (default, what a new app gets) or extended quota mode.
    pub app_mode: AppMode,
    /// Whether the app's owner has Premium; without it a development-mode app
    /// gets 403 on every Web API call.
    pub owner_premium: bool,
    /// Whether the users have a Spotify client running (an active device);
    /// without one, player commands answer 404 `NO_ACTIVE_DEVICE`.
    pub active_device: bool,
    /// The polling interval device logins are given (an extension: Spotify
    /// has no device flow for third-party apps).
    pub device_interval_secs: u64,
    /// Random failures of token and Web API requests (none by default).
    pub chaos: Option<Chaos>,
}

/// Random failures, for chaos tests: each token request and Web API call
/// fails with probability `rate`, in one of five ways picked at random
/// (a 500 with a JSON error, a 502 HTML page, a dropped connection, a 503
/// HTML page after `slow_ms`, a 429 with `Retry-After: retry_after_secs`).
/// The choices come from an RNG seeded with `seed`, so the same sequence of
/// requests meets the same failures. Queued [`Failure`]s take precedence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chaos {
    /// Probability that a request fails, 0 to 1.
    pub rate: f64,
    /// Seed of the RNG that decides.
    pub seed: u64,
    /// `Retry-After` of the 429s.
    #[serde(default = "one")]
    pub retry_after_secs: u64,
    /// Delay of the slow answers.
    #[serde(default)]
    pub slow_ms: u64,
}

fn one() -> u64 {
    1
}

/// The ways [`Chaos`] fails a request, as counted in
/// [`Counters::chaos_failures`].
pub const CHAOS_KINDS: [&str; 5] = ["500-json", "502-html", "dropped", "slow-503", "429"];

/// The text of every Web API 401 since July 2026.
pub const UNAUTHORIZED_MESSAGE: &str = "Missing/invalid/expired access token";

impl Default for Settings {
    fn default() -> Self {
        Self {
            access_token_lifetime_secs: 3600,
            rotation: Rotation::None,
            grace_secs: 0,
            refresh_token_lifetime_secs: 180 * 24 * 3600,
            code_lifetime_secs: 60,
            token_latency_ms: 0,
            api_latency_ms: 0,
            consent: Consent::Auto,
            deny: false,
            grant_only: None,
            default_user: "alice".into(),
            unauthorized_message: UNAUTHORIZED_MESSAGE.into(),
            rate_limits: Vec::new(),
            app_mode: AppMode::Development,
            owner_premium: true,
            active_device: true,
            device_interval_secs: 5,
            chaos: None,
        }
    }
}

/// A queued failure: the next matching request(s) get this instead of the real answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Failure {
    /// Which endpoint it applies to.
    pub endpoint: Endpoint,
    /// Only token requests with this `grant_type`.
    pub grant: Option<String>,
    /// Only requests whose path starts with this.
    pub path: Option<String>,
    /// HTTP status to answer with.
    pub status: u16,
    /// A JSON body.
    pub body: Option<serde_json::Value>,
    /// A raw body (for example an HTML 502 page); wins over `body`.
    pub text: Option<String>,
    /// Content type of `text` (default `text/html`).
    pub content_type: Option<String>,
    /// Extra response headers, such as `Retry-After`.
    pub headers: BTreeMap<String, String>,
    /// Delay before answering.
    pub delay_ms: u64,
    /// Close the connection without answering.
    pub drop_connection: bool,
    /// With `drop_connection` on the token endpoint: handle the request first
    /// (a refresh rotates the token), then close without answering — a
    /// response lost on its way back.
    pub after_processing: bool,
    /// How many matching requests it applies to; 0 means none (it is never
    /// used, and is dropped when it comes up).
    pub times: u32,
}

impl Default for Failure {
    fn default() -> Self {
        Self {
            endpoint: Endpoint::Any,
            grant: None,
            path: None,
            status: 500,
            body: None,
            text: None,
            content_type: None,
            headers: BTreeMap::new(),
            delay_ms: 0,
            drop_connection: false,
            after_processing: false,
            times: 1,
        }
    }
}

/// What the emulator has seen, for assertions and benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Token requests by `grant_type` then outcome (`ok`, `invalid_grant`,
    /// `invalid_client`, `invalid_request`, `unsupported_grant_type`, `injected`,
    /// `rate_limited`).
    pub token_requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// The most refresh requests that were in flight at once, per user id.
    pub peak_concurrent_refreshes: BTreeMap<String, u64>,
    /// How many times each refresh token was presented, keyed by
    /// [`refresh_token_key`](crate::refresh_token_key) (never the token).
    pub refresh_token_uses: BTreeMap<String, u64>,
    /// Web API responses by status code.
    pub api_requests: BTreeMap<String, u64>,
    /// Requests to `/authorize`.
    pub authorize_requests: u64,
    /// TCP connections accepted (a client that keeps connections alive opens
    /// few).
    #[serde(default)]
    pub connections: u64,
    /// TLS handshakes completed in full on the TLS port (a client that
    /// resumes sessions or keeps connections alive makes few).
    #[serde(default)]
    pub tls_full_handshakes: u64,
    /// TLS handshakes that resumed an earlier session.
    #[serde(default)]
    pub tls_resumed_handshakes: u64,
    /// TLS handshakes that failed.
    #[serde(default)]
    pub tls_failed_handshakes: u64,
    /// TLS connections on which the client chose HTTP/2 (ALPN `h2`).
    #[serde(default)]
    pub http2_connections: u64,
    /// Requests for the discovery document.
    #[serde(default)]
    pub discovery_requests: u64,
    /// Requests [`Chaos`] failed, by kind (see [`CHAOS_KINDS`]) and
    /// endpoint (`token/429`, `api/dropped`, ...).
    #[serde(default)]
    pub chaos_failures: BTreeMap<String, u64>,
    /// Refresh requests for a grant that arrived before the `Retry-After` of
    /// a 429 the emulator sent to an earlier refresh of that grant had
    /// elapsed (on the emulator's clock).
    #[serde(default)]
    pub refreshes_before_retry_after: u64,
    /// Refresh requests that arrived after such a 429 once its time was up.
    #[serde(default)]
    pub refreshes_after_retry_after: u64,
    /// The most token requests (any grant, any outcome) that arrived within
    /// one second of the emulator's clock: what a per-app rate limit counts.
    #[serde(default)]
    pub peak_token_requests_per_second: u64,
    /// The second (emulator clock) being counted, and its count so far.
    #[serde(skip)]
    token_second: (i64, u64),
}

impl Counters {
    /// All token requests with this grant type, whatever the outcome.
    pub fn token_requests_for(&self, grant: &str) -> u64 {
        self.token_requests
            .get(grant)
            .map_or(0, |m| m.values().sum())
    }

    /// How many times `refresh_token` was presented.
    pub fn refresh_token_uses_of(&self, refresh_token: &str) -> u64 {
        self.refresh_token_uses
            .get(&crate::refresh_token_key(refresh_token))
            .copied()
            .unwrap_or(0)
    }

    /// Token requests with this grant type and outcome.
    pub fn token_outcome(&self, grant: &str, outcome: &str) -> u64 {
        self.token_requests
            .get(grant)
            .and_then(|m| m.get(outcome))
            .copied()
            .unwrap_or(0)
    }

    /// The highest peak of concurrent refreshes over all users.
    pub fn max_peak_concurrent_refreshes(&self) -> u64 {
        self.peak_concurrent_refreshes
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Web API responses with this status.
    pub fn api_status(&self, status: u16) -> u64 {
        self.api_requests
            .get(&status.to_string())
            .copied()
            .unwrap_or(0)
    }
}

/// One user's consent to one client: the thing a refresh-token family belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub client_id: String,
    pub user: String,
    pub scopes: Scopes,
    pub authorized_at_ms: i64,
    pub pkce: bool,
    pub revoked: bool,
}

/// Where a refresh token stands.
#[derive(Debug, Clone)]
pub(crate) enum RefreshState {
    Active,
    Rotated { at_ms: i64, successor: String },
}

#[derive(Debug, Clone)]
pub(crate) struct RefreshRec {
    pub grant: u64,
    pub state: RefreshState,
}

/// An access token: a user's (from a grant) or the app's own (client
/// credentials, no grant and no user).
#[derive(Debug, Clone)]
pub(crate) struct AccessRec {
    pub grant: Option<u64>,
    pub client_id: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct CodeRec {
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: Option<String>,
    pub user: String,
    pub scopes: Scopes,
    pub issued_at_ms: i64,
    pub used: bool,
}

/// A request waiting on the consent page.
#[derive(Debug, Clone)]
pub(crate) struct PendingConsent {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub challenge: Option<String>,
    pub scopes: Scopes,
    pub user: String,
}

/// The whole mutable world.
#[derive(Debug)]
pub(crate) struct World {
    pub clients: Vec<Client>,
    pub users: Vec<User>,
    pub settings: Settings,
    pub failures: VecDeque<Failure>,
    pub counters: Counters,
    pub offset_ms: i64,
    pub grants: HashMap<u64, Grant>,
    pub next_grant: u64,
    pub refresh: HashMap<String, RefreshRec>,
    pub access: HashMap<String, AccessRec>,
    pub codes: HashMap<String, CodeRec>,
    pub pending: HashMap<String, PendingConsent>,
    pub in_flight_refreshes: HashMap<String, u64>,
    /// Request times (emulator clock, ms) per (limit, endpoint kind, client).
    pub rate_window: HashMap<(usize, Endpoint, String), VecDeque<i64>>,
    /// The devices every user's account shows.
    pub devices: Vec<crate::player::Device>,
    /// Playback per user id, made on first use.
    pub players: HashMap<String, crate::player::Player>,
    /// Every user's playlists (the built-in ones and those created).
    pub playlists: Vec<crate::catalogue::Playlist>,
    /// Saved Spotify URIs per user (`/v1/me/library`).
    pub library: HashMap<String, std::collections::BTreeSet<String>>,
    /// Device logins in progress, by device code (an extension: see `device`).
    pub device_codes: HashMap<String, crate::device::DeviceRec>,
    /// The RNGs of [`Settings::chaos`], one per endpoint (so the token
    /// endpoint's sequence of decisions does not depend on how its requests
    /// interleave with the Web API's), and the seed they were made from.
    pub chaos_rngs: Option<(u64, HashMap<Endpoint, rand::rngs::StdRng>)>,
    /// Per grant: until when (emulator clock, ms) a 429 told it to wait.
    pub retry_after_until: HashMap<u64, i64>,
}

impl World {
    /// A fresh world with the default clients (plus `extra`, if given) and users.
    pub(crate) fn new(extra: Option<Client>) -> Self {
        let uris: Vec<String> = DEFAULT_REDIRECT_URIS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut clients = vec![Client {
            id: DEFAULT_CLIENT_ID.into(),
            secret: DEFAULT_CLIENT_SECRET.into(),
            redirect_uris: uris,
        }];
        if let Some(c) = extra {
            clients.retain(|k| k.id != c.id);
            clients.push(c);
        }
        let users = default_users();
        let playlists = crate::catalogue::default_playlists(&users);
        Self {
            clients,
            users,
            settings: Settings::default(),
            failures: VecDeque::new(),
            counters: Counters::default(),
            offset_ms: 0,
            grants: HashMap::new(),
            next_grant: 1,
            refresh: HashMap::new(),
            access: HashMap::new(),
            codes: HashMap::new(),
            pending: HashMap::new(),
            in_flight_refreshes: HashMap::new(),
            rate_window: HashMap::new(),
            devices: crate::player::default_devices(),
            players: HashMap::new(),
            playlists,
            library: HashMap::new(),
            device_codes: HashMap::new(),
            chaos_rngs: None,
            retry_after_until: HashMap::new(),
        }
    }

    /// A random failure for a request to `endpoint` (`Token` or `Api`), if
    /// [`Settings::chaos`] is on and the dice say so; counted.
    pub(crate) fn chaos_failure(&mut self, endpoint: Endpoint) -> Option<Failure> {
        use rand::SeedableRng as _;
        let chaos = self.settings.chaos.clone()?;
        if self
            .chaos_rngs
            .as_ref()
            .is_none_or(|(seed, _)| *seed != chaos.seed)
        {
            self.chaos_rngs = Some((chaos.seed, HashMap::new()));
        }
        let (_, rngs) = self.chaos_rngs.as_mut()?;
        let stream = match endpoint {
            Endpoint::Token => 1,
            _ => 2,
        };
        let rng = rngs
            .entry(endpoint)
            .or_insert_with(|| rand::rngs::StdRng::seed_from_u64(chaos.seed.wrapping_add(stream)));
        if rng.random::<f64>() >= chaos.rate {
            return None;
        }
        let kind = rng.random_range(0..CHAOS_KINDS.len());
        let html = |status: u16| Failure {
            status,
            text: Some(format!(
                "<html><head><title>{status}</title></head><body>chaos</body></html>"
            )),
            ..Failure::default()
        };
        let failure = match kind {
            0 => Failure {
                status: 500,
                body: Some(serde_json::json!({"error": "server_error"})),
                ..Failure::default()
            },
            1 => html(502),
            2 => Failure {
                drop_connection: true,
                ..Failure::default()
            },
            3 => Failure {
                delay_ms: chaos.slow_ms,
                ..html(503)
            },
            _ => Failure {
                status: 429,
                body: Some(
                    serde_json::json!({"error": {"status": 429, "message": "API rate limit exceeded"}}),
                ),
                headers: BTreeMap::from([(
                    "Retry-After".to_owned(),
                    chaos.retry_after_secs.to_string(),
                )]),
                ..Failure::default()
            },
        };
        let name = match endpoint {
            Endpoint::Token => "token",
            _ => "api",
        };
        *self
            .counters
            .chaos_failures
            .entry(format!(
                "{name}/{}",
                CHAOS_KINDS.get(kind).copied().unwrap_or("?")
            ))
            .or_default() += 1;
        Some(failure)
    }

    /// Notes a refresh request for `grant`: counts it if it came before the
    /// `Retry-After` of a 429 sent to the grant had elapsed.
    pub(crate) fn note_refresh_timing(&mut self, grant: u64) {
        let now = self.now_ms();
        if let Some(until) = self.retry_after_until.get(&grant).copied() {
            if now < until {
                self.counters.refreshes_before_retry_after += 1;
            } else {
                self.counters.refreshes_after_retry_after += 1;
                self.retry_after_until.remove(&grant);
            }
        }
    }

    /// Remembers that a 429 told `grant` to wait `secs`.
    pub(crate) fn note_retry_after(&mut self, grant: u64, secs: u64) {
        let until = self.now_ms() + i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        self.retry_after_until.insert(grant, until);
    }

    /// Emulated wall-clock time in milliseconds since the epoch.
    pub(crate) fn now_ms(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        real + self.offset_ms
    }

    /// Looks up a client.
    pub(crate) fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// Looks up a user.
    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// Takes the first queued failure that matches, counting down its `times`.
    pub(crate) fn take_failure(
        &mut self,
        endpoint: Endpoint,
        grant: Option<&str>,
        path: &str,
    ) -> Option<Failure> {
        let idx = self.failures.iter().position(|f| {
            f.endpoint.covers(endpoint)
                && f.grant.as_deref().is_none_or(|g| Some(g) == grant)
                && f.path.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        let f = self.failures.get_mut(idx)?;
        if f.times == 0 {
            self.failures.remove(idx);
            return self.take_failure(endpoint, grant, path);
        }
        let out = f.clone();
        f.times = f.times.saturating_sub(1);
        if f.times == 0 {
            self.failures.remove(idx);
        }
        Some(out)
    }

    /// Replaces the settings; changed rate limits start with empty windows.
    pub(crate) fn set_settings(&mut self, new: Settings) {
        if new.rate_limits != self.settings.rate_limits {
            self.rate_window.clear();
        }
        self.settings = new;
    }

    /// Makes `device` the user's active device, or leaves the user with none.
    pub(crate) fn set_active_device(
        &mut self,
        user: &str,
        device: Option<&str>,
    ) -> Result<(), String> {
        if self.user(user).is_none() {
            return Err(format!("no user {user:?}"));
        }
        if let Some(id) = device
            && !self.devices.iter().any(|d| d.id == id)
        {
            return Err(format!("no device {id:?}"));
        }
        let now = self.now_ms();
        let devices = self.devices.clone();
        self.players
            .entry(user.to_owned())
            .or_insert_with(|| crate::player::Player::new(&devices, now))
            .active = device.map(str::to_owned);
        Ok(())
    }

    /// Counts a request to `endpoint` (the token endpoint or the Web API)
    /// against the rate limits, on the emulator's clock; `Some` when over one.
    /// A refused request does not count.
    pub(crate) fn rate_limited(&mut self, endpoint: Endpoint, client_id: &str) -> Option<Limited> {
        let now = self.now_ms();
        let limits = self.settings.rate_limits.clone();
        let covering: Vec<(usize, &RateLimit)> = limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.applies_to.covers(endpoint))
            .collect();
        for (i, limit) in &covering {
            let window = (limit.window_secs.max(1) as i64) * 1000;
            let q = self
                .rate_window
                .entry((*i, endpoint, client_id.to_owned()))
                .or_default();
            while q.front().is_some_and(|t| now - t >= window) {
                q.pop_front();
            }
            if q.len() >= limit.requests as usize {
                let oldest = q.front().copied().unwrap_or(now);
                let left_ms = (window - (now - oldest)).max(1);
                return Some(Limited {
                    retry_after_secs: (left_ms as u64).div_ceil(1000),
                    quota: limit.quota_exceeded,
                });
            }
        }
        for (i, _) in covering {
            self.rate_window
                .entry((i, endpoint, client_id.to_owned()))
                .or_default()
                .push_back(now);
        }
        None
    }

    /// Counts a token request's arrival in its second of the emulator's
    /// clock (which only moves forward), for the per-second peak.
    pub(crate) fn count_token_arrival(&mut self) {
        let second = self.now_ms().div_euclid(1000);
        let c = &mut self.counters;
        c.token_second = match c.token_second {
            (s, n) if s == second => (s, n + 1),
            _ => (second, 1),
        };
        c.peak_token_requests_per_second = c.peak_token_requests_per_second.max(c.token_second.1);
    }

    /// Records one token request's outcome.
    pub(crate) fn count_token(&mut self, grant: &str, outcome: &str) {
        *self
            .counters
            .token_requests
            .entry(grant.to_owned())
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
    }

    /// Records one Web API response.
    pub(crate) fn count_api(&mut self, status: u16) {
        *self
            .counters
            .api_requests
            .entry(status.to_string())
            .or_default() += 1;
    }

    /// Starts a grant (a successful code exchange) and issues its first tokens.
    pub(crate) fn new_grant(
        &mut self,
        client_id: &str,
        user: &str,
        scopes: Scopes,
        pkce: bool,
    ) -> (u64, String, String) {
        let id = self.next_grant;
        self.next_grant += 1;
        let now = self.now_ms();
        self.grants.insert(
            id,
            Grant {
                client_id: client_id.into(),
                user: user.into(),
                scopes,
                authorized_at_ms: now,
                pkce,
                revoked: false,
            },
        );
        let refresh = self.issue_refresh(id);
        let access = self.issue_access(id);
        (id, access, refresh)
    }

    /// A new access token for a grant.
    pub(crate) fn issue_access(&mut self, grant: u64) -> String {
        let client_id = self
            .grants
            .get(&grant)
            .map(|g| g.client_id.clone())
            .unwrap_or_default();
        self.insert_access(Some(grant), client_id)
    }

    /// A new access token for the app itself (client credentials).
    pub(crate) fn issue_app_access(&mut self, client_id: &str) -> String {
        self.insert_access(None, client_id.to_owned())
    }

    fn insert_access(&mut self, grant: Option<u64>, client_id: String) -> String {
        let token = random_token("BQ", 112);
        let expires_at_ms =
            self.now_ms() + (self.settings.access_token_lifetime_secs as i64) * 1000;
        self.access.insert(
            token.clone(),
            AccessRec {
                grant,
                client_id,
                expires_at_ms,
            },
        );
        token
    }

    /// The active (never rotated) refresh tokens of `user`'s live grants.
    pub(crate) fn current_refresh_tokens(&self, user: &str) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .refresh
            .iter()
            .filter(|(_, r)| matches!(r.state, RefreshState::Active))
            .filter(|(_, r)| {
                self.grants
                    .get(&r.grant)
                    .is_some_and(|g| g.user == user && !g.revoked)
            })
            .map(|(t, _)| t.clone())
            .collect();
        tokens.sort();
        tokens
    }

    /// A new refresh token for a grant.
    pub(crate) fn issue_refresh(&mut self, grant: u64) -> String {
        let token = random_token("AQ", 128);
        self.refresh.insert(
            token.clone(),
            RefreshRec {
                grant,
                state: RefreshState::Active,
            },
        );
        token
    }

    /// Revokes every grant (or one user's): refresh and access tokens stop working.
    pub(crate) fn revoke(&mut self, user: Option<&str>) -> usize {
        let mut n = 0;
        for g in self.grants.values_mut() {
            if !g.revoked && user.is_none_or(|u| u == g.user) {
                g.revoked = true;
                n += 1;
            }
        }
        n
    }

    /// Revokes one grant (reuse detection).
    pub(crate) fn revoke_grant(&mut self, grant: u64) {
        if let Some(g) = self.grants.get_mut(&grant) {
            g.revoked = true;
        }
    }

    /// Makes every access token expired now.
    pub(crate) fn expire_access_tokens(&mut self) -> usize {
        let now = self.now_ms();
        for a in self.access.values_mut() {
            a.expires_at_ms = a.expires_at_ms.min(now - 1);
        }
        self.access.len()
    }
}

/// A random token with Spotify's look: a two-letter prefix and base64url text.
pub(crate) fn random_token(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(len);
    s.push_str(prefix);
    while s.len() < len {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_down_and_filter() {
        let mut w = World::new(None);
        w.failures.push_back(Failure {
            endpoint: Endpoint::Token,
            grant: Some("refresh_token".into()),
            times: 2,
            ..Failure::default()
        });
        assert!(w.take_failure(Endpoint::Api, None, "/v1/me").is_none());
        assert!(
            w.take_failure(Endpoint::Token, Some("authorization_code"), "/api/token")
                .is_none()
        );
        assert!(
            w.take_failure(Endpoint::Token, Some("refresh_token"), "/api/token")
                .is_some()
        );
        assert!(
            w.take_failure(Endpoint::Token, Some("refresh_token"), "/api/token")
                .is_some()
        );
        assert!(
            w.take_failure(Endpoint::Token, Some("refresh_token"), "/api/token")
                .is_none()
        );
    }

    #[test]
    fn the_token_peak_is_the_busiest_second_of_the_clock() {
        let mut w = World::new(None);
        w.offset_ms = 1000 - w.now_ms().rem_euclid(1000) + 10_000;
        for _ in 0..3 {
            w.count_token_arrival();
        }
        w.offset_ms += 5_000;
        w.count_token_arrival();
        assert_eq!(w.counters.peak_token_requests_per_second, 3);
    }

    #[test]
    fn rate_limit_counts_per_client_in_a_window() {
        let mut w = World::new(None);
        w.settings.rate_limits = vec![RateLimit {
            requests: 2,
            window_secs: 30,
            applies_to: Endpoint::Api,
            quota_exceeded: false,
        }];
        assert_eq!(w.rate_limited(Endpoint::Api, "a"), None);
        w.offset_ms += 10_000;
        assert_eq!(w.rate_limited(Endpoint::Api, "a"), None);
        let limited = Some(Limited {
            retry_after_secs: 20,
            quota: false,
        });
        assert_eq!(
            w.rate_limited(Endpoint::Api, "a"),
            limited,
            "30 s after the first"
        );
        assert_eq!(w.rate_limited(Endpoint::Api, "b"), None, "per app");
        assert_eq!(w.rate_limited(Endpoint::Token, "a"), None, "API only");
        // The window follows the emulator's clock: 20 s later the first has left it.
        w.offset_ms += 20_000;
        assert_eq!(w.rate_limited(Endpoint::Api, "a"), None);
        assert!(w.rate_limited(Endpoint::Api, "a").is_some());
    }

    #[test]
    fn new_rate_limits_start_with_empty_windows() {
        let mut w = World::new(None);
        let limit = |requests| RateLimit {
            requests,
            window_secs: 30,
            applies_to: Endpoint::Api,
            quota_exceeded: false,
        };
        let mut s = w.settings.clone();
        s.rate_limits = vec![limit(1)];
        w.set_settings(s.clone());
        assert_eq!(w.rate_limited(Endpoint::Api, "a"), None);
        assert!(w.rate_limited(Endpoint::Api, "a").is_some());
        w.set_settings(s.clone());
        assert!(w.rate_limited(Endpoint::Api, "a").is_some(), "unchanged");
        s.rate_limits = vec![limit(2)];
        w.set_settings(s);
        assert_eq!(w.rate_limited(Endpoint::Api, "a"), None, "a new window");
    }

    #[test]
    fn any_gives_each_endpoint_kind_its_own_window() {
        let mut w = World::new(None);
        w.settings.rate_limits = vec![RateLimit {
            requests: 1,
            window_secs: 30,
            applies_to: Endpoint::Any,
            quota_exceeded: true,
        }];
        assert_eq!(w.rate_limited(Endpoint::Token, "a"), None);
        assert_eq!(
            w.rate_limited(Endpoint::Api, "a"),
            None,
            "a window of its own"
        );
        let hit = w.rate_limited(Endpoint::Api, "a").expect("limited");
        assert!(hit.quota);
        assert_eq!(hit.retry_after_secs, 30);
    }

    #[test]
    fn settings_accept_partial_json() {
        let s: Settings =
            serde_json::from_str(r#"{"rotation":"rotate-reuse-detection","grace_secs":5}"#)
                .expect("parses");
        assert_eq!(s.rotation, Rotation::RotateReuseDetection);
        assert_eq!(s.access_token_lifetime_secs, 3600);
        assert!(serde_json::from_str::<Settings>(r#"{"rotaton":"rotate"}"#).is_err());
    }
}
