//! `/healthz` (the process answers), `/readyz` (the store answers) and
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::state::AppState;

/// Liveness.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the token store and the session store answer.
pub async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let tokens = st.tokens.store().ping().await;
    let sessions = st.sessions.session_accounts(i64::MAX).await.map(|_| ());
    match tokens.and(sessions) {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store unreachable\n".to_owned(),
            )
        }
    }
}

/// Prometheus metrics. Costs no store query: the gauges are kept as
/// counters (see [`crate::Metrics`]), so a scrape cannot be made to scan
/// every session.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let (active, reauth) = st.metrics.gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(active, reauth),
    )
}
