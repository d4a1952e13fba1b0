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

pub mod auth;
pub mod config;
pub mod cookies;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod refresher;
pub mod state;
pub mod trace;

use std::future::Future;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{any, get};
use axum::serve::ListenerExt as _;

pub use config::ServerConfig;
pub use metrics::Metrics;
pub use state::AppState;

/// The demo page served at `/` with `--demo`.
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// The application: `/api/…` requests go straight to the proxy (with the same
/// request log and id as every other request), the rest through the router. Proxied calls are the
/// server's hot path, and the router's matching, boxed route services and
/// middleware cost a fifth of such a request's instructions (counted with
/// callgrind, docs/BENCHMARKS.md).
pub fn app(state: AppState) -> App {
    App {
        router: router(state.clone()),
        state,
    }
}

/// See [`app`]. A `tower::Service` for `oneshot` in tests, and a make-service
/// for `axum::serve`.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
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
        let path = req.uri().path();
        if path.len() > "/api/".len() && path.starts_with("/api/") {
            let state = self.state.clone();
            Box::pin(async move { Ok(trace::traced(req, |req| proxy::handle(state, req)).await) })
        } else {
            let router = self.router.clone();
            Box::pin(async move { tower::ServiceExt::oneshot(router, req).await })
        }
    }
}

impl<'a, L: axum::serve::Listener> tower::Service<axum::serve::IncomingStream<'a, L>> for App {
    type Response = App;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<App, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: axum::serve::IncomingStream<'a, L>) -> Self::Future {
        std::future::ready(Ok(self.clone()))
    }
}

/// Every route but the proxied paths, which [`App`] takes first.
fn router(state: AppState) -> Router {
    let mut r = Router::new()
        .merge(auth::routes())
        .route("/api", any(proxy::not_a_path))
        .route("/api/", any(proxy::not_a_path))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    if state.config.demo {
        r = r.route("/", get(demo));
    }
    r.layer(axum::middleware::from_fn(trace::log_requests))
        .with_state(state)
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
    refresher: refresher::RefresherConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on_threads(listener, state, refresher, shutdown, 1).await
}

/// Blocking threads per server thread. The store's blocking work is short and
/// mostly serialized (SQLite reads share one connection; writes go to the
/// writer thread), so more threads only wait, each with its own stack and
/// malloc arena: uncapped, a login storm grew the server to 60 threads and
/// its memory from ~35 MB to ~60 MB.
pub const BLOCKING_THREADS: usize = 8;

/// Like [`serve`], with the listener served from `threads` threads: this one
/// and `threads - 1` more, each running its own single-threaded runtime that
/// accepts connections and serves them to the end, upstream calls included
/// (the upstream pool is per thread, see [`proxy`]). A proxied request then
/// never crosses threads: no work stealing, no cross-thread wake-ups, which on
/// a loaded machine cost more than the request itself (docs/BENCHMARKS.md).
/// Called from a current-thread runtime, that is nginx's model of one event
/// loop per core. The state (sessions cache, token engine, store) is shared.
pub async fn serve_on_threads(
    listener: tokio::net::TcpListener,
    state: AppState,
    refresher: refresher::RefresherConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    threads: usize,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let mut workers = Vec::new();
    for i in 1..threads.max(1) {
        let (listener, state, mut stopped) =
            (listener.try_clone()?, state.clone(), stopped.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("spotoken-serve-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    tokio::runtime::Builder::new_current_thread()
                        .max_blocking_threads(BLOCKING_THREADS)
                        .enable_all()
                        .build()?
                        .block_on(serve_listener(listener, state, async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        }))
                })?,
        );
    }
    let background = tokio::spawn(refresher::run(state.clone(), refresher));
    let on_signal = stop.clone();
    let result = serve_listener(listener, state, async move {
        shutdown.await;
        let _ = on_signal.send(true);
    })
    .await;
    let _ = stop.send(true);
    background.abort();
    for w in workers {
        match tokio::task::spawn_blocking(move || w.join()).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "a server thread failed"),
            _ => tracing::error!("a server thread panicked"),
        }
    }
    result
}

async fn serve_listener(
    listener: std::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
