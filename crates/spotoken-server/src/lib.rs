//! # spotoken-server
//!
//! The backend-for-frontend behind `spotoken serve`. A single-page app must
//! never keep a refresh token where JavaScript can read it: the browser gets an
//! HttpOnly `__Host-` session cookie, the server keeps the tokens (encrypted, in
//! SQLite or in PostgreSQL shared by several instances) and proxies `/api/*` to
//! the Web API with the token injected.
//!
//! The server is a function: [`app`] builds the router over an [`AppState`];
//! tests call it with `oneshot` or serve it on port 0.
//!
//! | route | does |
//! |---|---|
//! | `GET /auth/login?return_to=/path` | starts a PKCE login (same-origin `return_to` only) |
//! | `GET /auth/callback` | checks state and browser binding, exchanges the code, new session id, redirects |
//! | `POST /auth/logout` | CSRF-checked; deletes the session and its tokens |
//! | `GET /auth/session` | who is logged in, scopes, expiries; never a token |
//! | `GET /auth/token` | CSRF-checked; a short-lived access token (Web Playback SDK) |
//! | `ANY /api/{path}` | the Web API with the bearer injected; 401 → refresh once, retry once |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus |
//! | anything else | the app: its files (`--static DIR`) or its server (`--app-upstream URL`) |

// Functions a reader can hold (the threshold is in clippy.toml); tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod activity;
mod app_proxy;
mod auth;
mod budget;
mod config;
mod cookies;
mod error;
mod http1;
mod limits;
mod metrics;
mod ops;
mod proxy;
mod refresher;
mod state;
mod static_files;
mod trace;
mod upstream;

use std::future::Future;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{any, get};

pub use budget::{BROWSER_WAIT, Budgets};
pub use config::ServerConfig;
pub use cookies::SameSite;
pub use error::CODES as ERROR_CODES;
pub use limits::LoginLimits;
pub use metrics::Metrics;
pub use refresher::{PassReport, RefresherConfig, pass_report};
pub use state::AppState;

/// The checks the fuzz targets run (`fuzz/`); not a promise to users.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

/// The demo page served at `/` with `--demo`.
const DEMO_PAGE: &str = include_str!("demo.html");

/// The application: `/api/…` requests go straight to the proxy (with the same
/// request log and id as every other request), the rest through the router:
/// proxied calls are the server's hot path, and the router's matching, boxed
/// route services and middleware were a large share of their cost
/// (docs/BENCHMARKS.md).
pub fn app(state: AppState) -> App {
    App {
        router: router(state.clone()),
        state,
        peer: None,
    }
}

/// `/metrics` alone, for a listener of its own (`--metrics-bind`), so the
/// metrics need not be reachable where browsers are.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

/// See [`app`]: a `tower::Service`, for `oneshot` in tests; [`serve`] and
/// [`serve_on_threads`] serve it.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
    /// The connection's peer, once it is known.
    peer: Option<std::net::SocketAddr>,
}

impl tower::Service<axum::extract::Request> for App {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.dispatch(req).await) })
    }
}

impl App {
    /// `/api/…` to the proxy, the rest to the router.
    async fn dispatch<B>(self, req: axum::http::Request<B>) -> axum::response::Response
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let path = req.uri().path();
        if path.len() > "/api/".len() && path.starts_with("/api/") {
            let state = self.state;
            trace::traced(req, |req, _| proxy::handle(state, req)).await
        } else {
            let mut req = req.map(axum::body::Body::new);
            let client = state::client_addr(
                self.peer.map(|p| p.ip()),
                req.headers(),
                &self.state.config.trusted_proxies,
            );
            req.extensions_mut().insert(state::ClientAddr(client));
            match tower::ServiceExt::oneshot(self.router, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}

/// Every route but the proxied paths, which [`App`] takes first.
fn router(state: AppState) -> Router {
    let mut r = Router::new()
        .merge(auth::routes())
        .route("/api", any(proxy::not_a_path))
        .route("/api/", any(proxy::not_a_path))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    if state.config.metrics_on_main {
        r = r.route("/metrics", get(ops::metrics));
    }
    if state.config.demo {
        r = r.route("/", get(demo));
    }
    r.fallback(front)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(trace::log_requests))
        .with_state(state)
}

/// Every path that is not a route of ours: the app, when there is one.
/// `/auth/…` stays ours whatever it names.
async fn front(
    axum::extract::State(st): axum::extract::State<AppState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let path = req.uri().path();
    if path == "/auth" || path.starts_with("/auth/") {
        return error::AppError::NotFound.into_response();
    }
    match &st.front {
        state::Front::Static(files) => files.answer(&req.into_parts().0).await,
        state::Front::App(app) => app.answer(&st, req).await,
        state::Front::None => error::AppError::NotFound.into_response(),
    }
}

async fn method_not_allowed() -> error::AppError {
    error::AppError::MethodNotAllowed
}

async fn demo() -> impl IntoResponse {
    let mut resp = Html(DEMO_PAGE).into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'",
        ),
    );
    resp
}

/// Serves `app(state)` on `listener` with the background refresher until
/// `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    refresher: RefresherConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on_threads(listener, state, refresher, shutdown, 1).await
}

/// Blocking threads per server thread. The store's blocking work is short and
/// mostly serialized (SQLite reads share one connection; writes go to the
/// writer thread), so more threads only wait, each with its own stack and
/// malloc arena (what an uncapped pool cost: docs/BENCHMARKS.md).
pub const BLOCKING_THREADS: usize = 8;

/// Like [`serve`], with connections served by `threads` threads: this one
/// and `threads - 1` more, each running its own single-threaded runtime that
/// serves the connections given to it to the end, upstream calls included
/// (the upstream pool is per thread). A proxied request then never crosses
/// threads: no work stealing, no cross-thread wake-ups, which on a loaded
/// machine cost more than the request itself. Called from a current-thread
/// runtime, that is nginx's model of one event loop per core. This thread
/// accepts, and gives each connection to the loop with the fewest open
/// connections: loops that each accepted from a shared socket took whatever
/// burst of connections reached them first, and ended up unevenly loaded
/// (docs/BENCHMARKS.md). The state (sessions cache, token engine, store) is
/// shared.
pub async fn serve_on_threads(
    listener: tokio::net::TcpListener,
    state: AppState,
    refresher: RefresherConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    threads: usize,
) -> std::io::Result<()> {
    let app = app(state.clone());
    let here = Loop::default();
    let mut others = Vec::new();
    let mut workers = Vec::new();
    for i in 1..threads.max(1) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = app.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("spotoken-serve-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    tokio::runtime::Builder::new_current_thread()
                        .max_blocking_threads(BLOCKING_THREADS)
                        .enable_all()
                        .build()?
                        .block_on(serve_given(rx, app));
                    Ok(())
                })?,
        );
        others.push((tx, Loop::default()));
    }
    let background = tokio::spawn(refresher::run(state.clone(), refresher));
    let logouts = tokio::spawn(state::watch_logouts(state));
    let graceful = Graceful::new();
    let mut listener = listener;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        match least_loaded(here.count(), others.iter().map(|(_, l)| l.count())) {
            None => serve_connection(&graceful, &app, tcp, here.open()),
            Some(i) => {
                let (tx, l) = &others[i];
                let guard = l.open();
                match tcp.into_std() {
                    Ok(tcp) => {
                        // A loop that is gone dropped the connection with it.
                        let _ = tx.send((tcp, guard));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
                }
            }
        }
    }
    drop(listener);
    drop(others);
    graceful.shutdown().await;
    background.abort();
    logouts.abort();
    for w in workers {
        match tokio::task::spawn_blocking(move || w.join()).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "a server thread failed"),
            _ => tracing::error!("a server thread panicked"),
        }
    }
    Ok(())
}

/// Which of the other loops should take a new connection, given this loop's
/// open connections and theirs: the one with the fewest, if it has fewer
/// than this one (ties stay here: no hand-over).
fn least_loaded(here: usize, others: impl Iterator<Item = usize>) -> Option<usize> {
    others
        .enumerate()
        .filter(|&(_, n)| n < here)
        .min_by_key(|&(_, n)| n)
        .map(|(i, _)| i)
}

/// The open connections of one event loop.
#[derive(Clone, Default)]
struct Loop(std::sync::Arc<std::sync::atomic::AtomicUsize>);

/// One open connection of a [`Loop`], until dropped.
struct Open(Loop);

impl Loop {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn open(&self) -> Open {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(self.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        (self.0)
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves the connections another thread hands over until it stops handing
/// them, then lets in-flight requests finish.
async fn serve_given(
    mut given: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, Open)>,
    app: App,
) {
    let graceful = Graceful::new();
    while let Some((tcp, open)) = given.recv().await {
        match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => serve_connection(&graceful, &app, tcp, open),
            Err(e) => tracing::warn!(error = %e, "cannot serve a connection"),
        }
    }
    graceful.shutdown().await;
}

/// The largest request head (request line and headers) a connection reads;
/// browsers send a few KiB, and proxies in front usually allow 8 to 32 KiB.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Serves one connection on this thread with hyper's HTTP/1 server; on
/// shutdown, idle keep-alive connections close at once and in-flight
/// requests finish. HTTP/1 only: browsers speak HTTP/2 only over TLS, which
/// a TLS-terminating proxy in front of this server ends. Plain hyper rather
/// than `axum::serve`, which adds protocol detection and a read-rewinding
/// layer to every read, and boxes every request body (docs/BENCHMARKS.md).
fn serve_connection(graceful: &Graceful, app: &App, tcp: tokio::net::TcpStream, open: Open) {
    let _ = tcp.set_nodelay(true);
    let header_read_timeout = app.state.config.header_read_timeout;
    let mut app = app.clone();
    app.peer = tcp.peer_addr().ok();
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(app.dispatch(req).await) }
    });
    // half_close: hyper would otherwise poll the socket for an early EOF
    // while a request is in flight, and that read reserves a new read
    // buffer (the old one is still referenced by the request's headers): an
    // 8 KiB allocation per request. A client that goes away is still
    // noticed when its response is written.
    // Without a timer hyper has no header read timeout at all: a client
    // could hold a connection open forever, idle or sending a header a byte
    // at a time.
    // A request head (request line and headers) over the limit is refused
    // with 431 before any route runs; without a limit hyper stops only at
    // its read buffer's size, and a header of any size a read buffer holds
    // would reach the handlers.
    let conn = hyper::server::conn::http1::Builder::new()
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        // WebSockets to the app's server (`--app-upstream`), such as a dev
        // server's hot reload.
        .with_upgrades();
    let mut stop = graceful.0.subscribe();
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::trace!(error = %e, "connection ended with an error");
        }
        drop(stop);
        drop(open);
    });
}

/// Graceful shutdown for connections that may be upgraded (hyper-util's
/// `GracefulShutdown` does not take them): each connection holds a receiver;
/// [`Graceful::shutdown`] tells them all to finish their request in flight
/// and close, then waits until every one has.
struct Graceful(tokio::sync::watch::Sender<()>);

impl Graceful {
    fn new() -> Self {
        Self(tokio::sync::watch::Sender::new(()))
    }

    async fn shutdown(self) {
        self.0.send_replace(());
        self.0.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn a_trusted_proxy_names_the_client_and_no_one_else_does() {
        use axum::http::{HeaderMap, HeaderValue};
        let proxy: std::net::IpAddr = [127, 0, 0, 1].into();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7"),
        );
        let at =
            |peer, trusted: &[std::net::IpAddr]| super::state::client_addr(Some(peer), &h, trusted);
        assert_eq!(
            at(proxy, &[proxy]),
            Some([203, 0, 113, 7].into()),
            "the entry the proxy added"
        );
        assert_eq!(at(proxy, &[]), Some(proxy), "not trusted: the peer");
        let other: std::net::IpAddr = [198, 51, 100, 1].into();
        assert_eq!(at(other, &[proxy]), Some(other));
        assert_eq!(
            super::state::client_addr(Some(proxy), &HeaderMap::new(), &[proxy]),
            Some(proxy),
            "no header: the peer"
        );
    }

    #[test]
    fn connections_go_to_the_least_loaded_loop() {
        assert_eq!(least_loaded(0, [0, 0].into_iter()), None, "ties stay here");
        assert_eq!(least_loaded(1, [0, 0].into_iter()), Some(0));
        assert_eq!(least_loaded(3, [2, 1, 1].into_iter()), Some(1));
        assert_eq!(least_loaded(1, [1, 2].into_iter()), None);
        assert_eq!(least_loaded(5, std::iter::empty()), None, "one loop");
        // 64 connections opened at once end up spread evenly.
        let mut open = [0usize; 3];
        for _ in 0..64 {
            let i = least_loaded(open[0], open[1..].iter().copied()).map_or(0, |i| i + 1);
            open[i] += 1;
        }
        assert_eq!(open, [22, 21, 21]);
    }
}
