//! A request budget as a pure decision: how many requests a caller may send
//! now, given a ledger shared by every instance of an app and the time.
//!
//! Providers limit an app, not a user: Spotify counts every request of an
//! app over a rolling window, whichever instance sent it. The budget is a
//! fixed-window counter: windows are aligned to multiples of the period on
//! the clock (whole seconds), and a [`Ledger`] holds the newest window seen,
//! how much of it is used, and until when the provider asked everyone to
//! wait (a 429's `Retry-After`). [`Rate::take`] grants from it without ever
//! letting a window's total pass the rate, whatever the interleaving of
//! callers and however far apart their clocks are (a caller whose clock lags
//! is counted in the newer window). The I/O (a row in PostgreSQL, a mutex in
//! one process) is the caller's.

use std::time::Duration;

/// A budget: `requests` per `per_secs` seconds (`10/s`, `600/m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed in one window.
    pub requests: u32,
    /// The window's length in seconds.
    pub per_secs: u32,
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `N/s` or `N/m` (also `N/sec`, `N/min`), N at least 1.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a budget: write N/s or N/m, e.g. 10/s");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            _ => return Err(bad()),
        };
        if requests == 0 {
            return Err(format!("{s:?}: a budget of 0 would never send a request"));
        }
        Ok(Self { requests, per_secs })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per_secs {
            60 => write!(f, "{}/m", self.requests),
            1 => write!(f, "{}/s", self.requests),
            p => write!(f, "{}/{p}s", self.requests),
        }
    }
}

/// What every instance shares about one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ledger {
    /// The newest window any caller has counted in (its start, unix seconds).
    pub window_start: i64,
    /// Requests granted in that window.
    pub used: u32,
    /// No request before this (unix seconds): the provider asked to wait.
    pub paused_until: i64,
}

/// What [`Rate::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// This many requests may be sent now (at least one, at most asked), all
    /// counted in the window starting at `window_start`.
    Granted {
        /// How many.
        n: u32,
        /// The window they count in.
        window_start: i64,
    },
    /// The window's budget is spent; the next one opens after this.
    Spent(Duration),
    /// The provider asked to wait; its wait ends after this.
    Paused(Duration),
}

impl Rate {
    /// The start of the window `now` falls in.
    pub fn window_of(&self, now: i64) -> i64 {
        now - now.rem_euclid(i64::from(self.per_secs.max(1)))
    }

    /// Takes up to `want` requests (at least one is asked for) from `ledger`
    /// at `now`; returns the ledger to store and the decision. A window's
    /// `used` never passes `requests`, and nothing is granted while paused.
    pub fn take(&self, ledger: Ledger, now: i64, want: u32) -> (Ledger, Taken) {
        if ledger.paused_until > now {
            let left = u64::try_from(ledger.paused_until - now).unwrap_or(0);
            return (ledger, Taken::Paused(Duration::from_secs(left)));
        }
        let mine = self.window_of(now);
        // A caller whose clock lags counts in the newest window anyone saw.
        let (window_start, used) = if ledger.window_start >= mine {
            (ledger.window_start, ledger.used)
        } else {
            (mine, 0)
        };
        let left = self.requests.saturating_sub(used);
        if left == 0 {
            let opens = window_start + i64::from(self.per_secs.max(1));
            let wait = u64::try_from((opens - now).max(1)).unwrap_or(1);
            let ledger = Ledger {
                window_start,
                used,
                ..ledger
            };
            return (ledger, Taken::Spent(Duration::from_secs(wait)));
        }
        let n = want.max(1).min(left);
        (
            Ledger {
                window_start,
                used: used + n,
                ..ledger
            },
            Taken::Granted { n, window_start },
        )
    }

    /// How many to reserve at a time so that a busy instance asks the shared
    /// ledger about once per twentieth of the budget, never for more than
    /// the budget.
    pub fn slice(&self) -> u32 {
        (self.requests / 20).max(1)
    }
}

/// Records a wait the provider asked for: the later of the two ends wins.
pub fn pause(ledger: Ledger, until: i64) -> Ledger {
    Ledger {
        paused_until: ledger.paused_until.max(until),
        ..ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(s: &str) -> Rate {
        s.parse().expect("rate")
    }

    #[test]
    fn budgets_are_written_per_second_or_per_minute() {
        assert_eq!(
            rate("10/s"),
            Rate {
                requests: 10,
                per_secs: 1
            }
        );
        assert_eq!(rate(" 600/m").per_secs, 60);
        assert_eq!(rate("600/min").to_string(), "600/m");
        for bad in ["10", "10/h", "/s", "x/s", "-1/s", "0/s", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spent_window_says_when_the_next_one_opens() {
        let r = rate("2/s");
        let (l, t) = r.take(Ledger::default(), 100, 5);
        assert_eq!(
            t,
            Taken::Granted {
                n: 2,
                window_start: 100
            }
        );
        let (l, t) = r.take(l, 100, 1);
        assert_eq!(t, Taken::Spent(Duration::from_secs(1)));
        let (_, t) = r.take(l, 101, 1);
        assert!(matches!(t, Taken::Granted { n: 1, .. }), "{t:?}");
        let m = rate("3/m");
        let (l, _) = m.take(Ledger::default(), 130, 3);
        assert_eq!(m.take(l, 150, 1).1, Taken::Spent(Duration::from_secs(30)));
    }

    #[test]
    fn a_pause_stops_every_grant_until_its_end() {
        let r = rate("100/s");
        let l = pause(Ledger::default(), 160);
        let l = pause(l, 150);
        assert_eq!(l.paused_until, 160, "the later end wins");
        assert_eq!(r.take(l, 100, 1).1, Taken::Paused(Duration::from_secs(60)));
        assert!(matches!(r.take(l, 160, 1).1, Taken::Granted { .. }));
    }

    #[test]
    fn a_lagging_clock_counts_in_the_newest_window() {
        let r = rate("5/s");
        let (l, _) = r.take(Ledger::default(), 200, 5);
        // An instance whose clock says 199 finds the window spent.
        assert!(matches!(r.take(l, 199, 1).1, Taken::Spent(_)));
    }

    #[test]
    fn the_slice_is_a_twentieth_of_the_budget_and_at_least_one() {
        assert_eq!(rate("10/s").slice(), 1);
        assert_eq!(rate("1000/m").slice(), 50);
    }

    proptest! {
        /// Any interleaving of callers with skewed clocks, each asking for
        /// any number: no window's grants add up past the budget, and a
        /// caller asking in a window with budget left gets some.
        #[test]
        fn no_window_ever_grants_more_than_the_budget(
            requests in 1u32..30,
            per_minute in any::<bool>(),
            calls in proptest::collection::vec((0i64..5, 0i64..3, 1u32..10), 1..300),
        ) {
            let r = Rate { requests, per_secs: if per_minute { 60 } else { 1 } };
            let mut ledger = Ledger::default();
            let mut clocks = [1_000i64; 5];
            let mut granted = std::collections::HashMap::<i64, u32>::new();
            for (who, step, want) in calls {
                let who = usize::try_from(who).expect("index");
                clocks[who] += step;
                let before = ledger;
                let (next, taken) = r.take(ledger, clocks[who], want);
                match taken {
                    Taken::Granted { n, window_start } => {
                        prop_assert!(n >= 1 && n <= want);
                        *granted.entry(window_start).or_default() += n;
                    }
                    Taken::Spent(wait) => {
                        prop_assert!(wait.as_secs() >= 1);
                        let w = r.window_of(clocks[who]).max(before.window_start);
                        prop_assert_eq!(granted.get(&w).copied().unwrap_or(0), requests);
                    }
                    Taken::Paused(_) => prop_assert!(false, "never paused here"),
                }
                ledger = next;
            }
            for (w, n) in granted {
                prop_assert!(n <= requests, "window {} granted {} of {}", w, n, requests);
            }
        }
    }
}
