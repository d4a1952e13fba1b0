//! Prometheus metrics, rendered by hand: a few counters and one histogram do
//! not need a registry.

use spotoken::core::sync::LockUnpoisoned as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Shards of the per-request counters. Every proxied request updates them,
/// from every event loop at once; on one shared set of counters each update
/// would take the cache line from the other core (a cumulative histogram
/// made that 16 contended updates per request). Each thread updates its own
/// shard; `/metrics` adds them up.
const SHARDS: usize = 8;

/// Proxied requests are counted per status code below this: every code HTTP
/// defines (100–599); a status outside is not counted by code.
const STATUSES: usize = 600;

/// One shard, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    by_status: [AtomicU64; STATUSES],
    /// Requests per latency bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    /// Started minus finished on this shard (a request may finish on another
    /// thread than it started on, so one shard can go below zero).
    in_flight: AtomicI64,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }
}

thread_local! {
    /// This thread's shard.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// The `# HELP` and `# TYPE` lines of a metric.
fn describe(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// The server's counters.
pub struct Metrics {
    refreshes: Mutex<BTreeMap<&'static str, u64>>,
    shards: Box<[Shard; SHARDS]>,
    /// Sessions that have not ended: set by each background pass (which
    /// lists them anyway), moved by logins and logouts here in between, so
    /// a scrape reads two numbers instead of scanning the store.
    sessions: AtomicI64,
    /// Accounts needing a new login, as the last census found them.
    reauth_required: AtomicI64,
    /// The background refresher's passes.
    passes: Mutex<Passes>,
    /// When the gauges' last census ran (engine clock; 0: never).
    census_at: AtomicI64,
}

/// The background refresher's passes, added up, and the last one.
#[derive(Default)]
struct Passes {
    count: u64,
    seconds: f64,
    total: crate::refresher::PassReport,
    last: crate::refresher::PassReport,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            refreshes: Mutex::default(),
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
            sessions: AtomicI64::new(0),
            reauth_required: AtomicI64::new(0),
            passes: Mutex::default(),
            census_at: AtomicI64::new(0),
        }
    }
}

/// A proxied request in flight, until dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.shard().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    fn shard(&self) -> &Shard {
        &self.shards[SHARD.with(|s| *s)]
    }

    /// Counts a refresh outcome.
    pub fn refresh(&self, outcome: &'static str) {
        *self.refreshes.lock_unpoisoned().entry(outcome).or_default() += 1;
    }

    /// Counts a proxied request as in flight until the guard is dropped.
    pub fn started(&self) -> InFlight<'_> {
        self.shard().in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Counts a proxied request.
    pub fn proxied(&self, status: u16, took: Duration) {
        let shard = self.shard();
        if let Some(c) = shard.by_status.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.latency_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A session began (a login on this instance).
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// A session ended (a logout on this instance).
    pub fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// What the refresher's census counted: the sessions that have not
    /// ended and, when known, the accounts that need a new login.
    pub fn counted(&self, sessions: usize, reauth_required: Option<usize>) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.sessions.store(n(sessions), Ordering::Relaxed);
        if let Some(r) = reauth_required {
            self.reauth_required.store(n(r), Ordering::Relaxed);
        }
    }

    /// Whether the gauges' census is due at `now` (once every `every`
    /// seconds, the first time at once); claims it if so.
    pub fn census_due(&self, now: i64, every: i64) -> bool {
        let last = self.census_at.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .census_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// What a background pass did.
    pub fn pass(&self, report: crate::refresher::PassReport) {
        let mut p = self.passes.lock_unpoisoned();
        p.count += 1;
        p.seconds += report.took.as_secs_f64();
        p.total.due += report.due;
        p.total.refreshed += report.refreshed;
        p.total.skipped += report.skipped;
        p.last = report;
    }

    /// The two gauges: (active sessions, accounts needing a new login).
    pub fn gauges(&self) -> (usize, usize) {
        let n = |v: &AtomicI64| usize::try_from(v.load(Ordering::Relaxed)).unwrap_or(0);
        (n(&self.sessions), n(&self.reauth_required))
    }

    fn total(&self, each: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(each).sum()
    }

    /// The Prometheus text format, with gauges computed by the caller.
    pub fn render(&self, active_sessions: usize, reauth_required: usize) -> String {
        let mut s = String::new();
        self.render_counters(&mut s);
        self.render_latency(&mut s);
        self.render_gauges(&mut s, active_sessions, reauth_required);
        self.render_passes(&mut s);
        s
    }

    /// Refreshes by outcome and proxied requests by status.
    fn render_counters(&self, s: &mut String) {
        describe(
            s,
            "spotoken_refreshes_total",
            "counter",
            "Token refreshes by outcome.",
        );
        for (k, v) in self.refreshes.lock_unpoisoned().iter() {
            let _ = writeln!(s, "spotoken_refreshes_total{{outcome=\"{k}\"}} {v}");
        }
        describe(
            s,
            "spotoken_proxy_requests_total",
            "counter",
            "Proxied Web API requests by status.",
        );
        for status in 0..STATUSES {
            let v = self.total(|sh| sh.by_status[status].load(Ordering::Relaxed));
            if v > 0 {
                let _ = writeln!(
                    s,
                    "spotoken_proxy_requests_total{{status=\"{status}\"}} {v}"
                );
            }
        }
    }

    /// The proxied requests' latency histogram.
    fn render_latency(&self, s: &mut String) {
        describe(
            s,
            "spotoken_proxy_request_duration_seconds",
            "histogram",
            "Proxied request latency.",
        );
        let mut count = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            count += self.total(|sh| sh.buckets[i].load(Ordering::Relaxed));
            let _ = writeln!(
                s,
                "spotoken_proxy_request_duration_seconds_bucket{{le=\"{b}\"}} {count}"
            );
        }
        count += self.total(|sh| sh.buckets[BUCKETS.len()].load(Ordering::Relaxed));
        let _ = writeln!(
            s,
            "spotoken_proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "spotoken_proxy_request_duration_seconds_sum {}",
            self.total(|sh| sh.latency_sum_micros.load(Ordering::Relaxed)) as f64 / 1e6
        );
        let _ = writeln!(s, "spotoken_proxy_request_duration_seconds_count {count}");
    }

    /// Requests in flight, sessions and accounts needing a login.
    fn render_gauges(&self, s: &mut String, active_sessions: usize, reauth_required: usize) {
        let in_flight: i64 = self
            .shards
            .iter()
            .map(|sh| sh.in_flight.load(Ordering::Relaxed))
            .sum();
        describe(
            s,
            "spotoken_proxy_in_flight",
            "gauge",
            "Proxied requests being served.",
        );
        let _ = writeln!(s, "spotoken_proxy_in_flight {}", in_flight.max(0));
        describe(
            s,
            "spotoken_active_sessions",
            "gauge",
            "Sessions that have not ended.",
        );
        let _ = writeln!(s, "spotoken_active_sessions {active_sessions}");
        describe(
            s,
            "spotoken_accounts_reauth_required",
            "gauge",
            "Accounts that need a new login.",
        );
        let _ = writeln!(s, "spotoken_accounts_reauth_required {reauth_required}");
    }

    /// The background refresher's metrics.
    fn render_passes(&self, s: &mut String) {
        let p = self.passes.lock_unpoisoned();
        describe(
            s,
            "spotoken_refresher_pass_duration_seconds",
            "summary",
            "Background refresher passes and their time.",
        );
        let _ = writeln!(
            s,
            "spotoken_refresher_pass_duration_seconds_sum {}",
            p.seconds
        );
        let _ = writeln!(
            s,
            "spotoken_refresher_pass_duration_seconds_count {}",
            p.count
        );
        describe(
            s,
            "spotoken_refresher_accounts_total",
            "counter",
            "Accounts met by background passes: due (claimed by this instance), \
             refreshed (of those, left with a fresh token), skipped (due, but being \
             refreshed by another instance).",
        );
        let results = |r: &crate::refresher::PassReport| {
            [
                ("due", r.due),
                ("refreshed", r.refreshed),
                ("skipped", r.skipped),
            ]
        };
        for (result, n) in results(&p.total) {
            let _ = writeln!(
                s,
                "spotoken_refresher_accounts_total{{result=\"{result}\"}} {n}"
            );
        }
        describe(
            s,
            "spotoken_refresher_last_pass_accounts",
            "gauge",
            "The same, for the last pass alone.",
        );
        for (result, n) in results(&p.last) {
            let _ = writeln!(
                s,
                "spotoken_refresher_last_pass_accounts{{result=\"{result}\"}} {n}"
            );
        }
        describe(
            s,
            "spotoken_refresher_last_pass_seconds",
            "gauge",
            "How long the last background pass took.",
        );
        let _ = writeln!(
            s,
            "spotoken_refresher_last_pass_seconds {}",
            p.last.took.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[test]
    fn histogram_is_cumulative_and_shards_add_up() {
        let m = std::sync::Arc::new(Metrics::default());
        m.proxied(200, Duration::from_micros(500));
        m.proxied(200, Duration::from_millis(3));
        let other = m.clone();
        std::thread::spawn(move || {
            other.proxied(404, Duration::from_secs(20));
            other.proxied(200, Duration::from_millis(30));
        })
        .join()
        .expect("thread");
        let text = m.render(2, 1);
        assert_eq!(
            line(&text, "spotoken_proxy_requests_total{status=\"200\"}"),
            "3"
        );
        assert_eq!(
            line(&text, "spotoken_proxy_requests_total{status=\"404\"}"),
            "1"
        );
        let bucket = |le: &str| {
            line(
                &text,
                &format!("spotoken_proxy_request_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
            .to_owned()
        };
        assert_eq!(bucket("0.001"), "1");
        assert_eq!(bucket("0.005"), "2");
        assert_eq!(bucket("0.05"), "3");
        assert_eq!(bucket("10"), "3");
        assert_eq!(bucket("+Inf"), "4");
        assert_eq!(
            line(&text, "spotoken_proxy_request_duration_seconds_count"),
            "4"
        );
        assert_eq!(
            line(&text, "spotoken_proxy_request_duration_seconds_sum"),
            "20.0335"
        );
        assert_eq!(line(&text, "spotoken_active_sessions"), "2");
        assert_eq!(line(&text, "spotoken_accounts_reauth_required"), "1");
    }

    #[test]
    fn in_flight_counts_requests_until_they_end_wherever_they_end() {
        let m = std::sync::Arc::new(Metrics::default());
        let a = m.started();
        let b = m.started();
        assert_eq!(line(&m.render(0, 0), "spotoken_proxy_in_flight"), "2");
        drop(a);
        assert_eq!(line(&m.render(0, 0), "spotoken_proxy_in_flight"), "1");
        let m2 = m.clone();
        std::thread::scope(|s| {
            s.spawn(move || drop(b));
        });
        assert_eq!(line(&m2.render(0, 0), "spotoken_proxy_in_flight"), "0");
    }
}
