//! The token store: one trait, one implementation per backend.
//!
//! A store keeps one [`Row`] per account. Secrets in a row are already sealed
//! (see [`crate::crypto`]); backends never see plaintext tokens. Every row has a
//! version that each write bumps, so a writer that lost a race finds out
//! ([`TokenStore::update`] answers `None`) instead of overwriting a newer refresh
//! token.
//!
//! Refreshing is one critical section per account across tasks, processes and
//! server instances: [`TokenStore::lock`] returns an [`AccountLock`] under which
//! the engine re-reads the row, refreshes if still needed, and commits
//! durably before releasing. SQLite implements it with a per-account file lock,
//! PostgreSQL with a transaction-scoped advisory lock.

#[cfg(feature = "internals")]
pub mod sessions;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub, dead_code)] // `pub` for spotoken-server, with `internals`
mod sessions;
pub mod sqlite;

#[cfg(feature = "postgres")]
mod budget_pg;
#[cfg(feature = "postgres")]
mod pg_connect;
#[cfg(feature = "postgres")]
pub mod postgres;

use async_trait::async_trait;
use spotoken_core::scope::Scopes;

use crate::Error;

#[cfg(feature = "internals")]
pub use sessions::{Census, DueBatch, DueQuery, PendingRecord, SessionRecord, SessionStore};
pub use sqlite::Sqlite;

#[cfg(feature = "postgres")]
pub use budget_pg::PgLedger;
#[cfg(feature = "postgres")]
pub use postgres::Postgres;

/// Whether an account can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountState {
    /// Tokens are usable.
    Active,
    /// The user must authorize again; the reason is kept for `status`.
    ReauthRequired(String),
}

/// One account as stored: metadata in the clear, tokens sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    /// The account name (`default` unless chosen).
    pub account: String,
    /// The client id the tokens were issued to.
    pub client_id: String,
    /// Spotify user id, from `/v1/me` at login.
    pub user_id: Option<String>,
    /// Spotify display name.
    pub display_name: Option<String>,
    /// Scopes actually granted.
    pub scopes: Scopes,
    /// When the user authorized (unix seconds); the refresh token's lifetime counts from here.
    pub authorized_at: i64,
    /// Sealed access token.
    pub access_token: Option<Vec<u8>>,
    /// When the access token expires (unix seconds).
    pub access_expires_at: i64,
    /// Sealed refresh token.
    pub refresh_token: Vec<u8>,
    /// Last successful refresh (unix seconds).
    pub last_refresh: Option<i64>,
    /// Active or needing re-authorization.
    pub state: AccountState,
    /// Bumped by every write.
    pub version: i64,
    /// Last write (unix seconds).
    pub updated_at: i64,
    /// The issuer the tokens came from, so each account is refreshed where it
    /// was issued; `None` for the configured provider (and rows stored before
    /// spotoken knew other providers).
    pub issuer: Option<String>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("account", &self.account)
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .field("scopes", &self.scopes.to_wire())
            .field("authorized_at", &self.authorized_at)
            .field("access_expires_at", &self.access_expires_at)
            .field("last_refresh", &self.last_refresh)
            .field("state", &self.state)
            .field("issuer", &self.issuer)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Row {
    /// Re-seals the row's secrets (with the active key) for the version its
    /// next write gives it, as every writer must: they are bound to the row
    /// version, so secrets left as they were would not open after the write.
    pub fn carry_secrets_to_next_version(
        &mut self,
        keys: &crate::crypto::KeyRing,
    ) -> Result<(), Error> {
        use crate::crypto::Field;
        let (read, next) = (self.version, self.version + 1);
        let account = self.account.clone();
        let reseal = |field, sealed: &[u8]| {
            let plain = keys.open_row(&account, field, read, sealed)?;
            keys.seal_row(&account, field, next, &plain)
        };
        self.refresh_token = reseal(Field::RefreshToken, &self.refresh_token)?;
        if let Some(access) = &self.access_token {
            self.access_token = Some(reseal(Field::AccessToken, access)?);
        }
        Ok(())
    }

    #[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
    /// The state as stored: `active` or `reauth_required`, and the reason.
    pub fn state_columns(&self) -> (&'static str, Option<&str>) {
        match &self.state {
            AccountState::Active => ("active", None),
            AccountState::ReauthRequired(r) => ("reauth_required", Some(r.as_str())),
        }
    }

    /// Rebuilds the state from stored columns.
    pub fn state_from_columns(state: &str, reason: Option<String>) -> AccountState {
        if state == "active" {
            AccountState::Active
        } else {
            AccountState::ReauthRequired(
                reason.unwrap_or_else(|| "re-authorization required".into()),
            )
        }
    }
}

/// A store of accounts' tokens.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// One account's row.
    async fn load(&self, account: &str) -> Result<Option<Row>, Error>;
    /// Every row, ordered by account.
    async fn list(&self) -> Result<Vec<Row>, Error>;
    /// Inserts or replaces a row whatever its version (a fresh login); durable on return.
    async fn upsert(&self, row: Row) -> Result<Row, Error>;
    /// Writes `row` if the stored version is still `row.version`; returns the
    /// stored row (version bumped), or `None` if someone else wrote first.
    /// A version of 0 or less means "no row yet": the row is inserted only if
    /// the account has none, at version 1 for 0 and at `-version` otherwise
    /// (a login picks a version no earlier row of the account had, see
    /// [`fresh_version`], so a refresh that read a row since logged out
    /// cannot write over the new login).
    async fn update(&self, row: Row) -> Result<Option<Row>, Error>;
    /// Removes an account's row (and, where the backend can, its old pages).
    async fn delete(&self, account: &str) -> Result<bool, Error>;
    /// Takes the account's refresh lock, waiting for it.
    async fn lock(&self, account: &str) -> Result<Box<dyn AccountLock>, Error>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), Error>;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
}

/// The refresh lock on one account. Dropping it releases the lock too.
#[async_trait]
pub trait AccountLock: Send {
    /// Re-reads the row under the lock.
    async fn load(&mut self) -> Result<Option<Row>, Error>;
    /// Writes under the lock, durably, with the version check of [`TokenStore::update`].
    async fn update(&mut self, row: Row) -> Result<Option<Row>, Error>;
    /// Releases the lock.
    async fn release(self: Box<Self>) -> Result<(), Error>;
}

/// The version a version-checked write gives a row (see [`TokenStore::update`]).
pub(crate) fn next_version(version: i64) -> i64 {
    match version {
        0 => 1,
        v if v < 0 => v.saturating_neg(),
        v => v + 1,
    }
}

#[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
/// A version for a newly logged-in row that no earlier row of the account
/// had: the time in microseconds. Versions grow by one per write, far
/// slower than the clock, so a row deleted at a logout never had it.
pub fn fresh_version() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .max(1)
}

#[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
/// Unix time now, in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The suite every backend must pass.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;
    use std::sync::Arc;

    pub(crate) fn row(account: &str) -> Row {
        Row {
            account: account.into(),
            client_id: "cid".into(),
            user_id: Some("alice".into()),
            display_name: Some("Alice".into()),
            scopes: Scopes::parse("user-read-private"),
            authorized_at: 1_700_000_000,
            access_token: Some(vec![1, 2, 3]),
            access_expires_at: 1_700_003_600,
            refresh_token: vec![4, 5, 6],
            last_refresh: None,
            state: AccountState::Active,
            version: 0,
            updated_at: 0,
            issuer: None,
        }
    }

    pub(crate) async fn run_all(store: Arc<dyn TokenStore>) {
        upsert_load_list_delete(&*store).await;
        update_checks_version(&*store).await;
        lock_serializes_and_rereads(store.clone()).await;
        state_round_trips(&*store).await;
        issuer_round_trips(&*store).await;
        store.ping().await.expect("ping");
    }

    async fn upsert_load_list_delete(store: &dyn TokenStore) {
        assert!(store.load("s1").await.expect("load").is_none());
        let saved = store.upsert(row("s1")).await.expect("upsert");
        assert_eq!(saved.version, 1);
        let loaded = store.load("s1").await.expect("load").expect("row");
        assert_eq!(loaded, saved);
        let again = store.upsert(row("s1")).await.expect("upsert");
        assert_eq!(again.version, 2, "a new login bumps the version");
        store.upsert(row("s0")).await.expect("upsert");
        let names: Vec<String> = store
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.account)
            .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "ordered: {names:?}");
        assert!(names.contains(&"s0".to_owned()) && names.contains(&"s1".to_owned()));
        assert!(store.delete("s1").await.expect("delete"));
        assert!(!store.delete("s1").await.expect("delete"));
        assert!(store.load("s1").await.expect("load").is_none());
    }

    async fn update_checks_version(store: &dyn TokenStore) {
        let saved = store.upsert(row("s2")).await.expect("upsert");
        let mut next = saved.clone();
        next.refresh_token = vec![9, 9, 9];
        let written = store
            .update(next.clone())
            .await
            .expect("update")
            .expect("won");
        assert_eq!(written.version, saved.version + 1);
        // A writer holding the old version loses.
        assert!(store.update(next).await.expect("update").is_none());
        assert_eq!(
            store
                .load("s2")
                .await
                .expect("load")
                .expect("row")
                .refresh_token,
            vec![9, 9, 9]
        );
        // Version 0 inserts only where there is no row (a new login racing
        // another login or a refresh must not replace what they wrote).
        let mut fresh = row("s2");
        fresh.refresh_token = vec![7];
        assert!(store.update(fresh.clone()).await.expect("update").is_none());
        fresh.account = "s2-new".into();
        let inserted = store.update(fresh.clone()).await.expect("update");
        assert_eq!(inserted.map(|r| r.version), Some(1));
        fresh.refresh_token = vec![8];
        assert!(store.update(fresh).await.expect("update").is_none());
        let stored = store.load("s2-new").await.expect("load").expect("row");
        assert_eq!((stored.version, stored.refresh_token), (1, vec![7]));
    }

    async fn lock_serializes_and_rereads(store: Arc<dyn TokenStore>) {
        store.upsert(row("s3")).await.expect("upsert");
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut lock = store.lock("s3").await.expect("lock");
                let mut r = lock.load().await.expect("load").expect("row");
                // Read-modify-write under the lock: no update may be lost.
                r.refresh_token.push(i);
                lock.update(r)
                    .await
                    .expect("update")
                    .expect("no conflict under the lock");
                lock.release().await.expect("release");
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        let r = store.load("s3").await.expect("load").expect("row");
        assert_eq!(r.refresh_token.len(), 3 + 8, "every locked update kept");
    }

    async fn issuer_round_trips(store: &dyn TokenStore) {
        let mut r = row("s5");
        r.issuer = Some("https://id.example".into());
        let saved = store.upsert(r).await.expect("upsert");
        let back = store.load("s5").await.expect("load").expect("row");
        assert_eq!(back.issuer.as_deref(), Some("https://id.example"));
        let mut next = saved;
        next.issuer = None;
        store.update(next).await.expect("update").expect("won");
        let back = store.load("s5").await.expect("load").expect("row");
        assert_eq!(back.issuer, None, "an update writes the issuer too");
        let mut fresh = row("s5-new");
        fresh.issuer = Some("https://other.example".into());
        store.update(fresh).await.expect("insert").expect("new row");
        let back = store.load("s5-new").await.expect("load").expect("row");
        assert_eq!(
            back.issuer.as_deref(),
            Some("https://other.example"),
            "a version-0 insert writes the issuer too"
        );
    }

    async fn state_round_trips(store: &dyn TokenStore) {
        let mut r = row("s4");
        r.state = AccountState::ReauthRequired("invalid_grant: Refresh token revoked".into());
        store.upsert(r).await.expect("upsert");
        let back = store.load("s4").await.expect("load").expect("row");
        assert_eq!(
            back.state,
            AccountState::ReauthRequired("invalid_grant: Refresh token revoked".into())
        );
    }
}
