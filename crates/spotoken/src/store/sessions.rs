//! Browser sessions and logins in progress, for the backend-for-frontend.
//!
//! Kept in the same database as the tokens (so several server instances share
//! them), by the same backends. Nothing here is usable if the database leaks:
//! sessions are keyed by a SHA-256 of the cookie value, pending logins by a
//! hash of their `state`, and a pending login's PKCE verifier is sealed.

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

use crate::Error;

/// A logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the session cookie's value.
    pub id_hash: Vec<u8>,
    /// The token-store account holding this session's tokens.
    pub account: String,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Ends (unix seconds).
    pub expires_at: i64,
}

/// A login between `/auth/login` and `/auth/callback`.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingRecord {
    /// SHA-256 of the `state` sent to the authorization server.
    pub state_hash: Vec<u8>,
    /// SHA-256 of the value of the short-lived cookie binding it to one browser.
    pub binding_hash: Vec<u8>,
    /// The sealed pending login (verifier, redirect URI, scopes).
    pub sealed: Vec<u8>,
    /// Where to send the browser afterwards (a same-origin path).
    pub return_to: String,
    /// Ends (unix seconds).
    pub expires_at: i64,
}

impl std::fmt::Debug for PendingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRecord")
            .field("return_to", &self.return_to)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the background refresher asks [`SessionStore::claim_due`] for (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueQuery {
    /// Now.
    pub now: i64,
    /// Accounts whose access token expires before this are due.
    pub expires_before: i64,
    /// Only accounts used at or after this (the start of the active window).
    pub used_since: i64,
    /// At most this many accounts.
    pub limit: u32,
    /// The claim holds until this; an instance that dies with a claim only
    /// delays those accounts until then.
    pub claim_until: i64,
}

/// One claimed batch of due accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DueBatch {
    /// Claimed for this store (this instance), soonest expiry first.
    pub accounts: Vec<String>,
    /// Due accounts under another instance's claim right now (it is
    /// refreshing them).
    pub held_elsewhere: u64,
    /// Accounts taken out of the due index by this call (idle, flagged or
    /// without a live session); as many as `limit` means more may follow.
    pub retired: u64,
}

/// What [`SessionStore::census`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Sessions that have not ended.
    pub sessions: u64,
    /// Accounts with such a session that need a new login.
    pub reauth_required: u64,
}

/// SHA-256, the form in which cookie values and `state` are stored.
pub fn hash(value: &str) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

/// Where sessions and pending logins live.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session.
    async fn put_session(&self, s: SessionRecord) -> Result<(), Error>;
    /// A session by the hash of its id, if it exists and has not ended.
    async fn get_session(&self, id_hash: &[u8], now: i64) -> Result<Option<SessionRecord>, Error>;
    /// Deletes a session; returns it if it existed.
    async fn delete_session(&self, id_hash: &[u8]) -> Result<Option<SessionRecord>, Error>;
    /// Moves the end of a session that has not ended at `now` to
    /// `expires_at` (an idle timeout's sliding end); false if it has ended
    /// or is gone.
    async fn touch_session(&self, id_hash: &[u8], expires_at: i64, now: i64)
    -> Result<bool, Error>;
    /// Deletes every session of `account` ("log out everywhere"); returns
    /// how many went. Reported to other instances like [`Self::delete_session`].
    async fn delete_account_sessions(&self, account: &str) -> Result<u64, Error>;
    /// Stores a pending login.
    async fn put_pending(&self, p: PendingRecord) -> Result<(), Error>;
    /// Removes and returns a pending login (single use), if it has not ended.
    async fn take_pending(
        &self,
        state_hash: &[u8],
        now: i64,
    ) -> Result<Option<PendingRecord>, Error>;
    /// Accounts of sessions that have not ended.
    async fn session_accounts(&self, now: i64) -> Result<Vec<String>, Error>;
    /// Deletes at most `limit` ended sessions, and as many ended pending
    /// logins, soonest ended first (through the expiry indexes, so the cost
    /// follows what ended, not what exists); returns the accounts whose
    /// sessions ended (their tokens should go too).
    async fn purge_expired(&self, now: i64, limit: u32) -> Result<Vec<String>, Error>;
    /// Records that `accounts` were used at `at` (a later use is never moved
    /// back): what keeps an account in the background refresher's work.
    /// Callers batch and rate-limit these writes.
    async fn note_used(&self, accounts: &[String], at: i64) -> Result<(), Error>;
    /// Claims up to `q.limit` accounts whose access token expires before
    /// `q.expires_before`, used since `q.used_since`, active, with a live
    /// session and no other claim running, until `q.claim_until`: instances
    /// sharing the store take disjoint batches. Found through the due index
    /// (expiry, among accounts with a recorded use), so the cost follows the
    /// accounts due, not the sessions stored; accounts that went idle, need a
    /// new login or lost their sessions leave that index here as they are met.
    async fn claim_due(&self, q: DueQuery) -> Result<DueBatch, Error>;
    /// Counts sessions that have not ended and accounts with one that need a
    /// new login (for the gauges; a scan, so callers run it rarely).
    async fn census(&self, now: i64) -> Result<Census, Error>;
    /// For a store shared by several server instances: a counter that moves
    /// whenever a session is deleted by any of them (or deletions may have
    /// been missed), so that each can drop what it cached at once. `None`
    /// for a store only one process serves from.
    async fn logouts(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// The suite every session backend must pass.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    pub(crate) async fn run_all(store: &dyn SessionStore) {
        let now = 1_800_000_000;
        let s = SessionRecord {
            id_hash: hash("cookie-value"),
            account: "web-abc".into(),
            created_at: now,
            expires_at: now + 100,
        };
        store.put_session(s.clone()).await.expect("put");
        assert_eq!(
            store
                .get_session(&hash("cookie-value"), now)
                .await
                .expect("get"),
            Some(s.clone())
        );
        assert_eq!(
            store.get_session(&hash("other"), now).await.expect("get"),
            None
        );
        assert_eq!(
            store.get_session(&s.id_hash, now + 101).await.expect("get"),
            None,
            "ended"
        );
        assert_eq!(
            store.session_accounts(now).await.expect("list"),
            vec!["web-abc".to_owned()]
        );
        assert!(
            store
                .touch_session(&s.id_hash, now + 50, now)
                .await
                .expect("touch")
        );
        assert_eq!(
            store
                .get_session(&s.id_hash, now)
                .await
                .expect("get")
                .map(|r| r.expires_at),
            Some(now + 50),
            "touched"
        );
        assert!(
            !store
                .touch_session(&s.id_hash, now + 500, now + 60)
                .await
                .expect("touch"),
            "an ended session cannot be revived"
        );
        store
            .put_session(SessionRecord {
                expires_at: now + 100,
                ..s.clone()
            })
            .await
            .expect("put");
        assert_eq!(
            store.delete_session(&s.id_hash).await.expect("delete"),
            Some(s.clone())
        );
        assert_eq!(
            store.delete_session(&s.id_hash).await.expect("delete"),
            None
        );

        let p = PendingRecord {
            state_hash: hash("state"),
            binding_hash: hash("binding"),
            sealed: vec![1, 2, 3],
            return_to: "/after".into(),
            expires_at: now + 600,
        };
        store.put_pending(p.clone()).await.expect("put");
        assert_eq!(
            store.take_pending(&hash("state"), now).await.expect("take"),
            Some(p.clone())
        );
        assert_eq!(
            store.take_pending(&hash("state"), now).await.expect("take"),
            None,
            "single use"
        );
        store.put_pending(p.clone()).await.expect("put");
        assert_eq!(
            store
                .take_pending(&hash("state"), now + 601)
                .await
                .expect("take"),
            None,
            "ended"
        );

        store
            .put_session(SessionRecord {
                expires_at: now + 5,
                ..s.clone()
            })
            .await
            .expect("put");
        assert_eq!(
            store.purge_expired(now + 10, 100).await.expect("purge"),
            vec!["web-abc".to_owned()]
        );
        assert!(store.session_accounts(now).await.expect("list").is_empty());

        for (cookie, account) in [("a1", "web-a"), ("a2", "web-a"), ("b1", "web-b")] {
            store
                .put_session(SessionRecord {
                    id_hash: hash(cookie),
                    account: account.into(),
                    created_at: now,
                    expires_at: now + 100,
                })
                .await
                .expect("put");
        }
        assert_eq!(
            store
                .delete_account_sessions("web-a")
                .await
                .expect("delete"),
            2
        );
        assert_eq!(
            store.get_session(&hash("a2"), now).await.expect("get"),
            None
        );
        assert!(
            store
                .get_session(&hash("b1"), now)
                .await
                .expect("get")
                .is_some()
        );
    }
}

/// The suite of the background refresher's queries: `a` and `b` are two
/// handles on one database (two instances), `tokens` a third.
#[cfg(test)]
pub(crate) mod due_suite {
    use super::*;
    use crate::store::{AccountState, TokenStore};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    const NOW: i64 = 1_800_000_000;

    async fn account(
        tokens: &dyn TokenStore,
        sessions: &dyn SessionStore,
        name: &str,
        expires_in: i64,
        session_left: i64,
    ) {
        let mut r = crate::store::suite::row(name);
        r.access_expires_at = NOW + expires_in;
        tokens.upsert(r).await.expect("upsert");
        sessions
            .put_session(SessionRecord {
                id_hash: hash(&format!("cookie-{name}")),
                account: name.into(),
                created_at: NOW - 1000,
                expires_at: NOW + session_left,
            })
            .await
            .expect("put");
    }

    fn query(limit: u32) -> DueQuery {
        DueQuery {
            now: NOW,
            expires_before: NOW + 600,
            used_since: NOW - 3600,
            limit,
            claim_until: NOW + 120,
        }
    }

    fn set(v: &[String]) -> BTreeSet<String> {
        v.iter().cloned().collect()
    }

    pub(crate) async fn run_all(
        tokens: Arc<dyn TokenStore>,
        a: Arc<dyn SessionStore>,
        b: Arc<dyn SessionStore>,
    ) {
        claims_are_disjoint_and_only_due(&*tokens, &*a, &*b).await;
        concurrent_claims_never_overlap(tokens.clone(), a.clone(), b.clone()).await;
        purge_is_bounded_and_census_counts(&*tokens, &*a).await;
    }

    async fn claims_are_disjoint_and_only_due(
        tokens: &dyn TokenStore,
        a: &dyn SessionStore,
        b: &dyn SessionStore,
    ) {
        let due: Vec<String> = (0..6).map(|i| format!("due-{i}")).collect();
        for name in &due {
            account(tokens, a, name, 100, 1000).await;
        }
        account(tokens, a, "fresh", 5000, 1000).await;
        account(tokens, a, "idle", 100, 1000).await;
        account(tokens, a, "never-used", 100, 1000).await;
        account(tokens, a, "session-ended", 100, -1).await;
        account(tokens, a, "flagged", 100, 1000).await;
        let mut flagged = tokens.load("flagged").await.expect("load").expect("row");
        flagged.state = AccountState::ReauthRequired("invalid_grant".into());
        tokens.update(flagged).await.expect("update").expect("won");
        let mut used = due.clone();
        used.extend(["fresh", "session-ended", "flagged"].map(String::from));
        a.note_used(&used, NOW - 10).await.expect("note");
        a.note_used(&["idle".to_owned()], NOW - 7200)
            .await
            .expect("note");
        // A use is never moved back.
        b.note_used(&["due-0".to_owned()], NOW - 90_000)
            .await
            .expect("note");

        let first = a.claim_due(query(4)).await.expect("claim");
        assert_eq!(first.accounts.len(), 4, "{first:?}");
        assert_eq!(first.held_elsewhere, 0);
        assert_eq!(first.retired, 3, "idle, ended and flagged leave the index");
        let second = b.claim_due(query(4)).await.expect("claim");
        assert_eq!(second.accounts.len(), 2, "{second:?}");
        assert_eq!(second.held_elsewhere, 4, "a's claims");
        assert!(set(&first.accounts).is_disjoint(&set(&second.accounts)));
        let both: BTreeSet<String> = set(&first.accounts)
            .union(&set(&second.accounts))
            .cloned()
            .collect();
        assert_eq!(both, set(&due), "exactly the due accounts");
        let third = a.claim_due(query(4)).await.expect("claim");
        assert!(third.accounts.is_empty(), "all claimed: {third:?}");
        assert_eq!(third.held_elsewhere, 2, "b's claims, not a's own");

        // A refresh writes the row: its recorded use stays.
        let mut row = tokens.load("due-0").await.expect("load").expect("row");
        row.refresh_token = vec![7, 7];
        tokens.update(row).await.expect("update").expect("won");
        // Once the claims end, the accounts still due can be claimed again.
        let later = DueQuery {
            now: NOW + 121,
            claim_until: NOW + 241,
            ..query(100)
        };
        let again = b.claim_due(later).await.expect("claim");
        assert_eq!(set(&again.accounts), set(&due), "claims end");
        // An idle account comes back with its next use.
        a.note_used(&["idle".to_owned()], NOW).await.expect("note");
        let back = a
            .claim_due(DueQuery {
                now: NOW + 121,
                claim_until: NOW + 241,
                ..query(100)
            })
            .await
            .expect("claim");
        assert_eq!(back.accounts, vec!["idle".to_owned()]);
        for name in due.iter().map(String::as_str).chain([
            "fresh",
            "idle",
            "never-used",
            "session-ended",
            "flagged",
        ]) {
            tokens.delete(name).await.expect("delete");
            a.delete_account_sessions(name).await.expect("delete");
        }
    }

    async fn concurrent_claims_never_overlap(
        tokens: Arc<dyn TokenStore>,
        a: Arc<dyn SessionStore>,
        b: Arc<dyn SessionStore>,
    ) {
        let names: Vec<String> = (0..40).map(|i| format!("many-{i:02}")).collect();
        for name in &names {
            account(&*tokens, &*a, name, 100, 1000).await;
        }
        a.note_used(&names, NOW).await.expect("note");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim_due(query(3)).await.expect("claim");
                    if batch.accounts.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.accounts);
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("join"));
        }
        let distinct = set(&all);
        assert_eq!(all.len(), distinct.len(), "an account claimed twice");
        assert_eq!(distinct, set(&names), "every due account claimed");
        for name in &names {
            tokens.delete(name).await.expect("delete");
            a.delete_account_sessions(name).await.expect("delete");
        }
    }

    async fn purge_is_bounded_and_census_counts(tokens: &dyn TokenStore, a: &dyn SessionStore) {
        for i in 0..5 {
            account(tokens, a, &format!("gone-{i}"), 100, -10 - i).await;
        }
        account(tokens, a, "staying", 100, 1000).await;
        account(tokens, a, "staying-flagged", 100, 1000).await;
        let mut flagged = tokens
            .load("staying-flagged")
            .await
            .expect("load")
            .expect("row");
        flagged.state = AccountState::ReauthRequired("invalid_grant".into());
        tokens.update(flagged).await.expect("update").expect("won");
        assert_eq!(
            a.census(NOW).await.expect("census"),
            Census {
                sessions: 2,
                reauth_required: 1
            }
        );
        let first = a.purge_expired(NOW, 2).await.expect("purge");
        assert_eq!(
            set(&first),
            set(&["gone-4".to_owned(), "gone-3".to_owned()]),
            "the longest ended first"
        );
        let rest = a.purge_expired(NOW, 10).await.expect("purge");
        assert_eq!(rest.len(), 3);
        assert!(a.purge_expired(NOW, 10).await.expect("purge").is_empty());
        for name in ["staying", "staying-flagged"] {
            tokens.delete(name).await.expect("delete");
            a.delete_account_sessions(name).await.expect("delete");
        }
        for i in 0..5 {
            tokens.delete(&format!("gone-{i}")).await.expect("delete");
        }
    }
}
