//! Which accounts are in use, for the background refresher: it keeps tokens
//! warm only for accounts used within its window, and an idle session is
//! refreshed on its next request instead.
//!
//! A use is seen where a request reads its session (the session cache's
//! store read, and the `/auth` routes), never on the proxy's per-thread fast
//! path. The store is told in batches, once per refresher pass, and about
//! each account at most once every [`NOTE_EVERY_SECS`]: an active account
//! costs one row update per five minutes, however many requests it makes.
//! The recorded use lags the real one by up to that plus a pass interval,
//! far less than the window.

use spotoken::core::sync::LockUnpoisoned as _;
use std::collections::HashMap;
use std::sync::Mutex;

/// An account's use is written to the store at most this often.
pub(crate) const NOTE_EVERY_SECS: i64 = 300;

/// Uses seen since the last pass, and when each account's use was last
/// queued for the store.
#[derive(Default)]
pub(crate) struct Activity {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Account → when its use was last queued (unix seconds).
    queued_at: HashMap<String, i64>,
    /// Accounts to write at the next pass.
    pending: Vec<String>,
}

impl Activity {
    /// Notes that `account` was used at `now`: queued for the store unless
    /// it was queued less than [`NOTE_EVERY_SECS`] ago.
    pub(crate) fn note(&self, account: &str, now: i64) {
        let mut inner = self.inner.lock_unpoisoned();
        if let Some(at) = inner.queued_at.get(account)
            && now.saturating_sub(*at) < NOTE_EVERY_SECS
        {
            return;
        }
        inner.queued_at.insert(account.to_owned(), now);
        inner.pending.push(account.to_owned());
    }

    /// The accounts to write now; forgets uses too old to hold back a new
    /// note, so memory follows the accounts used in the last few minutes.
    pub(crate) fn take(&self, now: i64) -> Vec<String> {
        let mut inner = self.inner.lock_unpoisoned();
        inner
            .queued_at
            .retain(|_, at| now.saturating_sub(*at) < NOTE_EVERY_SECS);
        std::mem::take(&mut inner.pending)
    }

    /// Puts back accounts whose write failed, for the next pass.
    pub(crate) fn put_back(&self, accounts: Vec<String>) {
        self.inner.lock_unpoisoned().pending.extend(accounts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_queued_at_most_once_per_interval_however_often_used() {
        let a = Activity::default();
        for t in 0..100 {
            a.note("busy", 1000 + t);
        }
        a.note("other", 1000);
        assert_eq!(a.take(1100), vec!["busy".to_owned(), "other".to_owned()]);
        a.note("busy", 1200);
        assert!(a.take(1200).is_empty(), "queued 200 s ago");
        a.note("busy", 1000 + NOTE_EVERY_SECS);
        assert_eq!(a.take(1000 + NOTE_EVERY_SECS), vec!["busy".to_owned()]);
    }

    #[test]
    fn a_failed_write_is_tried_again_and_old_entries_are_forgotten() {
        let a = Activity::default();
        a.note("x", 0);
        let taken = a.take(0);
        a.put_back(taken);
        assert_eq!(a.take(10), vec!["x".to_owned()]);
        a.take(NOTE_EVERY_SECS * 3);
        let left = a.inner.lock_unpoisoned().queued_at.len();
        assert_eq!(left, 0);
    }
}
