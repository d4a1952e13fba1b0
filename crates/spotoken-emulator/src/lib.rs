//! # spotoken-emulator
//!
//! A stand-in for Spotify's Accounts service (`/authorize`, `/api/token`) and Web
//! API (`/v1/...`) on one loopback port, with Spotify's paths, shapes and quirks,
//! and switches for everything that goes wrong in real life: expiry, rotation,
//! reuse detection, revocation, rate limits, injected 5xx/429/HTML pages and
//! dropped connections. spotoken's tests, demo and benchmarks run against it, and
//! Spotify app developers can test their own apps against it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let emu = spotoken_emulator::Emulator::start().await?;
//! println!("accounts and API at {}", emu.url());
//! emu.update(|s| s.access_token_lifetime_secs = 5);
//! let counters = emu.counters();
//! # Ok(()) }
//! ```
//!
//! Every switch is also reachable over HTTP under `/_emulator/` (see [`control`]).
//! [`Emulator::builder`] also serves the same world over TLS on a second
//! port (with a test CA, HTTP/2 by ALPN if asked) and adds Web API latency,
//! to stand in for a far-away `api.spotify.com`.
//! `docs/EMULATOR.md` lists what it answers like Spotify, with the public
//! source of each answer, and what it deliberately does not model.

// Functions a reader can hold (the threshold is in clippy.toml); tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod authorize;
mod catalogue;
pub mod control;
mod device;
mod model;
mod player;
pub mod serve;
mod tls;
mod token;
mod webapi;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use model::World;
pub use model::{
    AppMode, CHAOS_KINDS, Chaos, Client, Consent, Counters, DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET, DEFAULT_REDIRECT_URIS, Endpoint, Failure, RateLimit, Rotation, Settings,
    UNAUTHORIZED_MESSAGE, User, new_secret,
};
use spotoken_core::sync::LockUnpoisoned as _;
pub use tls::TestCa;
pub use webapi::{ECHO_PREFIX, OWNER_PREMIUM_REQUIRED, USER_NOT_REGISTERED};

/// [`Emulator::authorize`] did not redirect back: the status of what it
/// answered instead (0 if the URL never reached it) and the page's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeError {
    /// The HTTP status of the page shown, or 0.
    pub status: u16,
    /// The page's text, or what went wrong.
    pub body: String,
}

impl std::fmt::Display for AuthorizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            0 => write!(f, "the authorize request failed: {}", self.body),
            s => write!(
                f,
                "the authorize page answered HTTP {s} instead of redirecting: {}",
                self.body
            ),
        }
    }
}

impl std::error::Error for AuthorizeError {}

/// The key of a refresh token in [`Counters::refresh_token_uses`]: a hash,
/// so that counters served over HTTP or printed never hold a live token.
pub fn refresh_token_key(refresh_token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(refresh_token.as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Shared handle on the emulator's world.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<World>>);

impl Shared {
    /// A new world with the default clients and users, plus `extra` if given.
    pub fn new(extra: Option<Client>) -> Self {
        Self(Arc::new(Mutex::new(World::new(extra))))
    }

    /// Locks the world. A panic while holding the lock cannot leave it half
    /// updated in a way that matters to a test double, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock_unpoisoned()
    }
}

/// The emulator's routes over a world.
pub fn app(shared: Shared) -> Router {
    Router::new()
        .route("/authorize", get(authorize::authorize))
        .route("/authorize/decide", post(authorize::decide))
        .route("/api/token", post(token::token))
        .route(
            "/.well-known/oauth-authorization-server",
            get(device::metadata),
        )
        .route(device::DEVICE_AUTHORIZATION_PATH, post(device::authorize))
        .route(device::REVOCATION_PATH, post(device::revoke))
        .route("/v1/{*path}", any(webapi::api))
        .route("/_echo/{*path}", any(webapi::echo))
        .nest("/_emulator", control::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(cors))
        .with_state(shared)
}

/// Any other path: 404 in the Web API's error shape.
async fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": {"status": 404, "message": "Service not found"}}),
    )
}

/// Browsers may call the Web API (and the echo) and the token endpoint from
/// any origin, as Spotify allows: their answers carry
/// `access-control-allow-origin: *`, and a preflight `OPTIONS` is answered
/// before authentication. The control plane is not offered to other origins,
/// so a web page cannot reset or reconfigure a running emulator.
async fn cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response<Body> {
    let path = req.uri().path();
    let open =
        path.starts_with("/v1/") || path.starts_with(webapi::ECHO_PREFIX) || path == "/api/token";
    if !open {
        return next.run(req).await;
    }
    let preflight = req.method() == axum::http::Method::OPTIONS;
    let mut r = if preflight {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::OK;
        let h = r.headers_mut();
        h.insert(
            axum::http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS, PUT, DELETE, PATCH"),
        );
        h.insert(
            axum::http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Accept, Authorization, Content-Type, Origin, Retry-After"),
        );
        h.insert(
            axum::http::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("604800"),
        );
        r
    } else {
        next.run(req).await
    };
    r.headers_mut().insert(
        axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// A running emulator on `127.0.0.1`. Dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    tls: Option<(SocketAddr, TestCa)>,
    shared: Shared,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How to start an [`Emulator`]: [`Emulator::builder`].
#[derive(Debug, Default)]
pub struct EmulatorBuilder {
    port: u16,
    extra_client: Option<Client>,
    tls_port: Option<u16>,
    http2: bool,
    api_latency: std::time::Duration,
}

impl EmulatorBuilder {
    /// The plain HTTP port on 127.0.0.1 (default 0: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Registers an extra client besides the default ones.
    pub fn client(mut self, client: Client) -> Self {
        self.extra_client = Some(client);
        self
    }

    /// Also serves the same world over TLS on `port` (0: a free one), with
    /// a certificate from a test CA made at start ([`Emulator::tls_ca`]).
    pub fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Offers HTTP/2 on the TLS port (ALPN `h2`, as api.spotify.com does).
    pub fn http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }

    /// Added delay before every Web API answer ([`Settings::api_latency_ms`]).
    pub fn api_latency(mut self, latency: std::time::Duration) -> Self {
        self.api_latency = latency;
        self
    }

    /// Binds the ports and starts serving.
    pub async fn start(self) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(self.extra_client);
        shared.lock().settings.api_latency_ms = self.api_latency.as_millis() as u64;
        let router = app(shared.clone());
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(serve::serve(
            listener,
            router.clone(),
            shared.clone(),
            async move {
                let _ = stopped.await;
            },
        )));
        let tls = match self.tls_port {
            None => None,
            Some(port) => {
                let ca = TestCa::new(self.http2)?;
                let listener = TcpListener::bind(("127.0.0.1", port)).await?;
                let tls_addr = listener.local_addr()?;
                let (stop, stopped) = oneshot::channel::<()>();
                stops.push(stop);
                tasks.push(tokio::spawn(serve::serve_with(
                    listener,
                    router,
                    shared.clone(),
                    Some(ca.acceptor()),
                    async move {
                        let _ = stopped.await;
                    },
                )));
                Some((tls_addr, ca))
            }
        };
        Ok(Emulator {
            addr,
            tls,
            shared,
            stops,
            tasks,
        })
    }
}

impl Emulator {
    /// Starts an emulator on an ephemeral loopback port with default settings.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(0, None).await
    }

    /// Starts on `port` (0 for ephemeral), optionally registering an extra client.
    pub async fn start_on(port: u16, extra_client: Option<Client>) -> std::io::Result<Self> {
        let mut b = Self::builder().port(port);
        b.extra_client = extra_client;
        b.start().await
    }

    /// Options beyond [`start_on`](Self::start_on): a TLS port, HTTP/2, latency.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// Base URL, serving both the Accounts service and the Web API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS port's base URL (`https://127.0.0.1:PORT`), when started with one.
    pub fn tls_url(&self) -> Option<String> {
        self.tls.as_ref().map(|(a, _)| format!("https://{a}"))
    }

    /// The test CA that signed the TLS port's certificate.
    pub fn tls_ca(&self) -> Option<&TestCa> {
        self.tls.as_ref().map(|(_, ca)| ca)
    }

    /// The shared world (for embedding the routes elsewhere).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Changes settings in place.
    pub fn update(&self, f: impl FnOnce(&mut Settings)) {
        let mut w = self.shared.lock();
        let mut s = w.settings.clone();
        f(&mut s);
        w.set_settings(s);
    }

    /// The ids of the devices every user has (the first is active at first).
    pub fn device_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .devices
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    /// Makes `device` the user's active device, or (None) leaves the user
    /// with no active device, so that player commands answer 404
    /// `NO_ACTIVE_DEVICE`. Errors name an unknown user or device.
    pub fn set_active_device(&self, user: &str, device: Option<&str>) -> Result<(), String> {
        self.shared.lock().set_active_device(user, device)
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        self.shared.lock().settings.clone()
    }

    /// Queues an injected failure.
    pub fn inject(&self, failure: Failure) {
        self.shared.lock().failures.push_back(failure);
    }

    /// Drops every queued failure that has not been used up.
    pub fn clear_failures(&self) {
        self.shared.lock().failures.clear();
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Zeroes the counters (tokens and settings stay).
    pub fn reset_counters(&self) {
        self.shared.lock().counters = Counters::default();
    }

    /// Makes every access token issued so far expired.
    pub fn expire_access_tokens(&self) -> usize {
        self.shared.lock().expire_access_tokens()
    }

    /// Revokes every grant, or one user's.
    pub fn revoke(&self, user: Option<&str>) -> usize {
        self.shared.lock().revoke(user)
    }

    /// The refresh tokens `user` could use now without relying on a grace
    /// period: the newest of each live grant (one per login). A crash test
    /// compares what a store holds with this.
    pub fn current_refresh_tokens(&self, user: &str) -> Vec<String> {
        self.shared.lock().current_refresh_tokens(user)
    }

    /// Every authorization code, access token and refresh token issued so
    /// far: what a test searches logs and files for to prove none leaked.
    pub fn issued_secrets(&self) -> Vec<String> {
        let w = self.shared.lock();
        let mut all: Vec<String> = w
            .codes
            .keys()
            .chain(w.access.keys())
            .chain(w.refresh.keys())
            .cloned()
            .collect();
        all.sort();
        all
    }

    /// Starts a grant of `user` to the default client, as a completed
    /// PKCE login would, without the browser's round trips; returns its
    /// first access and refresh tokens. For benchmarks that need many
    /// logged-in accounts quickly.
    pub fn issue_grant(&self, user: &str, scopes: &str) -> (String, String) {
        let (_, access, refresh) = self.shared.lock().new_grant(
            DEFAULT_CLIENT_ID,
            user,
            spotoken_core::scope::Scopes::parse(scopes),
            true,
        );
        (access, refresh)
    }

    /// Moves the emulator's clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.shared.lock().offset_ms += by.as_millis() as i64;
    }

    /// Back to a new world (clients given at start are kept).
    pub fn reset(&self) {
        control::reset_world(&self.shared);
    }

    /// Registers (or replaces) a client.
    pub fn register_client(&self, client: Client) {
        let mut w = self.shared.lock();
        w.clients.retain(|c| c.id != client.id);
        w.clients.push(client);
    }

    /// Plays the browser on an authorize URL (with automatic consent): runs it
    /// through the emulator's routes in-process and returns the `Location` it
    /// redirects to (the callback with `code` or `error`), or, when it showed a
    /// page instead, an error with that page's status and text.
    pub async fn authorize(&self, authorize_url: &str) -> Result<String, AuthorizeError> {
        use tower::ServiceExt as _;
        let failed = |body: String| AuthorizeError { status: 0, body };
        let u = url::Url::parse(authorize_url).map_err(|e| failed(format!("not a URL: {e}")))?;
        let target = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        let req = axum::http::Request::get(target)
            .body(Body::empty())
            .map_err(|e| failed(e.to_string()))?;
        let resp = app(self.shared.clone())
            .oneshot(req)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status().as_u16();
        if let Some(loc) = resp.headers().get(axum::http::header::LOCATION) {
            return loc.to_str().map(str::to_owned).map_err(|e| AuthorizeError {
                status,
                body: format!("the Location header is not text: {e}"),
            });
        }
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .map_err(|e| AuthorizeError {
                status,
                body: e.to_string(),
            })?;
        Err(AuthorizeError {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Every refresh token issued so far (current, rotated away or revoked):
    /// what a test searches logs and files for. [`Counters`] keys its
    /// counts by [`refresh_token_key`] instead.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        let mut all: Vec<String> = self.shared.lock().refresh.keys().cloned().collect();
        all.sort();
        all
    }

    /// Stops the server and waits for the accept loops to end.
    pub async fn shutdown(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for task in &mut self.tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Replaces (or adds) one query parameter of a URL: for tests that tamper with
/// a redirect, such as a callback with a forged `state`.
pub fn with_query_param(url: &str, key: &str, value: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let mut pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.push((key.to_owned(), value.to_owned()));
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.into()
}

/// Builds a JSON response.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// Answers with an injected failure (after its delay; or never, if it drops).
pub(crate) async fn injected(f: Failure, drop: Option<&serve::DropConnection>) -> Response<Body> {
    if f.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(f.delay_ms)).await;
    }
    if let (true, Some(d)) = (f.drop_connection, drop) {
        d.fire().await;
    }
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = match (&f.text, &f.body) {
        (Some(text), _) => {
            let mut r = Response::new(Body::from(text.clone()));
            let ct = f
                .content_type
                .as_deref()
                .unwrap_or("text/html; charset=utf-8");
            if let Ok(v) = HeaderValue::from_str(ct) {
                r.headers_mut().insert(axum::http::header::CONTENT_TYPE, v);
            }
            r
        }
        (None, Some(body)) => json_response(status, body),
        (None, None) => Response::new(Body::empty()),
    };
    *r.status_mut() = status;
    for (k, v) in &f.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// Sleeps for an emulated latency.
pub(crate) async fn latency(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
