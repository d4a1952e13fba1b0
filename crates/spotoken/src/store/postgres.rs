//! The shared store for several server instances: PostgreSQL.
//!
//! Same row shape as SQLite (BYTEA for sealed tokens), its own migrations kept in
//! a `spotoken_schema` table and run under an advisory lock so two instances
//! starting together do not race. The refresh lock is a transaction-scoped
//! advisory lock keyed by schema and account, held on one pooled connection
//! across read → refresh → write; if the holder vanishes, PostgreSQL ends the
//! transaction and the lock with it.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use spotoken_core::scope::Scopes;

use super::pg_connect::{self, Target};
use super::sessions::{Census, DueBatch, DueQuery};
use super::{AccountLock, Row, TokenStore, unix_now};
use crate::Error;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE spotoken_accounts (
        account TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        user_id TEXT,
        display_name TEXT,
        scopes TEXT NOT NULL DEFAULT '',
        authorized_at BIGINT NOT NULL,
        access_token BYTEA,
        access_expires_at BIGINT NOT NULL DEFAULT 0,
        refresh_token BYTEA NOT NULL,
        last_refresh BIGINT,
        state TEXT NOT NULL DEFAULT 'active',
        state_reason TEXT,
        version BIGINT NOT NULL DEFAULT 1,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE spotoken_sessions (
        id_hash BYTEA PRIMARY KEY,
        account TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX spotoken_sessions_expiry ON spotoken_sessions (expires_at);
    CREATE TABLE spotoken_pending_logins (
        state_hash BYTEA PRIMARY KEY,
        binding_hash BYTEA NOT NULL,
        sealed BYTEA NOT NULL,
        return_to TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    )",
    // 3: the issuer an account's tokens came from (NULL: the configured provider)
    "ALTER TABLE spotoken_accounts ADD COLUMN issuer TEXT",
    // 4: the background refresher's due work (spotoken serve): when an
    // account was last used, claims on due accounts, and the indexes that
    // make a pass cost the accounts due rather than the sessions stored.
    "ALTER TABLE spotoken_accounts ADD COLUMN used_at BIGINT,
        ADD COLUMN refresh_claimed_until BIGINT, ADD COLUMN refresh_claimed_by BIGINT;
    CREATE INDEX spotoken_accounts_due ON spotoken_accounts (access_expires_at)
        WHERE used_at IS NOT NULL;
    CREATE INDEX spotoken_sessions_account ON spotoken_sessions (account, expires_at);
    CREATE INDEX spotoken_pending_logins_expiry ON spotoken_pending_logins (expires_at)",
];

const COLUMNS: &str = "account, client_id, user_id, display_name, scopes, authorized_at, access_token, \
     access_expires_at, refresh_token, last_refresh, state, state_reason, version, updated_at, issuer";

/// An arbitrary constant: the advisory lock that serializes migrations.
pub(super) const MIGRATION_LOCK: i64 = 0x5370_6f74_6f6b_656e; // "Spotoken"

/// The PostgreSQL store.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    describe: String,
    /// For the logout listener's own connection and for naming failures.
    target: Target,
    /// `NOTIFY` channel for session deletions, per schema.
    channel: String,
    /// Names this instance's claims on due accounts (see `claim_due`).
    claimer: i64,
}

pub(super) fn pg_err(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::Internal(format!(
            "PostgreSQL store: {} ({})",
            db.message(),
            db.code().code()
        )),
        None if e.is_closed() => {
            Error::temporary(format!("PostgreSQL connection closed: {e}"), None)
        }
        None => Error::Internal(format!("PostgreSQL store: {e}")),
    }
}

impl Postgres {
    /// Connects to `url` (`postgres://user@host:port/db`) and runs migrations.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_in_schema(url, None).await
    }

    /// As [`connect`](Self::connect), keeping tables in `schema` (created if
    /// missing); used to isolate tests and tenants.
    pub async fn connect_in_schema(url: &str, schema: Option<&str>) -> Result<Self, Error> {
        let mut target = pg_connect::resolve(url, &|k| std::env::var(k).ok())?;
        let cfg = &mut target.config;
        if let Some(s) = schema {
            if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::Configuration(format!(
                    "schema name '{s}' must be [A-Za-z0-9_]"
                )));
            }
            cfg.options(format!("-c search_path={s}"));
        }
        let describe = format!(
            "PostgreSQL {}/{}{}",
            pg_connect::hosts(cfg),
            cfg.get_dbname().unwrap_or(""),
            schema.map(|s| format!(" (schema {s})")).unwrap_or_default()
        );
        let channel = format!("spotoken_logout_{}", schema.unwrap_or("public"));
        let mgr = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(16)
            .build()
            .map_err(|e| Error::Internal(format!("PostgreSQL pool: {e}")))?;
        let store = Self {
            pool,
            describe,
            target,
            channel,
            claimer: rand::random(),
        };
        store.migrate(schema).await?;
        Ok(store)
    }

    /// A pool of its own on the same database and schema: for work done
    /// while a connection of the main pool is held (the request budget is
    /// asked under an account's refresh lock), which must never wait for
    /// the main pool.
    pub(super) fn side_pool(&self, size: usize) -> Result<Pool, Error> {
        let mgr = Manager::from_config(
            self.target.config.clone(),
            self.target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(mgr)
            .max_size(size)
            .build()
            .map_err(|e| Error::Internal(format!("PostgreSQL pool: {e}")))
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                pg_connect::connect_error(&e, &self.target, &self.describe)
            }
            e => Error::temporary(
                format!("cannot reach PostgreSQL ({}): {e}", self.describe),
                None,
            ),
        })
    }

    async fn migrate(&self, schema: Option<&str>) -> Result<(), Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        if let Some(s) = schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
                .await
                .map_err(pg_err)?;
        }
        tx.batch_execute("CREATE TABLE IF NOT EXISTS spotoken_schema (version INT NOT NULL)")
            .await
            .map_err(pg_err)?;
        let current: i32 = tx
            .query_opt("SELECT version FROM spotoken_schema", &[])
            .await
            .map_err(pg_err)?
            .map_or(0, |r| r.get(0));
        let target = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if current > target {
            return Err(Error::Configuration(format!(
                "the database has spotoken schema version {current}, newer than this spotoken ({target}); upgrade spotoken"
            )));
        }
        for sql in MIGRATIONS
            .iter()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            tx.batch_execute(sql).await.map_err(pg_err)?;
        }
        tx.batch_execute("DELETE FROM spotoken_schema")
            .await
            .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO spotoken_schema (version) VALUES ($1)",
            &[&target],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }
}

impl Postgres {
    /// Drops a test schema (tests only).
    #[cfg(test)]
    pub(crate) async fn drop_schema_for_tests(&self, schema: &str) {
        if let Ok(client) = self.client().await {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await;
        }
    }
}

fn row_from_pg(r: &tokio_postgres::Row) -> Row {
    let scopes: String = r.get(4);
    let state: String = r.get(10);
    Row {
        account: r.get(0),
        client_id: r.get(1),
        user_id: r.get(2),
        display_name: r.get(3),
        scopes: Scopes::parse(&scopes),
        authorized_at: r.get(5),
        access_token: r.get(6),
        access_expires_at: r.get(7),
        refresh_token: r.get(8),
        last_refresh: r.get(9),
        state: Row::state_from_columns(&state, r.get(11)),
        version: r.get(12),
        updated_at: r.get(13),
        issuer: r.get(14),
    }
}

/// `$1..$14` in `COLUMNS` order without the version (its bump is the caller's).
fn row_values<'a>(
    row: &'a Row,
    scopes: &'a String,
    state: &'a &'static str,
    reason: &'a Option<&'a str>,
    now: &'a i64,
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    vec![
        &row.account,
        &row.client_id,
        &row.user_id,
        &row.display_name,
        scopes,
        &row.authorized_at,
        &row.access_token,
        &row.access_expires_at,
        &row.refresh_token,
        &row.last_refresh,
        state,
        reason,
        now,
        &row.issuer,
    ]
}

async fn load_with(
    client: &deadpool_postgres::Object,
    account: &str,
) -> Result<Option<Row>, Error> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM spotoken_accounts WHERE account = $1"
        ))
        .await
        .map_err(pg_err)?;
    Ok(client
        .query_opt(&stmt, &[&account])
        .await
        .map_err(pg_err)?
        .as_ref()
        .map(row_from_pg))
}

/// Writes `row` as version `row.version + 1` if the stored version is `row.version`.
async fn cas_with(client: &deadpool_postgres::Object, mut row: Row) -> Result<Option<Row>, Error> {
    let now = unix_now();
    let (state, reason) = row.state_columns();
    let scopes = row.scopes.to_wire();
    let next = super::next_version(row.version);
    // A version of 0 or less expects no row: a new login (see
    // `TokenStore::update`).
    let n = if row.version <= 0 {
        client
            .execute(
                &format!(
                    "INSERT INTO spotoken_accounts ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$15,$13,$14)
                     ON CONFLICT (account) DO NOTHING"
                ),
                &{
                    let mut values = row_values(&row, &scopes, &state, &reason, &now);
                    values.push(&next);
                    values
                },
            )
            .await
            .map_err(pg_err)?
    } else {
        client
        .execute(
            "UPDATE spotoken_accounts SET client_id = $2, user_id = $3, display_name = $4, scopes = $5,
                 authorized_at = $6, access_token = $7, access_expires_at = $8, refresh_token = $9,
                 last_refresh = $10, state = $11, state_reason = $12, version = version + 1, updated_at = $13,
                 issuer = $14
             WHERE account = $1 AND version = $15",
            &{
                let mut values = row_values(&row, &scopes, &state, &reason, &now);
                values.push(&row.version);
                values
            },
        )
        .await
        .map_err(pg_err)?
    };
    if n == 0 {
        return Ok(None);
    }
    row.version = next;
    row.updated_at = now;
    Ok(Some(row))
}

#[async_trait]
impl TokenStore for Postgres {
    async fn load(&self, account: &str) -> Result<Option<Row>, Error> {
        let client = self.client().await?;
        load_with(&client, account).await
    }

    async fn list(&self) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM spotoken_accounts ORDER BY account"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(row_from_pg).collect())
    }

    async fn upsert(&self, mut row: Row) -> Result<Row, Error> {
        let client = self.client().await?;
        let now = unix_now();
        let (state, reason) = row.state_columns();
        let scopes = row.scopes.to_wire();
        let version: i64 = client
            .query_one(
                &format!(
                    "INSERT INTO spotoken_accounts ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,1,$13,$14)
                     ON CONFLICT (account) DO UPDATE SET client_id = EXCLUDED.client_id, user_id = EXCLUDED.user_id,
                       display_name = EXCLUDED.display_name, scopes = EXCLUDED.scopes,
                       authorized_at = EXCLUDED.authorized_at, access_token = EXCLUDED.access_token,
                       access_expires_at = EXCLUDED.access_expires_at, refresh_token = EXCLUDED.refresh_token,
                       last_refresh = EXCLUDED.last_refresh, state = EXCLUDED.state,
                       state_reason = EXCLUDED.state_reason, version = spotoken_accounts.version + 1,
                       updated_at = EXCLUDED.updated_at, issuer = EXCLUDED.issuer
                     RETURNING version"
                ),
                &row_values(&row, &scopes, &state, &reason, &now),
            )
            .await
            .map_err(pg_err)?
            .get(0);
        row.version = version;
        row.updated_at = now;
        Ok(row)
    }

    async fn update(&self, row: Row) -> Result<Option<Row>, Error> {
        let client = self.client().await?;
        cas_with(&client, row).await
    }

    async fn delete(&self, account: &str) -> Result<bool, Error> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM spotoken_accounts WHERE account = $1",
                &[&account],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn lock(&self, account: &str) -> Result<Box<dyn AccountLock>, Error> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(pg_err)?;
        let locked = client
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/' || $1, 0))",
                &[&account],
            )
            .await;
        if let Err(e) = locked {
            drop(deadpool_postgres::Object::take(client));
            return Err(pg_err(e));
        }
        Ok(Box::new(PgLock {
            client: Some(client),
            account: account.to_owned(),
        }))
    }

    async fn ping(&self) -> Result<(), Error> {
        let client = self.client().await?;
        client.batch_execute("SELECT 1").await.map_err(pg_err)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

fn session_from_pg(r: &tokio_postgres::Row) -> super::sessions::SessionRecord {
    super::sessions::SessionRecord {
        id_hash: r.get(0),
        account: r.get(1),
        created_at: r.get(2),
        expires_at: r.get(3),
    }
}

#[async_trait]
impl super::sessions::SessionStore for Postgres {
    async fn put_session(&self, s: super::sessions::SessionRecord) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO spotoken_sessions (id_hash, account, created_at, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id_hash) DO UPDATE SET account = EXCLUDED.account, created_at = EXCLUDED.created_at,
                   expires_at = EXCLUDED.expires_at",
                &[&s.id_hash, &s.account, &s.created_at, &s.expires_at],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn get_session(
        &self,
        id_hash: &[u8],
        now: i64,
    ) -> Result<Option<super::sessions::SessionRecord>, Error> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id_hash, account, created_at, expires_at FROM spotoken_sessions WHERE id_hash = $1 AND expires_at > $2",
            )
            .await
            .map_err(pg_err)?;
        Ok(client
            .query_opt(&stmt, &[&id_hash, &now])
            .await
            .map_err(pg_err)?
            .as_ref()
            .map(session_from_pg))
    }

    async fn delete_session(
        &self,
        id_hash: &[u8],
    ) -> Result<Option<super::sessions::SessionRecord>, Error> {
        let client = self.client().await?;
        // One statement: the deletion and, when a row went, the notice that
        // makes every listening instance drop its cached sessions (delivered
        // at commit).
        Ok(client
            .query_opt(
                "WITH gone AS (DELETE FROM spotoken_sessions WHERE id_hash = $1
                               RETURNING id_hash, account, created_at, expires_at)
                 SELECT gone.*, pg_notify($2, '') FROM gone",
                &[&id_hash, &self.channel],
            )
            .await
            .map_err(pg_err)?
            .as_ref()
            .map(session_from_pg))
    }

    async fn touch_session(
        &self,
        id_hash: &[u8],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, Error> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE spotoken_sessions SET expires_at = $2 WHERE id_hash = $1 AND expires_at > $3",
                &[&id_hash, &expires_at, &now],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn delete_account_sessions(&self, account: &str) -> Result<u64, Error> {
        let client = self.client().await?;
        // As in `delete_session`: the notice goes with the deletion.
        let row = client
            .query_opt(
                "WITH gone AS (DELETE FROM spotoken_sessions WHERE account = $1 RETURNING 1),
                      counted AS (SELECT count(*) AS n FROM gone)
                 SELECT n, pg_notify($2, '') FROM counted WHERE n > 0",
                &[&account, &self.channel],
            )
            .await
            .map_err(pg_err)?;
        let n: i64 = row.map_or(0, |r| r.get(0));
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn put_pending(&self, p: super::sessions::PendingRecord) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO spotoken_pending_logins (state_hash, binding_hash, sealed, return_to, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&p.state_hash, &p.binding_hash, &p.sealed, &p.return_to, &p.expires_at],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn take_pending(
        &self,
        state_hash: &[u8],
        now: i64,
    ) -> Result<Option<super::sessions::PendingRecord>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "DELETE FROM spotoken_pending_logins WHERE state_hash = $1
                 RETURNING state_hash, binding_hash, sealed, return_to, expires_at",
                &[&state_hash],
            )
            .await
            .map_err(pg_err)?;
        Ok(row
            .map(|r| super::sessions::PendingRecord {
                state_hash: r.get(0),
                binding_hash: r.get(1),
                sealed: r.get(2),
                return_to: r.get(3),
                expires_at: r.get(4),
            })
            .filter(|p| p.expires_at > now))
    }

    async fn session_accounts(&self, now: i64) -> Result<Vec<String>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT account FROM spotoken_sessions WHERE expires_at > $1 ORDER BY account",
                &[&now],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn purge_expired(&self, now: i64, limit: u32) -> Result<Vec<String>, Error> {
        let client = self.client().await?;
        let limit = i64::from(limit);
        let rows = client
            .query(PURGE_SESSIONS, &[&now, &limit])
            .await
            .map_err(pg_err)?;
        client
            .execute(PURGE_PENDING, &[&now, &limit])
            .await
            .map_err(pg_err)?;
        let mut accounts: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        accounts.sort();
        Ok(accounts)
    }

    async fn note_used(&self, accounts: &[String], at: i64) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE spotoken_accounts SET used_at = GREATEST(used_at, $2)
                 WHERE account = ANY($1) AND (used_at IS NULL OR used_at < $2)",
                &[&accounts, &at],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn claim_due(&self, q: DueQuery) -> Result<DueBatch, Error> {
        let client = self.client().await?;
        let limit = i64::from(q.limit);
        let retired = client
            .execute(RETIRE, &[&q.now, &q.expires_before, &q.used_since, &limit])
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(
                CLAIM,
                &[
                    &q.now,
                    &q.expires_before,
                    &q.used_since,
                    &self.claimer,
                    &limit,
                    &q.claim_until,
                ],
            )
            .await
            .map_err(pg_err)?;
        let mut held = 0;
        let mut claimed: Vec<(String, i64)> = Vec::with_capacity(rows.len());
        for r in &rows {
            held = r.get::<_, i64>(0);
            if let Some(account) = r.get::<_, Option<String>>(1) {
                claimed.push((account, r.get::<_, Option<i64>>(2).unwrap_or(0)));
            }
        }
        claimed.sort_by_key(|(_, expires)| *expires);
        Ok(DueBatch {
            accounts: claimed.into_iter().map(|(a, _)| a).collect(),
            held_elsewhere: u64::try_from(held).unwrap_or(0),
            retired,
        })
    }

    async fn census(&self, now: i64) -> Result<Census, Error> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM spotoken_sessions WHERE expires_at > $1),
                        (SELECT count(*) FROM spotoken_accounts a WHERE a.state <> 'active' AND EXISTS
                           (SELECT 1 FROM spotoken_sessions s
                            WHERE s.account = a.account AND s.expires_at > $1))",
                &[&now],
            )
            .await
            .map_err(pg_err)?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Census {
            sessions: n(0),
            reauth_required: n(1),
        })
    }

    async fn logouts(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let (tx, rx) = tokio::sync::watch::channel(0);
        tokio::spawn(listen_for_logouts(
            self.target.clone(),
            self.channel.clone(),
            tx,
        ));
        Some(rx)
    }
}

/// Ended sessions, soonest ended first, through `spotoken_sessions_expiry`;
/// rows another instance is deleting are left to it.
const PURGE_SESSIONS: &str = "DELETE FROM spotoken_sessions WHERE id_hash IN
     (SELECT id_hash FROM spotoken_sessions WHERE expires_at <= $1
      ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
     RETURNING account";
/// Ended pending logins, through `spotoken_pending_logins_expiry`.
const PURGE_PENDING: &str = "DELETE FROM spotoken_pending_logins WHERE state_hash IN
     (SELECT state_hash FROM spotoken_pending_logins WHERE expires_at <= $1
      ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Takes accounts that will not be refreshed in the background out of the
/// due index (`spotoken_accounts_due` holds accounts with a recorded use):
/// idle past the window, flagged for a new login, or without a live
/// session. The outer condition is checked again on the row as it is when
/// locked, so a use recorded meanwhile is never undone.
/// $1 now, $2 expires before, $3 used since, $4 limit.
const RETIRE: &str = "UPDATE spotoken_accounts a SET used_at = NULL
     WHERE a.account IN
       (SELECT b.account FROM spotoken_accounts b
        WHERE b.used_at IS NOT NULL AND b.access_expires_at < $2
          AND (b.used_at < $3 OR b.state <> 'active' OR NOT EXISTS
                (SELECT 1 FROM spotoken_sessions s WHERE s.account = b.account AND s.expires_at > $1))
        LIMIT $4 FOR UPDATE SKIP LOCKED)
       AND (a.used_at < $3 OR a.state <> 'active' OR NOT EXISTS
             (SELECT 1 FROM spotoken_sessions s WHERE s.account = a.account AND s.expires_at > $1))";

/// Claims the due accounts soonest to expire, skipping rows another
/// instance is claiming at this moment (`SKIP LOCKED`) and rows under a
/// live claim; answers the count of due accounts another instance holds,
/// then the claimed accounts (one row with NULLs when none).
/// $1 now, $2 expires before, $3 used since, $4 this instance, $5 limit,
/// $6 claim until.
const CLAIM: &str = "WITH picked AS (
       SELECT a.account FROM spotoken_accounts a
       WHERE a.used_at >= $3 AND a.access_expires_at < $2 AND a.state = 'active'
         AND (a.refresh_claimed_until IS NULL OR a.refresh_claimed_until <= $1)
         AND EXISTS (SELECT 1 FROM spotoken_sessions s WHERE s.account = a.account AND s.expires_at > $1)
       ORDER BY a.access_expires_at LIMIT $5
       FOR UPDATE OF a SKIP LOCKED),
     claimed AS (
       UPDATE spotoken_accounts c SET refresh_claimed_until = $6, refresh_claimed_by = $4
       FROM picked WHERE c.account = picked.account
       RETURNING c.account, c.access_expires_at),
     held AS (
       SELECT count(*) AS n FROM spotoken_accounts h
       WHERE h.used_at >= $3 AND h.access_expires_at < $2 AND h.state = 'active'
         AND h.refresh_claimed_until > $1 AND h.refresh_claimed_by <> $4)
     SELECT held.n, claimed.account, claimed.access_expires_at
     FROM held LEFT JOIN claimed ON true";

struct PgLock {
    client: Option<deadpool_postgres::Object>,
    account: String,
}

impl PgLock {
    fn client(&self) -> Result<&deadpool_postgres::Object, Error> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::Internal("refresh lock used after release".into()))
    }
}

#[async_trait]
impl AccountLock for PgLock {
    async fn load(&mut self) -> Result<Option<Row>, Error> {
        load_with(self.client()?, &self.account).await
    }

    async fn update(&mut self, row: Row) -> Result<Option<Row>, Error> {
        let client = self.client()?;
        let written = cas_with(client, row).await?;
        // Commit now: the new refresh token must be durable before anyone uses
        // the access token that came with it. This also ends the lock.
        client.batch_execute("COMMIT").await.map_err(pg_err)?;
        client.batch_execute("BEGIN").await.map_err(pg_err)?;
        client
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/' || $1, 0))",
                &[&self.account],
            )
            .await
            .map_err(pg_err)?;
        Ok(written)
    }

    async fn release(mut self: Box<Self>) -> Result<(), Error> {
        if let Some(client) = self.client.take()
            && let Err(e) = client.batch_execute("COMMIT").await
        {
            drop(deadpool_postgres::Object::take(client));
            return Err(pg_err(e));
        }
        Ok(())
    }
}

impl Drop for PgLock {
    fn drop(&mut self) {
        // Released without `release` (a panic or a cancelled task): the
        // connection is mid-transaction, so close it rather than return it to
        // the pool; PostgreSQL then drops the lock.
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Keeps a connection that `LISTEN`s for session deletions and bumps `tx` for
/// each, reconnecting with backoff; every (re)connection bumps it too, since
/// deletions made while it was away were missed. Ends when nobody watches.
async fn listen_for_logouts(target: Target, channel: String, tx: tokio::sync::watch::Sender<u64>) {
    use std::time::Duration;
    let mut pause = Duration::from_millis(200);
    loop {
        match target.config.connect(target.tls.clone()).await {
            Ok((client, mut connection)) => {
                let (heard, mut notices) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                if heard.send(()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "logout listener connection failed");
                                return;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                    Ok(()) => {
                        pause = Duration::from_millis(200);
                        tx.send_modify(|n| *n += 1);
                        loop {
                            tokio::select! {
                                got = notices.recv() => match got {
                                    Some(()) => tx.send_modify(|n| *n += 1),
                                    None => break,
                                },
                                () = tx.closed() => {
                                    driver.abort();
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for logouts"),
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect the logout listener"),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = tx.closed() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::suite;
    use std::sync::Arc;

    /// The URL of a test database, if set.
    pub(crate) fn test_url_quiet() -> Option<String> {
        std::env::var("SPOTOKEN_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
    }

    /// The URL of a test database, or a visible skip.
    pub(crate) fn test_url() -> Option<String> {
        match std::env::var("SPOTOKEN_TEST_DATABASE_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                eprintln!(
                    "SKIPPED: SPOTOKEN_TEST_DATABASE_URL is unset; PostgreSQL store tests did not run"
                );
                None
            }
        }
    }

    pub(crate) fn fresh_schema(tag: &str) -> String {
        format!("spotoken_test_{tag}_{}_{}", std::process::id(), unix_now())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_store_suite() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("suite");
        let store = Postgres::connect_in_schema(&url, Some(&schema))
            .await
            .expect("connect");
        suite::run_all(Arc::new(store.clone())).await;
        let client = store.client().await.expect("client");
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("cleanup");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_2_schema_gains_the_issuer_column_and_keeps_its_rows() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("upgrade");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path TO {schema};
                 {}; {};
                 CREATE TABLE spotoken_schema (version INT NOT NULL);
                 INSERT INTO spotoken_schema (version) VALUES (2);
                 INSERT INTO spotoken_accounts (account, client_id, authorized_at, refresh_token, updated_at)
                 VALUES ('old', 'cid', 1, '\\x01', 1);",
                MIGRATIONS[0], MIGRATIONS[1]
            ))
            .await
            .expect("a version 2 schema");
        let store = Postgres::connect_in_schema(&url, Some(&schema))
            .await
            .expect("migrates");
        let old = store.load("old").await.expect("load").expect("kept");
        assert_eq!(old.issuer, None, "rows from before know no issuer");
        let mut next = old;
        next.issuer = Some("https://id.example".into());
        store.update(next).await.expect("update").expect("won");
        let back = store.load("old").await.expect("load").expect("row");
        assert_eq!(back.issuer.as_deref(), Some("https://id.example"));
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("cleanup");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_session_suite() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("sessions");
        let store = Postgres::connect_in_schema(&url, Some(&schema))
            .await
            .expect("connect");
        crate::store::sessions::suite::run_all(&store).await;
        store
            .client()
            .await
            .expect("client")
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("cleanup");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_due_work_suite() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("due");
        let a = Arc::new(
            Postgres::connect_in_schema(&url, Some(&schema))
                .await
                .expect("connect"),
        );
        let b = Arc::new(
            Postgres::connect_in_schema(&url, Some(&schema))
                .await
                .expect("connect"),
        );
        crate::store::sessions::due_suite::run_all(a.clone(), a.clone(), b).await;
        a.drop_schema_for_tests(&schema).await;
    }

    /// The refresher's queries can go through the indexes (the partial due
    /// index included): with sequential scans priced out, no plan reads a
    /// whole table. (On tables this small the planner would rightly scan.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_work_queries_use_the_indexes() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("plan");
        let store = Postgres::connect_in_schema(&url, Some(&schema))
            .await
            .expect("connect");
        let mut client = store.client().await.expect("client");
        let tx = client.transaction().await.expect("begin");
        tx.batch_execute("SET LOCAL enable_seqscan = off")
            .await
            .expect("set");
        for (name, sql, n, index) in [
            ("claim", CLAIM, 6, "spotoken_accounts_due"),
            ("retire", RETIRE, 4, "spotoken_accounts_due"),
            (
                "purge sessions",
                PURGE_SESSIONS,
                2,
                "spotoken_sessions_expiry",
            ),
            (
                "purge logins",
                PURGE_PENDING,
                2,
                "spotoken_pending_logins_expiry",
            ),
        ] {
            let args: Vec<i64> = vec![0; n];
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
                .iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let plan: Vec<String> = tx
                .query(&format!("EXPLAIN {sql}"), &params)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains(index), "{name} does not use {index}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
        }
        tx.rollback().await.expect("rollback");
        drop(client);
        store.drop_schema_for_tests(&schema).await;
    }

    #[tokio::test]
    async fn migrations_are_idempotent_across_instances() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("migr");
        let (a, b) = tokio::join!(
            Postgres::connect_in_schema(&url, Some(&schema)),
            Postgres::connect_in_schema(&url, Some(&schema))
        );
        let (a, _b) = (a.expect("a"), b.expect("b"));
        a.client()
            .await
            .expect("client")
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("cleanup");
    }
}
