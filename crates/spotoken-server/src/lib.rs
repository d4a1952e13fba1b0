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

/// The router.
pub fn app(state: AppState) -> Router {
    let mut r = Router::new()
        .merge(auth::routes())
        .route("/api/{*path}", any(proxy::proxy))
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
    let background = tokio::spawn(refresher::run(state.clone(), refresher));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let result = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    background.abort();
    result
}
