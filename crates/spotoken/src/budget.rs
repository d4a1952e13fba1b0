//! Request budgets shared by every instance of an app.
//!
//! A provider's rate limit is the app's, not one process's: with several
//! server instances, each must know what the others sent. [`RequestBudget`]
//! is the engine's hook: it is asked before every token-endpoint request
//! (refresh, code exchange, device poll) and told when the endpoint asked
//! everyone to wait. [`Budget`] implements it over a [`SharedLedger`] (one
//! PostgreSQL row per budget, or [`MemoryLedger`] in one process), deciding
//! with the pure [`spotoken_core::budget`] core.
//!
//! A busy instance reserves a small slice of a window's budget at a time
//! ([`Rate::slice`]), so it asks the ledger about once per slice rather than
//! once per request; a slice unused when its window ends is lost, never
//! carried over, so the fleet's total in a window stays within the budget.
//! What an instance learns (a spent window, a pause) it remembers until
//! that ends, so a refused caller costs no round trip either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spotoken_core::RateLimiter;
pub use spotoken_core::budget::{Ledger, Rate, Taken};

use crate::Error;
use crate::engine::Clock;
use spotoken_core::sync::LockUnpoisoned as _;

/// The engine's hook before each request to the token endpoint.
///
/// ```
/// # use spotoken::budget::{Budget, MemoryLedger, Rate};
/// # use std::sync::Arc;
/// let budget = Budget::new(
///     "token",
///     "10/s".parse::<Rate>().expect("rate"),
///     Arc::new(MemoryLedger::default()),
///     Arc::new(spotoken::store::unix_now),
/// );
/// let tokens = spotoken::Tokens::builder().request_budget(Arc::new(budget));
/// # let _ = tokens;
/// ```
#[async_trait]
pub trait RequestBudget: Send + Sync {
    /// Called before each token-endpoint request: `Ok` to send it, or the
    /// error to answer instead ([`Error::RateLimited`] with the wait).
    async fn acquire(&self) -> Result<(), Error>;

    /// The endpoint asked the app to wait until `until` (unix seconds, by
    /// the engine's clock): no request from any instance before then.
    async fn pause_until(&self, until: i64);
}

/// Where a budget's [`Ledger`] is kept: shared by every instance that
/// shares the budget. `take` and `pause` are each atomic.
#[async_trait]
pub trait SharedLedger: Send + Sync {
    /// [`Rate::take`] on the ledger named `key`, stored atomically.
    async fn take(&self, key: &str, rate: Rate, now: i64, want: u32) -> Result<Taken, Error>;
    /// [`spotoken_core::budget::pause`] on the ledger named `key`.
    async fn pause(&self, key: &str, until: i64) -> Result<(), Error>;
    /// The ledger as it is (a default one if never used).
    async fn read(&self, key: &str) -> Result<Ledger, Error>;
}

/// Ledgers in this process only: for one instance (SQLite).
#[derive(Default)]
pub struct MemoryLedger(Mutex<HashMap<String, Ledger>>);

impl MemoryLedger {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut map = self.0.lock_unpoisoned();
        f(map.entry(key.to_owned()).or_default())
    }
}

#[async_trait]
impl SharedLedger for MemoryLedger {
    async fn take(&self, key: &str, rate: Rate, now: i64, want: u32) -> Result<Taken, Error> {
        Ok(self.with(key, |l| {
            let (next, taken) = rate.take(*l, now, want);
            *l = next;
            taken
        }))
    }

    async fn pause(&self, key: &str, until: i64) -> Result<(), Error> {
        self.with(key, |l| *l = spotoken_core::budget::pause(*l, until));
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Ledger, Error> {
        Ok(self.with(key, |l| *l))
    }
}

/// What this instance holds of a budget.
#[derive(Debug, Default)]
struct Local {
    /// The window the reserved slice counts in.
    window_start: i64,
    /// Reserved and not yet used.
    left: u32,
    /// No point asking the ledger before this: the window is spent or the
    /// provider asked to wait.
    closed_until: i64,
    /// The end of the last pause this instance learned of.
    paused_until: i64,
}

/// A budget shared through a [`SharedLedger`].
pub struct Budget {
    key: String,
    rate: Rate,
    ledger: std::sync::Arc<dyn SharedLedger>,
    clock: Clock,
    limiter: RateLimiter,
    max_wait: Duration,
    local: Mutex<Local>,
    granted: AtomicU64,
    denied: AtomicU64,
}

/// A budget's counters, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// Requests let through by this instance.
    pub granted: u64,
    /// Requests refused (their callers were told to retry later).
    pub denied: u64,
    /// How much longer the last pause this instance learned of lasts.
    pub paused_for: Option<Duration>,
}

impl Budget {
    /// A budget named `key` (every instance sharing it uses the same key)
    /// of `rate`, kept in `ledger`, on `clock` (the engine's). For the token
    /// endpoint, refusing at once; see [`max_wait`](Self::max_wait) and
    /// [`limiter`](Self::limiter).
    pub fn new(
        key: impl Into<String>,
        rate: Rate,
        ledger: std::sync::Arc<dyn SharedLedger>,
        clock: Clock,
    ) -> Self {
        Self {
            key: key.into(),
            rate,
            ledger,
            clock,
            limiter: RateLimiter::TokenEndpoint,
            max_wait: Duration::ZERO,
            local: Mutex::new(Local::default()),
            granted: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    /// How long a caller may wait for budget (real time) before it is
    /// refused with the wait; a wait known to be longer is refused at once.
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Which server's limit this budget keeps (for the refusal).
    pub fn limiter(mut self, by: RateLimiter) -> Self {
        self.limiter = by;
        self
    }

    /// The budget.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock_unpoisoned()
    }

    /// One request's worth now, or how long until there may be one.
    pub async fn try_take(&self) -> Result<Result<(), Duration>, Error> {
        let now = (self.clock)();
        {
            let mut l = self.local();
            if l.closed_until > now {
                return Ok(Err(secs(l.closed_until - now)));
            }
            if l.left > 0 && l.window_start == self.rate.window_of(now) {
                l.left -= 1;
                return Ok(Ok(()));
            }
        }
        let taken = self
            .ledger
            .take(&self.key, self.rate, now, self.rate.slice())
            .await?;
        let mut l = self.local();
        Ok(match taken {
            Taken::Granted { n, window_start } => {
                // The slice is kept only for the window it counts in.
                if window_start == self.rate.window_of(now) {
                    if l.window_start != window_start {
                        l.left = 0;
                    }
                    l.window_start = window_start;
                    l.left += n - 1;
                }
                Ok(())
            }
            Taken::Spent(wait) => {
                l.closed_until = l.closed_until.max(now + whole(wait));
                Err(wait)
            }
            Taken::Paused(wait) => {
                l.closed_until = l.closed_until.max(now + whole(wait));
                l.paused_until = l.paused_until.max(now + whole(wait));
                Err(wait)
            }
        })
    }

    /// Counters and the pause as this instance knows them.
    pub fn stats(&self) -> BudgetStats {
        let paused_until = self.local().paused_until;
        let now = (self.clock)();
        BudgetStats {
            granted: self.granted.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            paused_for: (paused_until > now).then(|| secs(paused_until - now)),
        }
    }

    /// The shared pause as the ledger has it now (one read): how much longer
    /// every instance waits, if at all.
    pub async fn shared_pause(&self) -> Result<Option<Duration>, Error> {
        let ledger = self.ledger.read(&self.key).await?;
        let now = (self.clock)();
        if ledger.paused_until > now {
            let mut l = self.local();
            l.paused_until = l.paused_until.max(ledger.paused_until);
            return Ok(Some(secs(ledger.paused_until - now)));
        }
        Ok(None)
    }
}

#[async_trait]
impl RequestBudget for Budget {
    async fn acquire(&self) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        loop {
            let wait = match self.try_take().await? {
                Ok(()) => {
                    self.granted.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(wait) => wait,
            };
            let left = self.max_wait.saturating_sub(started.elapsed());
            if wait > left || left.is_zero() {
                self.denied.fetch_add(1, Ordering::Relaxed);
                let paused = self.stats().paused_for.is_some();
                return Err(Error::RateLimited {
                    by: self.limiter,
                    reason: if paused {
                        "it asked the app to wait (another instance was told so); no request sent"
                    } else {
                        "the app's request budget for now is spent; no request sent"
                    }
                    .into(),
                    retry_after: Some(wait),
                });
            }
            tokio::time::sleep(wait.min(left)).await;
        }
    }

    async fn pause_until(&self, until: i64) {
        {
            let mut l = self.local();
            l.closed_until = l.closed_until.max(until);
            l.paused_until = l.paused_until.max(until);
        }
        if let Err(e) = self.ledger.pause(&self.key, until).await {
            tracing::warn!(budget = %self.key, error = %e, "cannot share the pause with the other instances");
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(1))
}

fn whole(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;

    fn budget(rate: &str, ledger: Arc<dyn SharedLedger>, clock: Arc<AtomicI64>) -> Budget {
        Budget::new(
            "t",
            rate.parse().expect("rate"),
            ledger,
            Arc::new(move || clock.load(Ordering::SeqCst)),
        )
    }

    #[tokio::test]
    async fn two_instances_on_one_ledger_share_one_budget() {
        let ledger: Arc<dyn SharedLedger> = Arc::new(MemoryLedger::default());
        let clock = Arc::new(AtomicI64::new(1_000));
        let a = budget("40/s", ledger.clone(), clock.clone());
        let b = budget("40/s", ledger.clone(), clock.clone());
        let mut sent = 0;
        for _ in 0..100 {
            for x in [&a, &b] {
                if x.acquire().await.is_ok() {
                    sent += 1;
                }
            }
        }
        assert_eq!(sent, 40, "the window's budget, across both");
        let e = a.acquire().await.expect_err("spent");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        clock.fetch_add(1, Ordering::SeqCst);
        assert!(b.acquire().await.is_ok(), "a new window");
        assert_eq!(a.stats().granted + b.stats().granted, 41);
    }

    #[tokio::test]
    async fn a_pause_told_to_one_instance_stops_the_other() {
        let ledger: Arc<dyn SharedLedger> = Arc::new(MemoryLedger::default());
        let clock = Arc::new(AtomicI64::new(1_000));
        let a = budget("10/s", ledger.clone(), clock.clone());
        let b = budget("10/s", ledger.clone(), clock.clone());
        a.pause_until(1_030).await;
        let e = b.acquire().await.expect_err("paused");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(b.stats().paused_for, Some(Duration::from_secs(30)));
        assert_eq!(b.stats().denied, 1);
        clock.store(1_030, Ordering::SeqCst);
        assert!(b.acquire().await.is_ok());
        assert_eq!(b.stats().paused_for, None);
    }
}
