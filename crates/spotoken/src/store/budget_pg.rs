//! Request budgets in PostgreSQL: one row per budget, shared by every
//! instance on the database (see [`crate::budget`]).
//!
//! The table is this module's own, created when a budget is first set up
//! (under the migrations' advisory lock, so instances starting together do
//! not race), and apart from the accounts' migrations: a budget is state
//! that may be lost at any time, never data. A take is one transaction that
//! locks the row, decides with the pure core and writes the result back.

use async_trait::async_trait;
use spotoken_core::budget::{Ledger, Rate, Taken};

use super::postgres::{MIGRATION_LOCK, Postgres, pg_err};
use crate::Error;
use crate::budget::SharedLedger;

/// A budget ledger in the store's database (and schema).
#[derive(Clone)]
pub struct PgLedger {
    store: Postgres,
}

impl Postgres {
    /// The ledger for request budgets shared by the instances on this
    /// database; creates its table if missing.
    pub async fn budget_ledger(&self) -> Result<PgLedger, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS spotoken_budgets (
                key TEXT PRIMARY KEY,
                window_start BIGINT NOT NULL DEFAULT 0,
                used BIGINT NOT NULL DEFAULT 0,
                paused_until BIGINT NOT NULL DEFAULT 0
            )",
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(PgLedger {
            store: self.clone(),
        })
    }
}

fn ledger_from(r: &tokio_postgres::Row) -> Ledger {
    Ledger {
        window_start: r.get(0),
        used: u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
        paused_until: r.get(2),
    }
}

#[async_trait]
impl SharedLedger for PgLedger {
    async fn take(&self, key: &str, rate: Rate, now: i64, want: u32) -> Result<Taken, Error> {
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Creates the row if missing and locks it until the commit.
        let row = tx
            .query_one(
                "INSERT INTO spotoken_budgets (key) VALUES ($1)
                 ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
                 RETURNING window_start, used, paused_until",
                &[&key],
            )
            .await
            .map_err(pg_err)?;
        let ledger = ledger_from(&row);
        let (next, taken) = rate.take(ledger, now, want);
        if next != ledger {
            tx.execute(
                "UPDATE spotoken_budgets SET window_start = $2, used = $3 WHERE key = $1",
                &[&key, &next.window_start, &i64::from(next.used)],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(taken)
    }

    async fn pause(&self, key: &str, until: i64) -> Result<(), Error> {
        let client = self.store.client().await?;
        client
            .execute(
                "INSERT INTO spotoken_budgets (key, paused_until) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE
                 SET paused_until = GREATEST(spotoken_budgets.paused_until, EXCLUDED.paused_until)",
                &[&key, &until],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Ledger, Error> {
        let client = self.store.client().await?;
        Ok(client
            .query_opt(
                "SELECT window_start, used, paused_until FROM spotoken_budgets WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(pg_err)?
            .map(|r| ledger_from(&r))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Budget, RequestBudget};
    use crate::store::postgres::tests::{fresh_schema, test_url};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Two instances (two pools) on one schema, 300 requests at once
    /// between them in one window of the clock: exactly the budget is let
    /// through; a pause one of them learns stops the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_on_one_database_share_the_budget_and_the_pause() {
        let Some(url) = test_url() else { return };
        let schema = fresh_schema("budget");
        let clock = Arc::new(AtomicI64::new(5_000));
        let mut budgets = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..2 {
            let store = Postgres::connect_in_schema(&url, Some(&schema))
                .await
                .expect("connect");
            let ledger = Arc::new(store.budget_ledger().await.expect("ledger"));
            let c = clock.clone();
            budgets.push(Arc::new(Budget::new(
                "token",
                "25/s".parse().expect("rate"),
                ledger,
                Arc::new(move || c.load(Ordering::SeqCst)),
            )));
            stores.push(store);
        }
        let mut tasks = Vec::new();
        for i in 0..300 {
            let b = budgets[i % 2].clone();
            tasks.push(tokio::spawn(async move { b.acquire().await.is_ok() }));
        }
        let mut sent = 0;
        for t in tasks {
            sent += u32::from(t.await.expect("join"));
        }
        assert_eq!(sent, 25, "the budget, across both instances");
        clock.fetch_add(1, Ordering::SeqCst);
        budgets[0].pause_until(5_061).await;
        let e = budgets[1].acquire().await.expect_err("paused");
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(60)));
        assert_eq!(
            budgets[1].shared_pause().await.expect("read"),
            Some(std::time::Duration::from_secs(60))
        );
        clock.store(5_061, Ordering::SeqCst);
        assert!(budgets[1].acquire().await.is_ok(), "the pause is over");
        stores[0].drop_schema_for_tests(&schema).await;
    }
}
