//! The app's request budgets in `serve` (`--token-budget`, `--api-budget`)
//! and the pause a provider's 429 puts on every instance.
//!
//! Spotify limits an app over a rolling window whichever instance sends, so
//! the budgets and the pause live where every instance of the app looks: a
//! row per budget in PostgreSQL (in memory on SQLite, where one instance
//! serves). The token budget is the engine's [`RequestBudget`] hook; the
//! Web API budget is asked by the proxy before each request it sends. A
//! browser waits for budget at most [`BROWSER_WAIT`], then gets 503 with
//! `Retry-After`; the background refresher, refused, ends its pass and
//! pauses as it does for any `Retry-After`.
//!
//! [`RequestBudget`]: spotoken::budget::RequestBudget

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use spotoken::RateLimiter;
use spotoken::budget::{Budget, Rate, RequestBudget as _, SharedLedger};
use spotoken::engine::Clock;

/// The longest a request waits for budget before it is answered 503 with
/// `Retry-After`: a window of a per-second budget, and then some.
pub const BROWSER_WAIT: Duration = Duration::from_secs(2);

/// The token endpoint's and the Web API's budgets, each optional.
#[derive(Clone, Default)]
pub struct Budgets {
    /// Requests to the token endpoint, from the whole fleet.
    pub token: Option<Arc<Budget>>,
    /// Web API requests through the proxy, from the whole fleet.
    pub api: Option<Arc<Budget>>,
}

impl Budgets {
    /// The budgets of the app `client_id` (instances of one app share them;
    /// other apps on the same database do not), kept in `ledger`, on the
    /// engine's `clock`; a request waits at most `wait` for budget.
    pub fn new(
        client_id: &str,
        token: Option<Rate>,
        api: Option<Rate>,
        ledger: Arc<dyn SharedLedger>,
        clock: Clock,
        wait: Duration,
    ) -> Self {
        let make = |name: &str, rate: Rate, by: RateLimiter| {
            Arc::new(
                Budget::new(
                    format!("{name}:{client_id}"),
                    rate,
                    ledger.clone(),
                    clock.clone(),
                )
                .limiter(by)
                .max_wait(wait),
            )
        };
        Self {
            token: token.map(|r| make("token", r, RateLimiter::TokenEndpoint)),
            api: api.map(|r| make("api", r, RateLimiter::WebApi)),
        }
    }

    /// Before a proxied request: one request of the Web API budget, if set.
    pub async fn spend_api(&self) -> Result<(), spotoken::Error> {
        match &self.api {
            Some(b) => b.acquire().await,
            None => Ok(()),
        }
    }

    /// After a proxied request: a 429 with `Retry-After` from the Web API
    /// pauses the Web API budget for every instance (with an API budget set;
    /// without one the 429 only passes through to the browser).
    pub async fn note_api_answer(&self, status: StatusCode, headers: &HeaderMap, now: i64) {
        let Some(b) = &self.api else { return };
        if status != StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        let Some(wait) = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| spotoken::core::wait::parse_retry_after(v, SystemTime::now()))
        else {
            return;
        };
        // Whole seconds: one more keeps the next request after the wait.
        let secs = i64::try_from(wait.as_secs().max(1)).unwrap_or(i64::MAX);
        b.pause_until(now.saturating_add(secs).saturating_add(1))
            .await;
    }

    /// `/readyz`'s view: each budget, and whether the provider asked the app
    /// to wait (read from the shared ledger, so an instance that has sent
    /// nothing since still tells).
    pub async fn readiness(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (name, b) in [("token", &self.token), ("api", &self.api)] {
            let Some(b) = b else { continue };
            let paused = match b.shared_pause().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared budget");
                    b.stats().paused_for
                }
            };
            out.insert(
                name.to_owned(),
                json!({
                    "rate": b.rate().to_string(),
                    "paused": paused.is_some(),
                    "retry_after": paused.map(|p| p.as_secs()),
                }),
            );
        }
        Value::Object(out)
    }

    /// The shared pause on the token endpoint, if any (one read).
    pub async fn token_pause(&self) -> Option<Duration> {
        let b = self.token.as_ref()?;
        b.shared_pause().await.ok().flatten()
    }

    /// Prometheus lines: each budget's decisions and the pauses as this
    /// instance knows them (`token_wait`: the engine's own).
    pub fn render(&self, token_wait: Option<Duration>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP spotoken_upstream_paused_seconds How much longer the provider asked the app to wait, as this instance last learned (0: not paused).\n\
             # TYPE spotoken_upstream_paused_seconds gauge"
        );
        let paused = |b: &Option<Arc<Budget>>| b.as_ref().and_then(|b| b.stats().paused_for);
        let token = token_wait.max(paused(&self.token));
        for (name, p) in [("token", token), ("api", paused(&self.api))] {
            let _ = writeln!(
                s,
                "spotoken_upstream_paused_seconds{{upstream=\"{name}\"}} {}",
                p.map_or(0, |p| p.as_secs())
            );
        }
        if self.token.is_none() && self.api.is_none() {
            return s;
        }
        let _ = writeln!(
            s,
            "# HELP spotoken_budget_requests_total Requests asked of the app's budget, by decision (denied: answered with Retry-After, nothing sent).\n\
             # TYPE spotoken_budget_requests_total counter"
        );
        let each = [("token", &self.token), ("api", &self.api)];
        for (name, b) in each {
            let Some(b) = b else { continue };
            let st = b.stats();
            for (decision, v) in [("granted", st.granted), ("denied", st.denied)] {
                let _ = writeln!(
                    s,
                    "spotoken_budget_requests_total{{budget=\"{name}\",decision=\"{decision}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP spotoken_budget_per_second The app's budget, in requests per second.\n\
             # TYPE spotoken_budget_per_second gauge"
        );
        for (name, b) in each {
            let Some(b) = b else { continue };
            let r = b.rate();
            let _ = writeln!(
                s,
                "spotoken_budget_per_second{{budget=\"{name}\"}} {}",
                f64::from(r.requests) / f64::from(r.per_secs.max(1))
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotoken::budget::MemoryLedger;

    fn budgets(at: i64) -> Budgets {
        Budgets::new(
            "cid",
            Some("2/s".parse().expect("rate")),
            Some("6/m".parse().expect("rate")),
            Arc::new(MemoryLedger::default()),
            Arc::new(move || at),
            Duration::ZERO,
        )
    }

    #[tokio::test]
    async fn a_429_from_the_web_api_pauses_the_api_budget_only() {
        let b = budgets(1_000);
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "30".parse().expect("header"));
        b.note_api_answer(StatusCode::OK, &h, 1_000).await;
        assert!(b.spend_api().await.is_ok(), "a 200 pauses nothing");
        b.note_api_answer(StatusCode::TOO_MANY_REQUESTS, &h, 1_000)
            .await;
        let e = b.spend_api().await.expect_err("paused");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(31)));
        let ready = b.readiness().await;
        assert_eq!(ready["api"]["paused"], true);
        assert_eq!(ready["token"]["paused"], false);
        assert_eq!(ready["token"]["rate"], "2/s");
        let m = b.render(None);
        assert!(
            m.contains("spotoken_upstream_paused_seconds{upstream=\"api\"} 31"),
            "{m}"
        );
        assert!(
            m.contains("spotoken_budget_requests_total{budget=\"api\",decision=\"denied\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("spotoken_budget_per_second{budget=\"api\"} 0.1"),
            "{m}"
        );
    }
}
