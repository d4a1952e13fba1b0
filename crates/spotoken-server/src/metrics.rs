//! Prometheus metrics, rendered by hand: a few counters and one histogram do
//! not need a registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The server's counters.
pub struct Metrics {
    refreshes: Mutex<BTreeMap<&'static str, u64>>,
    proxy: [AtomicU64; 600],
    buckets: [AtomicU64; 13],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            refreshes: Mutex::default(),
            proxy: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_micros: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a refresh outcome.
    pub fn refresh(&self, outcome: &'static str) {
        *self
            .refreshes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(outcome)
            .or_default() += 1;
    }

    /// Counts a proxied request.
    pub fn proxied(&self, status: u16, took: Duration) {
        if let Some(c) = self.proxy.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text format, with gauges computed by the caller.
    pub fn render(&self, active_sessions: usize, reauth_required: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP spotoken_refreshes_total Token refreshes by outcome."
        );
        let _ = writeln!(s, "# TYPE spotoken_refreshes_total counter");
        for (k, v) in self
            .refreshes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(s, "spotoken_refreshes_total{{outcome=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP spotoken_proxy_requests_total Proxied Web API requests by status."
        );
        let _ = writeln!(s, "# TYPE spotoken_proxy_requests_total counter");
        for (status, c) in self.proxy.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                let _ = writeln!(
                    s,
                    "spotoken_proxy_requests_total{{status=\"{status}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP spotoken_proxy_request_duration_seconds Proxied request latency."
        );
        let _ = writeln!(
            s,
            "# TYPE spotoken_proxy_request_duration_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "spotoken_proxy_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "spotoken_proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "spotoken_proxy_request_duration_seconds_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "spotoken_proxy_request_duration_seconds_count {count}");
        let _ = writeln!(
            s,
            "# HELP spotoken_active_sessions Sessions that have not ended."
        );
        let _ = writeln!(s, "# TYPE spotoken_active_sessions gauge");
        let _ = writeln!(s, "spotoken_active_sessions {active_sessions}");
        let _ = writeln!(
            s,
            "# HELP spotoken_accounts_reauth_required Accounts that need a new login."
        );
        let _ = writeln!(s, "# TYPE spotoken_accounts_reauth_required gauge");
        let _ = writeln!(s, "spotoken_accounts_reauth_required {reauth_required}");
        s
    }
}
