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
    /// Accounts of sessions that have not ended (the background refresher's work list).
    async fn session_accounts(&self, now: i64) -> Result<Vec<String>, Error>;
    /// Deletes ended sessions and pending logins; returns the accounts whose
    /// sessions ended (their tokens should go too).
    async fn purge_expired(&self, now: i64) -> Result<Vec<String>, Error>;
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
            store.purge_expired(now + 10).await.expect("purge"),
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
