//! The backend-for-frontend end to end: a real server on port 0, the emulator
//! as Spotify, and a plain HTTP client playing the browser (cookies by hand).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use reqwest::StatusCode;
use serde_json::Value;
use spotoken::Tokens;
use spotoken::core::endpoint::Provider;
use spotoken::crypto::KeyRing;
use spotoken::store::{SessionStore, Sqlite, TokenStore};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator, Endpoint, Failure};
use spotoken_server::{AppState, Metrics, ServerConfig, app};
use tower::ServiceExt as _;

struct Server {
    url: String,
    state: AppState,
    /// Seconds added to the engine's clock (the emulator keeps its own).
    clock_offset: Arc<std::sync::atomic::AtomicI64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Moves the engine's clock forward.
    fn advance(&self, secs: i64) {
        self.clock_offset
            .fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn start(
    emu: &Emulator,
    tokens_store: Arc<dyn TokenStore>,
    sessions: Arc<dyn SessionStore>,
    keys: KeyRing,
    tweak: impl FnOnce(&mut ServerConfig),
) -> Server {
    start_with_api(emu, &emu.url(), tokens_store, sessions, keys, tweak).await
}

/// [`start`] with the Web API at `api` instead of the emulator.
async fn start_with_api(
    emu: &Emulator,
    api: &str,
    tokens_store: Arc<dyn TokenStore>,
    sessions: Arc<dyn SessionStore>,
    keys: KeyRing,
    tweak: impl FnOnce(&mut ServerConfig),
) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let mut cfg = ServerConfig::new(&url).expect("config");
    cfg.scopes =
        spotoken::core::scope::Scopes::parse("user-read-private user-read-currently-playing");
    tweak(&mut cfg);
    let metrics = Arc::new(Metrics::default());
    let m = metrics.clone();
    let clock_offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let offset = clock_offset.clone();
    let tokens = Tokens::builder()
        .clock(move || {
            spotoken::store::unix_now() + offset.load(std::sync::atomic::Ordering::SeqCst)
        })
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&emu.url(), api).expect("provider"))
        .shared_store(tokens_store)
        .keys(keys)
        .on_refresh(move |_, o| m.refresh(o.as_str()))
        .build()
        .expect("tokens");
    let state = AppState::new(tokens, sessions, cfg, metrics).expect("state");
    let s = state.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app(s)).await;
    });
    tokio::spawn(spotoken_server::state::watch_logouts(state.clone()));
    Server {
        url,
        state,
        clock_offset,
        _task: task,
    }
}

struct Env {
    emu: Emulator,
    _dir: tempfile::TempDir,
    server: Server,
}

impl Env {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let emu = Emulator::start().await.expect("emulator");
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Sqlite::open(dir.path().join("server.db")).expect("store"));
        let server = start(&emu, store.clone(), store, KeyRing::generate(), tweak).await;
        Self {
            emu,
            _dir: dir,
            server,
        }
    }
}

/// A browser: follows nothing by itself, keeps cookies by hand.
#[derive(Default, Clone)]
struct Browser {
    cookies: HashMap<String, String>,
}

struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

impl Browser {
    async fn send(&mut self, method: reqwest::Method, url: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = client().request(method, url);
        if url.contains("127.0.0.1") && !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            b = b.header("cookie", jar.join("; "));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = b.send().await.expect("request");
        let resp = Resp {
            status: r.status(),
            headers: r.headers().clone(),
            body: String::new(),
        };
        let body = r.text().await.unwrap_or_default();
        let resp = Resp { body, ..resp };
        for c in resp.set_cookies() {
            let first = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        resp
    }

    async fn get(&mut self, url: &str) -> Resp {
        self.send(reqwest::Method::GET, url, &[]).await
    }

    /// The whole login: /auth/login → emulator → /auth/callback. Returns the
    /// callback's answer; `tamper` may change the callback URL.
    async fn login_with(&mut self, server: &str, tamper: impl FnOnce(String) -> String) -> Resp {
        let r = self
            .get(&format!("{server}/auth/login?return_to=/after"))
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let r = self.get(&r.location()).await;
        assert_eq!(
            r.status,
            StatusCode::FOUND,
            "the emulator approves: {}",
            r.body
        );
        let callback = tamper(r.location());
        self.get(&callback).await
    }

    async fn login(&mut self, server: &str) -> Resp {
        let r = self.login_with(server, |c| c).await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        assert_eq!(r.location(), "/after");
        r
    }

    fn session(&self) -> Option<String> {
        self.cookies.get("__Host-spotoken_session").cloned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_locked_down_session_cookie_and_proxies() {
    let env = Env::new().await;
    let mut b = Browser::default();
    let r = b.get(&format!("{}/auth/login", env.server.url)).await;
    let login_cookie = r.set_cookies().join("\n");
    assert!(
        login_cookie.contains("__Host-spotoken_login="),
        "{login_cookie}"
    );
    let r = b.get(&r.location()).await;
    let r = b.get(&r.location()).await;
    let set = r.set_cookies();
    let session = set
        .iter()
        .find(|c| c.starts_with("__Host-spotoken_session="))
        .expect("session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }
    let id = b.session().expect("cookie kept");
    assert!(id.len() >= 43, "256-bit id");
    // Only a hash of the id is stored.
    let rows = env
        .server
        .state
        .sessions
        .get_session(
            &spotoken::store::sessions::hash(&id),
            spotoken::store::unix_now(),
        )
        .await
        .expect("get")
        .expect("stored");
    assert_ne!(rows.id_hash, id.as_bytes());

    let me = b.get(&format!("{}/api/v1/me", env.server.url)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["id"], "alice");
    let s = b.get(&format!("{}/auth/session", env.server.url)).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.json()["user"]["id"], "alice");
    assert!(s.json()["scopes"].as_array().is_some_and(|a| !a.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_token_routes_never_show_a_refresh_token() {
    let env = Env::new().await;
    let mut b = Browser::default();
    b.login(&env.server.url).await;
    let account = env.server.state.tokens.accounts().await.expect("accounts")[0]
        .account
        .clone();
    env.server
        .state
        .tokens
        .force_refresh(&account)
        .await
        .expect("refresh");
    let refresh_tokens = env.emu.issued_refresh_tokens();
    assert!(!refresh_tokens.is_empty());
    let s = b.get(&format!("{}/auth/session", env.server.url)).await;
    let t = b
        .send(
            reqwest::Method::GET,
            &format!("{}/auth/token", env.server.url),
            &[("X-Requested-With", "test")],
        )
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    assert!(
        t.json()["access_token"]
            .as_str()
            .is_some_and(|a| a.starts_with("BQ"))
    );
    assert!(
        s.json().get("access_token").is_none(),
        "the session route shows no token"
    );
    for rt in &refresh_tokens {
        assert!(!s.body.contains(rt.as_str()) && !t.body.contains(rt.as_str()));
    }
    assert!(!t.body.contains("refresh"), "{}", t.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_header_and_origin_are_required() {
    let env = Env::new().await;
    let mut b = Browser::default();
    b.login(&env.server.url).await;
    let url = &env.server.url;
    let r = b
        .send(reqwest::Method::POST, &format!("{url}/auth/logout"), &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no custom header");
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{url}/auth/logout"),
            &[("X-CSRF", "1"), ("Origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "wrong origin");
    let r = b
        .send(reqwest::Method::GET, &format!("{url}/auth/token"), &[])
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "/auth/token is CSRF-checked"
    );
    assert_eq!(
        b.get(&format!("{url}/auth/session")).await.status,
        StatusCode::OK,
        "still logged in"
    );
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{url}/auth/logout"),
            &[
                ("X-Requested-With", "XMLHttpRequest"),
                ("Origin", url.as_str()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.json()["remove_access_at"],
        "https://www.spotify.com/account/apps/"
    );
    assert!(b.session().is_none(), "cookie cleared");
    assert!(
        env.server
            .state
            .tokens
            .accounts()
            .await
            .expect("accounts")
            .is_empty(),
        "tokens deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_state_replayed_callbacks_and_other_browsers_get_no_session() {
    let env = Env::new().await;
    let url = &env.server.url;
    // Wrong state.
    let mut b = Browser::default();
    let r = b
        .login_with(url, |c| {
            spotoken_emulator::with_query_param(&c, "state", "forged")
        })
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(b.session().is_none());
    // Replayed callback.
    let mut b = Browser::default();
    let mut seen = String::new();
    let r = b
        .login_with(url, |c| {
            seen = c.clone();
            c
        })
        .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let mut replay = Browser {
        cookies: b
            .cookies
            .iter()
            .filter(|(k, _)| k.as_str() != "__Host-spotoken_session")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let r = replay.get(&seen).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a callback is single use"
    );
    assert!(replay.session().is_none());
    // A callback from a browser that did not start the login.
    let mut starter = Browser::default();
    let r = starter.get(&format!("{url}/auth/login")).await;
    let r = starter.get(&r.location()).await;
    let mut other = Browser::default();
    let r = other.get(&r.location()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("another browser"));
    assert!(other.session().is_none());
    assert_eq!(
        env.emu.counters().token_requests_for("authorization_code"),
        1,
        "only the good login exchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_consent_creates_no_session() {
    let env = Env::new().await;
    env.emu.update(|s| s.deny = true);
    let mut b = Browser::default();
    let r = b.login_with(&env.server.url, |c| c).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("declined"), "{}", r.body);
    assert!(b.session().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_id_changes_at_login_and_tampered_cookies_fail() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    b.login(url).await;
    let first = b.session().expect("first");
    b.login(url).await;
    let second = b.session().expect("second");
    assert_ne!(first, second, "a new id at every login");
    let mut old = Browser::default();
    old.cookies.insert("__Host-spotoken_session".into(), first);
    assert_eq!(
        old.get(&format!("{url}/auth/session")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut tampered = Browser::default();
    let mut t = second.clone();
    t.replace_range(0..1, if t.starts_with('A') { "B" } else { "A" });
    tampered.cookies.insert("__Host-spotoken_session".into(), t);
    let r = tampered.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "unauthenticated");
}

#[tokio::test]
async fn open_redirects_and_proxy_traversal_are_refused() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    for bad in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
    ] {
        let r = b
            .get(&format!("{url}/auth/login?return_to={}", urlencode(bad)))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.location().is_empty());
    }
    b.login(url).await;
    for bad in [
        "/api/v1/../_emulator/counters",
        "/api/v1/%2e%2e/_emulator/reset",
        "/api/v1%2f..%2f_emulator",
        "/api/_emulator/counters",
    ] {
        let r = b.get(&format!("{url}{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    // An absolute URL in the path stays a path under the API origin.
    let r = b.get(&format!("{url}/api/http://evil.example/v1/me")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_strips_credentials_and_passes_429_through() {
    let env = Env::new().await;
    // The Web API at the emulator's request echo: it checks the token as the
    // API does, then shows what the proxy sent.
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Sqlite::open(dir.path().join("echo.db")).expect("store"));
    let echo = format!("{}{}", env.emu.url(), spotoken_emulator::ECHO_PREFIX);
    let server = start_with_api(
        &env.emu,
        &echo,
        store.clone(),
        store,
        KeyRing::generate(),
        |_| {},
    )
    .await;
    let url = &server.url;
    let mut b = Browser::default();
    b.login(url).await;
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{url}/api/v1/echo/thing?x=1"),
            &[
                ("X-CSRF", "1"),
                ("Authorization", "Bearer browser-supplied"),
                ("content-type", "application/json"),
                ("Connection", "x-secret-hop"),
                ("x-secret-hop", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["path"], "/v1/echo/thing");
    assert_eq!(
        r.json()["user"],
        "alice",
        "with the session's token, not the browser's"
    );
    assert_eq!(r.json()["query"], "x=1");
    assert!(r.set_cookies().is_empty());
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 429,
        headers: [("Retry-After".to_owned(), "17".to_owned())].into(),
        body: Some(
            serde_json::json!({"error": {"status": 429, "message": "API rate limit exceeded"}}),
        ),
        ..Failure::default()
    });
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "17");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_names_the_scope_the_session_lacks() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    b.login(url).await;
    // Granted: user-read-private user-read-currently-playing (see `start`).
    let r = b.get(&format!("{url}/api/v1/me/playlists")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.headers["spotoken-missing-scope"], "playlist-read-private");
    assert_eq!(
        r.json()["error"]["message"],
        "Insufficient client scope",
        "Spotify's body passes through"
    );
    // A 403 on an endpoint the grant covers is about something else: no name.
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 403,
        body: Some(serde_json::json!({"error": {"status": 403,
            "message": "User not registered in the Developer Dashboard"}})),
        ..Failure::default()
    });
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        !r.headers.contains_key("spotoken-missing-scope"),
        "{:?}",
        r.headers
    );
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key("spotoken-missing-scope"));
}

/// Reads until the server closes the connection; panics if it has not
/// within a minute (it should within a fraction of a second).
async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tcp.read_to_end(&mut got),
    )
    .await
    .expect("the server kept the connection open")
    .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let env = Env::with(|c| c.header_read_timeout = std::time::Duration::from_millis(200)).await;
    // The real serving path (hyper's HTTP/1 server per event loop), not
    // `axum::serve` as in `start`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(spotoken_server::serve(
        listener,
        env.server.state.clone(),
        spotoken_server::refresher::RefresherConfig::default(),
        std::future::pending(),
    ));
    // A header that never ends.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .expect("write");
    let answer = read_until_closed(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // A keep-alive connection that goes quiet after one request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // Connections that keep asking are served.
    let r = client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
}

/// A Web API that answers each connection's first request with `{}` and
/// hangs up on reading the second, as a server closing an idle keep-alive
/// connection just as it is reused; counts connections.
async fn api_hanging_up_on_reuse() -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut heads, mut got, mut buf) = (0, Vec::new(), [0u8; 4096]);
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        heads += 1;
                        if heads > 1 {
                            return;
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                      content-length: 2\r\n\r\n{}";
                        tcp.write_all(answer.as_bytes()).await.expect("write");
                    }
                }
            });
        }
    });
    (url, accepted)
}

// One thread: the proxy's idle upstream connections are per thread, so the
// second request surely reuses the first one's connection.
#[tokio::test(flavor = "current_thread")]
async fn a_safe_request_is_sent_again_when_a_reused_connection_hangs_up() {
    use std::sync::atomic::Ordering;
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Sqlite::open(dir.path().join("server.db")).expect("store"));
    let (api, accepted) = api_hanging_up_on_reuse().await;
    let server = start_with_api(
        &emu,
        &api,
        store.clone(),
        store,
        KeyRing::generate(),
        |_| {},
    )
    .await;
    let url = &server.url;
    let mut b = Browser::default();
    b.login(url).await;
    // The login read the profile on a connection of its own.
    let before = accepted.load(Ordering::SeqCst);
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1);
    // Reuses that connection, which hangs up: sent again on a new one.
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(accepted.load(Ordering::SeqCst), before + 2);
    // A POST may have been acted on before the hang-up: not sent again.
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{url}/api/v1/me/player/next"),
            &[("X-CSRF", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.json()["error"], "temporary");
    assert_eq!(accepted.load(Ordering::SeqCst), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeouts_are_504_json() {
    let env = Env::with(|c| c.upstream_timeout = std::time::Duration::from_millis(300)).await;
    let mut b = Browser::default();
    b.login(&env.server.url).await;
    env.emu.update(|s| s.api_latency_ms = 3000);
    let r = b.get(&format!("{}/api/v1/me", env.server.url)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_after_expiry_cause_one_refresh() {
    let env = Env::new().await;
    let mut b = Browser::default();
    b.login(&env.server.url).await;
    // The provider ends the token early, a while after it was obtained.
    env.emu.expire_access_tokens();
    env.server
        .advance(spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS);
    env.emu.update(|s| s.token_latency_ms = 100);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut b = b.clone();
        let url = format!("{}/api/v1/me", env.server.url);
        tasks.push(tokio::spawn(async move { b.get(&url).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::OK);
    }
    let c = env.emu.counters();
    assert_eq!(
        c.token_requests_for("refresh_token"),
        1,
        "one refresh for 200 requests"
    );
    let metrics = client()
        .get(format!("{}/metrics", env.server.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("spotoken_refreshes_total{outcome=\"refreshed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spotoken_proxy_requests_total{status=\"200\"} 200"),
        "{metrics}"
    );
    assert!(metrics.contains("spotoken_active_sessions 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_cookie_no_longer_reaches_the_api() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    b.login(url).await;
    // Used on several connections at once, so each of the server's worker
    // threads may keep a view of the session.
    let old = b.clone();
    let api = format!("{url}/api/v1/me");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (mut browser, api) = (old.clone(), api.clone());
            tokio::spawn(async move { browser.get(&api).await.status })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("call"), StatusCode::OK);
    }
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{url}/auth/logout"),
            &[("X-CSRF", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for _ in 0..4 {
        let r = old.clone().get(&api).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_sessions_are_told_to_reauthorize() {
    let env = Env::new().await;
    let mut b = Browser::default();
    b.login(&env.server.url).await;
    env.emu.revoke(None);
    // A token obtained moments ago is not refreshed because of a 401.
    let r = b.get(&format!("{}/api/v1/me", env.server.url)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(
        r.json()["error"]["status"],
        401,
        "Spotify's answer: {}",
        r.body
    );
    env.server
        .advance(spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS);
    let r = b.get(&format!("{}/api/v1/me", env.server.url)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.json()["error"], "reauthorize");
    assert_eq!(r.json()["login"], "/auth/login");
    let s = b.get(&format!("{}/auth/session", env.server.url)).await;
    assert_eq!(s.json()["error"], "reauthorize");
}

#[tokio::test]
async fn health_readiness_and_routes_by_oneshot() {
    let env = Env::new().await;
    let router = app(env.server.state.clone());
    let get = |path: &'static str| {
        Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request")
    };
    let r = router
        .clone()
        .oneshot(get("/healthz"))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let r = router
        .clone()
        .oneshot(get("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let r = router
        .clone()
        .oneshot(get("/api/v1/me"))
        .await
        .expect("api");
    assert_eq!(r.status(), 401, "no session");
    let r = router.clone().oneshot(get("/")).await.expect("root");
    assert_eq!(r.status(), 404, "no demo page unless asked");
}

/// `n` instances sharing one PostgreSQL schema (made for the test), as a
/// team outgrowing one machine runs them.
async fn pg_instances(
    url: &str,
    emu: &Emulator,
    n: usize,
    tweak: impl Fn(&mut ServerConfig),
) -> (Vec<Server>, PgSchema) {
    let schema = format!(
        "spotoken_test_bff_{}_{}_{}",
        std::process::id(),
        spotoken::store::unix_now(),
        rand_suffix()
    );
    let keys = KeyRing::generate();
    let mut servers = Vec::new();
    for _ in 0..n {
        let pg = Arc::new(
            spotoken::store::Postgres::connect_in_schema(url, Some(&schema))
                .await
                .expect("postgres"),
        );
        servers.push(start(emu, pg.clone(), pg, keys.clone(), &tweak).await);
    }
    (
        servers,
        PgSchema {
            url: url.to_owned(),
            name: schema,
        },
    )
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A test's schema, dropped by [`PgSchema::drop_all`].
struct PgSchema {
    url: String,
    name: String,
}

impl PgSchema {
    async fn drop_all(self) {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .expect("cleanup");
    }
}

/// Two instances on one PostgreSQL, with session caches that would keep a
/// session for an hour: a logout on one ends the session on the other as
/// soon as the notification arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_ends_the_session_on_the_others() {
    let Ok(url) = std::env::var("SPOTOKEN_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: SPOTOKEN_TEST_DATABASE_URL is unset; the logout test did not run");
        return;
    };
    let emu = Emulator::start().await.expect("emulator");
    let (servers, schema) = pg_instances(&url, &emu, 2, |c| {
        c.session_cache_ttl = std::time::Duration::from_secs(3600);
    })
    .await;
    let mut b = Browser::default();
    b.login(&servers[0].url).await;
    let other = format!("{}/api/v1/me", servers[1].url);
    assert_eq!(
        b.clone().get(&other).await.status,
        StatusCode::OK,
        "cached on instance 1"
    );
    // The cookie as it was: the browser that logs out forgets it, a thief would not.
    let old = b.clone();
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{}/auth/logout", servers[0].url),
            &[("X-CSRF", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Wait (bounded) for the notification to reach instance 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = StatusCode::OK;
    while std::time::Instant::now() < deadline {
        last = old.clone().get(&other).await.status;
        if last == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        last,
        StatusCode::UNAUTHORIZED,
        "instance 1 still served the logged-out session"
    );
    schema.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_refresh_once() {
    let Ok(url) = std::env::var("SPOTOKEN_TEST_DATABASE_URL") else {
        eprintln!(
            "SKIPPED: SPOTOKEN_TEST_DATABASE_URL is unset; the three-instance test did not run"
        );
        return;
    };
    let emu = Emulator::start().await.expect("emulator");
    let (servers, schema) = pg_instances(&url, &emu, 3, |_| {}).await;
    // Log in on instance 0; the callback lands on instance 1 (any instance can finish a login).
    let mut b = Browser::default();
    let r = b.get(&format!("{}/auth/login", servers[0].url)).await;
    let r = b.get(&r.location()).await;
    let callback = r.location().replace(&servers[0].url, &servers[1].url);
    let r = b.get(&callback).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    emu.expire_access_tokens();
    for s in &servers {
        s.advance(spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS);
    }
    emu.update(|s| s.token_latency_ms = 100);
    let mut tasks = Vec::new();
    for i in 0..150 {
        let mut b = b.clone();
        let url = format!("{}/api/v1/me", servers[i % 3].url);
        tasks.push(tokio::spawn(async move { b.get(&url).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::OK);
    }
    assert_eq!(
        emu.counters().token_requests_for("refresh_token"),
        1,
        "one refresh across three instances"
    );
    schema.drop_all().await;
}

// ---- Issue 11: regression tests for the outside security review ----------

/// A Web API that answers `/v1/me` like Spotify, `/v1/head` with the request
/// head it received as its body, and anything else with a response whose
/// framing a forwarder can read two ways (chunked *and* a Content-Length),
/// its chunked body carrying a whole forged response with a session cookie.
async fn hostile_api() -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let answer = if head.starts_with("GET /v1/me ") {
                            let body = r#"{"id":"alice","display_name":"Alice"}"#;
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        } else if head.contains(" /v1/head") {
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                                 content-length: {}\r\ncache-control: public, max-age=3600\r\n\
                                 set-cookie: upstream=1\r\n\r\n{head}",
                                head.len()
                            )
                        } else {
                            let forged = "{}HTTP/1.1 200 OK\r\nset-cookie: \
                                 __Host-spotoken_session=forged; Path=/\r\n\
                                 content-length: 0\r\n\r\n";
                            format!(
                                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
                                 content-length: 2\r\n\r\n{:x}\r\n{forged}\r\n0\r\n\r\n",
                                forged.len()
                            )
                        };
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

async fn env_with_api(api: &str) -> (Emulator, tempfile::TempDir, Server) {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Sqlite::open(dir.path().join("server.db")).expect("store"));
    let server = start_with_api(&emu, api, store.clone(), store, KeyRing::generate(), |_| {}).await;
    (emu, dir, server)
}

/// Finding 1: the upstream's framing never reaches the browser. A response
/// with both Transfer-Encoding and Content-Length is refused (502), and the
/// browser's kept-alive connection reads exactly the answers it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_response_with_two_framings_cannot_split_the_browsers_connection() {
    use tokio::io::AsyncWriteExt as _;
    let api = hostile_api().await;
    let (_emu, _dir, server) = env_with_api(&api).await;
    let mut b = Browser::default();
    b.login(&server.url).await;
    let cookie = format!("__Host-spotoken_session={}", b.session().expect("session"));
    let host = server.url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    let requests = format!(
        "GET /api/v1/smuggle HTTP/1.1\r\nhost: {host}\r\ncookie: {cookie}\r\n\r\n\
         GET /healthz HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(requests.as_bytes()).await.expect("write");
    let got = read_until_closed(&mut tcp).await;
    assert!(
        !got.contains("forged"),
        "a forged response got through:\n{got}"
    );
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        2,
        "two answers for two requests:\n{got}"
    );
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
}

/// Finding 10: proxied answers are private to the session, and the
/// browser's statements about itself, the method or the path stay behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_answers_are_private_and_client_statements_stay_behind() {
    let api = hostile_api().await;
    let (_emu, _dir, server) = env_with_api(&api).await;
    let mut b = Browser::default();
    b.login(&server.url).await;
    let r = b
        .send(
            reqwest::Method::GET,
            &format!("{}/api/v1/head", server.url),
            &[
                ("X-Forwarded-For", "10.0.0.1"),
                ("X-Forwarded-Host", "admin.internal"),
                ("Forwarded", "for=10.0.0.1"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Original-URL", "/admin"),
                ("X-Rewrite-URL", "/admin"),
                ("Spotoken-User", "mallory"),
                ("X-Kept", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let upstream_saw = r.body.to_ascii_lowercase();
    assert!(upstream_saw.contains("x-kept: yes"), "{upstream_saw}");
    for h in [
        "x-forwarded-",
        "forwarded:",
        "x-http-method-override",
        "x-original-url",
        "x-rewrite-url",
        "spotoken-user",
        "cookie",
    ] {
        assert!(
            !upstream_saw.contains(h),
            "{h} was forwarded:\n{upstream_saw}"
        );
    }
    assert_eq!(r.headers["cache-control"], "private, no-store");
    assert_eq!(r.headers["vary"], "Cookie");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert!(
        r.set_cookies().is_empty(),
        "the upstream's cookie stays behind"
    );
    // Errors spotoken answers itself are just as private.
    let r = Browser::default()
        .get(&format!("{}/api/v1/me", server.url))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["cache-control"], "private, no-store");
    let r = b.get(&format!("{}/auth/session", server.url)).await;
    assert_eq!(r.headers["cache-control"], "private, no-store");
    assert_eq!(r.headers["vary"], "Cookie");
}

/// Finding 2: a write through the proxy needs the CSRF header and, when the
/// browser names one, our origin; refused writes never reach the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_need_csrf_proof_and_are_not_sent_without_it() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    b.login(url).await;
    let api_calls = |env: &Env| env.emu.counters().api_requests.values().sum::<u64>();
    let before = api_calls(&env);
    let sibling = url.replace("127.0.0.1", "localhost");
    for (method, headers) in [
        (reqwest::Method::POST, vec![("content-type", "text/plain")]),
        (reqwest::Method::PUT, vec![]),
        (reqwest::Method::DELETE, vec![]),
        (reqwest::Method::PATCH, vec![]),
        (
            reqwest::Method::POST,
            vec![("X-Requested-With", "x"), ("Origin", sibling.as_str())],
        ),
        (
            reqwest::Method::PUT,
            vec![("X-CSRF", "1"), ("Origin", "http://127.0.0.1:1")],
        ),
    ] {
        let r = b
            .send(
                method.clone(),
                &format!("{url}/api/v1/me/player/play"),
                &headers,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {headers:?}");
        assert_eq!(r.json()["error"], "forbidden", "{}", r.body);
    }
    assert_eq!(api_calls(&env), before, "nothing was sent upstream");
    let r = b
        .send(
            reqwest::Method::PUT,
            &format!("{url}/api/v1/me/player/play"),
            &[("X-CSRF", "1"), ("Origin", url.as_str())],
        )
        .await;
    assert_ne!(r.json()["error"], "forbidden", "{}", r.body);
    assert_eq!(api_calls(&env), before + 1);
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::OK, "reads need no header");
}

/// Finding 3: an endpoint that answers 401 to a valid token does not cost a
/// refresh per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_to_a_fresh_token_is_passed_on_without_a_refresh_per_request() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    b.login(url).await;
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        path: Some("/v1/me/player".into()),
        status: 401,
        body: Some(serde_json::json!({"error": {"status": 401,
            "message": "Invalid access token"}})),
        times: 1000,
        ..Failure::default()
    });
    for _ in 0..20 {
        let r = b.get(&format!("{url}/api/v1/me/player")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        0,
        "the token was obtained moments ago"
    );
    // Later, one 401 refreshes once; the next twenty do not.
    env.server
        .advance(spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS);
    for _ in 0..20 {
        let r = b.get(&format!("{url}/api/v1/me/player")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 1);
}

/// A session store whose next `get_session` stops after reading, until the
/// test lets it go: the window between a request's read and its caching.
struct Gated {
    inner: Arc<Sqlite>,
    gate: std::sync::Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
    >,
}

#[async_trait::async_trait]
impl SessionStore for Gated {
    async fn put_session(&self, s: spotoken::store::SessionRecord) -> Result<(), spotoken::Error> {
        self.inner.put_session(s).await
    }
    async fn get_session(
        &self,
        id_hash: &[u8],
        now: i64,
    ) -> Result<Option<spotoken::store::SessionRecord>, spotoken::Error> {
        let found = self.inner.get_session(id_hash, now).await;
        let gate = self.gate.lock().expect("gate").take();
        if let Some((read, go)) = gate {
            let _ = read.send(());
            let _ = go.await;
        }
        found
    }
    async fn delete_session(
        &self,
        id_hash: &[u8],
    ) -> Result<Option<spotoken::store::SessionRecord>, spotoken::Error> {
        self.inner.delete_session(id_hash).await
    }
    async fn put_pending(&self, p: spotoken::store::PendingRecord) -> Result<(), spotoken::Error> {
        self.inner.put_pending(p).await
    }
    async fn take_pending(
        &self,
        state_hash: &[u8],
        now: i64,
    ) -> Result<Option<spotoken::store::PendingRecord>, spotoken::Error> {
        self.inner.take_pending(state_hash, now).await
    }
    async fn session_accounts(&self, now: i64) -> Result<Vec<String>, spotoken::Error> {
        self.inner.session_accounts(now).await
    }
    async fn purge_expired(&self, now: i64) -> Result<Vec<String>, spotoken::Error> {
        self.inner.purge_expired(now).await
    }
}

/// Finding 5: a request that read the session just before a logout cannot
/// cache it for the requests after the logout's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_a_logout_cannot_revive_the_session() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let sqlite = Arc::new(Sqlite::open(dir.path().join("server.db")).expect("store"));
    let gated = Arc::new(Gated {
        inner: sqlite.clone(),
        gate: std::sync::Mutex::new(None),
    });
    let server = start(&emu, sqlite, gated.clone(), KeyRing::generate(), |_| {}).await;
    let url = server.url.clone();
    let mut b = Browser::default();
    b.login(&url).await;
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    *gated.gate.lock().expect("gate") = Some((read_tx, go_rx));
    let racing = {
        let (mut b, url) = (b.clone(), url.clone());
        tokio::spawn(async move { b.get(&format!("{url}/auth/session")).await.status })
    };
    read_rx.await.expect("the racing request read the session");
    let session = b.session().expect("session");
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{url}/auth/logout"),
            &[("X-CSRF", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let _ = go_tx.send(());
    let _ = racing.await;
    // The browser's old cookie, replayed after the logout answered.
    let mut replay = Browser::default();
    replay
        .cookies
        .insert("__Host-spotoken_session".into(), session);
    for path in ["/auth/session", "/api/v1/me"] {
        let r = replay.get(&format!("{url}{path}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.body);
    }
}

/// Finding 7: started logins are bounded per client and in total, before
/// anything is written; the limit answers 429 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_logins_are_bounded_before_anything_is_written() {
    let env = Env::with(|c| {
        c.login_limits = spotoken_server::limits::LoginLimits {
            window: std::time::Duration::from_secs(3600),
            per_client: 5,
            total: 100,
        }
    })
    .await;
    let mut b = Browser::default();
    for i in 0..5 {
        let r = b.get(&format!("{}/auth/login", env.server.url)).await;
        assert_eq!(r.status, StatusCode::FOUND, "login {i}");
    }
    let r = b.get(&format!("{}/auth/login", env.server.url)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let wait: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(wait > 0 && wait <= 3600, "{wait}");
    assert!(r.location().is_empty(), "no login was started");
}

/// Finding 7: a scrape reads counters kept on change; it does not scan
/// the store (the gauges move with logins and logouts, with no background
/// pass running in this harness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_gauges_follow_logins_and_logouts_without_a_scan() {
    let env = Env::new().await;
    let gauge = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("spotoken_active_sessions "))
            .map(str::to_owned)
    };
    let scrape = || async {
        client()
            .get(format!("{}/metrics", env.server.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    assert_eq!(gauge(&scrape().await).as_deref(), Some("0"));
    let mut b = Browser::default();
    b.login(&env.server.url).await;
    assert_eq!(gauge(&scrape().await).as_deref(), Some("1"));
    let r = b
        .send(
            reqwest::Method::POST,
            &format!("{}/auth/logout", env.server.url),
            &[("X-CSRF", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(gauge(&scrape().await).as_deref(), Some("0"));
}

/// Finding 8: a login that fails on the provider's side shows the browser
/// a generic message with the request id, never the provider's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_callback_shows_a_request_id_not_the_providers_text() {
    let env = Env::new().await;
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 500,
        text: Some("internal trace: token=BQDxk2secretlookingvalue0123456789 at db01".into()),
        content_type: Some("text/plain".into()),
        times: 10,
        ..Failure::default()
    });
    let mut b = Browser::default();
    let r = b.login_with(&env.server.url, |c| c).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    let id = r.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        r.body.contains(&id),
        "the page names the request id: {}",
        r.body
    );
    for leaked in ["BQDxk2secret", "db01", "internal trace"] {
        assert!(!r.body.contains(leaked), "{leaked} shown: {}", r.body);
    }
}

/// Issue 17: the proxy decides a 401 by its status (a plain-text one is
/// refreshed and retried), and passes Spotify's plain-text 403s through as
/// they came, naming no scope, with the session kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_401_and_403_from_spotify() {
    let env = Env::new().await;
    let url = &env.server.url;
    let mut b = Browser::default();
    b.login(url).await;
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 401,
        text: Some("no JSON here".into()),
        content_type: Some("text/plain".into()),
        ..Failure::default()
    });
    // A while after the token was obtained (a 401 to one moments old is
    // passed on without a refresh).
    env.server
        .advance(spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS);
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        env.emu.counters().token_outcome("refresh_token", "ok"),
        1,
        "one refresh, then the retry"
    );
    env.emu.update(|s| s.owner_premium = false);
    let r = b.get(&format!("{url}/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, spotoken_emulator::OWNER_PREMIUM_REQUIRED);
    assert!(!r.headers.contains_key("spotoken-missing-scope"));
    env.emu.update(|s| s.owner_premium = true);
    assert_eq!(
        b.get(&format!("{url}/api/v1/me")).await.status,
        StatusCode::OK
    );
}
