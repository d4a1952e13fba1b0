//! Retry decisions: exponential backoff with full jitter, `Retry-After` honored,
//! a total budget, and a cap on how long a caller may be made to wait.
//!
//! Pure: the caller passes the attempt number, the time spent so far and a
//! random number in `[0, 1)`, and gets back "wait this long, then retry" or "stop
//! with this error". A server asking for longer than the caller's cap (Spotify's
//! `Retry-After: 86400`) becomes an immediate temporary error that states the
//! wait, never a process hung for a day.

use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::wait::human_duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First retry waits up to this.
    pub base: Duration,
    /// No single wait (without `Retry-After`) exceeds this.
    pub cap: Duration,
    /// Total time spent retrying, after which we give up.
    pub budget: Duration,
    /// Most attempts in all (the first one included).
    pub max_attempts: u32,
    /// The longest `Retry-After` we are willing to sit through.
    pub max_wait: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(8),
            budget: Duration::from_secs(30),
            max_attempts: 5,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Sleep this long, then try again.
    After(Duration),
    /// Stop: this is the error to return.
    GiveUp(Error),
}

impl Backoff {
    /// The jittered delay before retry number `attempt` (1 for the first retry):
    /// uniform in `[0, min(cap, base·2^(attempt-1))]` ("full jitter").
    pub fn jittered(&self, attempt: u32, rand01: f64) -> Duration {
        let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        let ceiling = self.base.saturating_mul(exp).min(self.cap);
        ceiling.mul_f64(rand01.clamp(0.0, 1.0))
    }

    /// Decides what follows a temporary failure `err` on attempt `attempt`
    /// (1-based) after `elapsed` time in all. Non-temporary errors are never retried.
    pub fn decide(&self, err: Error, attempt: u32, elapsed: Duration, rand01: f64) -> Retry {
        if err.kind() != ErrorKind::Temporary {
            return Retry::GiveUp(err);
        }
        let retry_after = err.retry_after();
        if let Some(wait) = retry_after
            && wait > self.max_wait
        {
            return Retry::GiveUp(err.map_reason(|reason| {
                format!(
                    "{reason}; the server asked to wait {}, longer than the {} we wait",
                    human_duration(wait),
                    human_duration(self.max_wait)
                )
            }));
        }
        if attempt >= self.max_attempts {
            return Retry::GiveUp(
                err.map_reason(|reason| format!("{reason} (gave up after {attempt} attempts)")),
            );
        }
        let delay = self
            .jittered(attempt, rand01)
            .max(retry_after.unwrap_or(Duration::ZERO));
        if elapsed + delay > self.budget {
            return Retry::GiveUp(err.map_reason(|reason| {
                format!(
                    "{reason} (gave up after {attempt} attempts in {})",
                    human_duration(elapsed)
                )
            }));
        }
        Retry::After(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn temp(after: Option<u64>) -> Error {
        Error::temporary("HTTP 429", after.map(Duration::from_secs))
    }

    #[test]
    fn retry_after_within_cap_is_honored() {
        let b = Backoff::default();
        assert_eq!(
            b.decide(temp(Some(2)), 1, Duration::ZERO, 0.0),
            Retry::After(Duration::from_secs(2))
        );
    }

    #[test]
    fn retry_after_beyond_cap_is_an_immediate_error_naming_the_wait() {
        let b = Backoff::default();
        match b.decide(temp(Some(7980)), 1, Duration::ZERO, 0.5) {
            Retry::GiveUp(e) => assert!(e.to_string().contains("2 h 13 min"), "{e}"),
            other => panic!("expected give up, got {other:?}"),
        }
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let b = Backoff::default();
        let e = Error::Configuration("bad client".into());
        assert_eq!(
            b.decide(e.clone(), 1, Duration::ZERO, 0.5),
            Retry::GiveUp(e)
        );
    }

    #[test]
    fn attempts_and_budget_end_retrying() {
        let b = Backoff::default();
        assert!(matches!(
            b.decide(temp(None), 5, Duration::ZERO, 0.5),
            Retry::GiveUp(_)
        ));
        assert!(matches!(
            b.decide(temp(Some(10)), 1, Duration::from_secs(25), 0.5),
            Retry::GiveUp(_)
        ));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_the_exponential_ceiling(attempt in 1u32..100, r in 0.0f64..1.0) {
            let b = Backoff::default();
            let d = b.jittered(attempt, r);
            prop_assert!(d <= b.cap);
            prop_assert!(d <= b.base.saturating_mul(2u32.saturating_pow((attempt - 1).min(30))));
        }
    }
}
