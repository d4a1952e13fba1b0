//! `/healthz` (the process answers), `/readyz` (the store answers; and,
//! reported apart, whether the token endpoint can be reached and whether it
//! asked the app to wait) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::state::AppState;

/// Liveness.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness, as JSON: `store` (the token and session stores answer),
/// `token_endpoint` (a TCP connection to it opens, checked at most every
/// 10 s), `rate_limit` (whether the token endpoint asked this instance or,
/// through the shared budget, any instance to wait, and how much longer),
/// `budget` (each budget set, and whether it is paused) and `degraded`
/// (any of those pauses). The status is 503 only when the store fails: that
/// is this instance's to fix, while an unreachable or rate-limiting
/// provider is the same for every instance (a shared pause is seen by all
/// of them at once), and taking them all out of rotation would also stop
/// the app's pages and the sessions whose tokens are still fresh.
pub(crate) async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let tokens = st.tokens.store().ping().await;
    let sessions = st.sessions.session_accounts(i64::MAX).await.map(|_| ());
    let store = tokens.and(sessions);
    if let Err(e) = &store {
        tracing::warn!(error = %e, "not ready");
    }
    let reachable = st.token_endpoint_reachable().await;
    // This instance's own wait, or one another instance was told.
    let wait = st
        .tokens
        .token_endpoint_wait()
        .max(st.budgets.token_pause().await);
    let budgets = st.budgets.readiness().await;
    let degraded = wait.is_some()
        || budgets
            .as_object()
            .is_some_and(|m| m.values().any(|b| b["paused"] == true));
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": store.is_ok(),
        "degraded": degraded,
        "store": {"ok": store.is_ok()},
        "token_endpoint": {"reachable": reachable},
        "rate_limit": {
            "limited": wait.is_some(),
            "retry_after": wait.map(|w| w.as_secs()),
        },
        "budget": budgets,
    });
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Prometheus metrics. Costs no store query: the gauges are kept as
/// counters (see [`crate::Metrics`]), so a scrape cannot be made to scan
/// every session.
pub(crate) async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let (active, reauth) = st.metrics.gauges();
    let mut body = st.metrics.render(active, reauth);
    body.push_str(&st.budgets.render(st.tokens.token_endpoint_wait()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
