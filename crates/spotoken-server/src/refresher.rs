//! The background refresher: keeps the access tokens of accounts in use
//! fresh ahead of expiry, so their requests never wait on a refresh, with
//! bounded concurrency and one shared pause when Spotify rate-limits the app
//! (limits count per app, so one account's 429 is everyone's).
//!
//! A pass costs the work due, not the sessions stored. It records the uses
//! seen since the last pass ([`crate::activity`]), purges a bounded batch of
//! ended sessions (through their expiry index), then claims due accounts in
//! batches from the store: a token expiring within `ahead`, a use within
//! `window`, a live session. Idle sessions are not kept warm; their next
//! request refreshes on demand (one round trip, single-flight as always).
//! With several instances on one PostgreSQL, a claim holds its accounts for
//! `claim_lease`, so instances take disjoint batches and each keeps claiming
//! until nothing due is left; the engine's per-account lock still makes sure
//! a token is refreshed once even if a claim runs out mid-refresh.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spotoken::ErrorKind;
use spotoken::core::sync::LockUnpoisoned as _;
use spotoken::store::DueQuery;
use tokio::sync::Semaphore;

use crate::state::AppState;

/// Refresher settings.
#[derive(Debug, Clone, Copy)]
pub struct RefresherConfig {
    /// Time between passes.
    pub interval: Duration,
    /// Refresh when less than this is left.
    pub ahead: Duration,
    /// Refreshes in flight at once.
    pub concurrency: usize,
    /// Keep warm only accounts used within this long (`--refresh-window`).
    pub window: Duration,
    /// Accounts claimed at once.
    pub batch: u32,
    /// How long a claim keeps other instances off its accounts: longer
    /// than a batch takes to refresh.
    pub claim_lease: Duration,
    /// Ended sessions purged per pass at most.
    pub purge_batch: u32,
}

impl RefresherConfig {
    /// The shortest active window: uses are recorded at most every few
    /// minutes, so a shorter window would lose accounts still in use.
    #[allow(clippy::cast_sign_loss)]
    pub const MIN_WINDOW: Duration =
        Duration::from_secs(2 * crate::activity::NOTE_EVERY_SECS as u64);
}

impl Default for RefresherConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            ahead: Duration::from_secs(600),
            concurrency: 8,
            // An access token's lifetime: a user away longer pays one
            // refresh on return.
            window: Duration::from_secs(3600),
            batch: 128,
            claim_lease: Duration::from_secs(120),
            purge_batch: 1000,
        }
    }
}

/// What one pass did (also summed up in `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Due accounts this instance claimed.
    pub due: u64,
    /// Of those, the accounts left with a fresh token.
    pub refreshed: u64,
    /// Due accounts another instance held a claim on when the pass began.
    pub skipped: u64,
    /// How long the pass took.
    pub took: Duration,
}

/// The gauges' census (a count over all sessions) runs at most this often.
const CENSUS_EVERY_SECS: i64 = 600;

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// One pass; returns how long to pause if the app is rate-limited.
pub(crate) async fn pass(st: &AppState, cfg: RefresherConfig) -> Option<Duration> {
    pass_report(st, cfg).await.0
}

/// One background refresher pass (record uses, purge ended sessions, claim
/// and refresh the accounts due), with what it did: for embedders that
/// schedule passes themselves.
pub async fn pass_report(st: &AppState, cfg: RefresherConfig) -> (Option<Duration>, PassReport) {
    let started = Instant::now();
    let now = st.tokens.now();
    record_uses(st, now).await;
    purge(st, now, cfg.purge_batch).await;
    if st.metrics.census_due(now, CENSUS_EVERY_SECS) {
        match st.sessions.census(now).await {
            Ok(c) => st.metrics.counted(
                usize::try_from(c.sessions).unwrap_or(usize::MAX),
                Some(usize::try_from(c.reauth_required).unwrap_or(usize::MAX)),
            ),
            Err(e) => tracing::warn!(error = %e, "cannot count sessions"),
        }
    }
    let mut report = PassReport::default();
    let pause = refresh_due(st, cfg, &mut report).await;
    report.took = started.elapsed();
    st.metrics.pass(report);
    (pause, report)
}

/// Writes the uses seen since the last pass, in one batch.
async fn record_uses(st: &AppState, now: i64) {
    let used = st.activity.take(now);
    if used.is_empty() {
        return;
    }
    if let Err(e) = st.sessions.note_used(&used, now).await {
        tracing::warn!(error = %e, "cannot record which accounts are in use");
        st.activity.put_back(used);
    }
}

/// Deletes a bounded batch of ended sessions, and their tokens.
async fn purge(st: &AppState, now: i64, limit: u32) {
    match st.sessions.purge_expired(now, limit.max(1)).await {
        Ok(ended) => {
            for account in ended {
                st.metrics.session_ended();
                let _ = st.tokens.logout(&account).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot purge ended sessions"),
    }
}

/// Claims and refreshes due accounts, batch after batch, until none is left
/// or the app is rate-limited.
async fn refresh_due(
    st: &AppState,
    cfg: RefresherConfig,
    report: &mut PassReport,
) -> Option<Duration> {
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let pause = Arc::new(Mutex::new(None::<Duration>));
    let paused = |p: &Mutex<Option<Duration>>| *p.lock_unpoisoned();
    let batch_size = cfg.batch.max(1);
    // A claim that ran out while this pass went on hands its accounts back:
    // they are not taken twice in one pass.
    let mut seen = HashSet::new();
    let mut first = true;
    loop {
        let now = st.tokens.now();
        let query = DueQuery {
            now,
            expires_before: now.saturating_add(secs(cfg.ahead)),
            used_since: now.saturating_sub(secs(cfg.window)),
            limit: batch_size,
            claim_until: now.saturating_add(secs(cfg.claim_lease)),
        };
        let batch = match st.sessions.claim_due(query).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the accounts due");
                break;
            }
        };
        if first {
            report.skipped = batch.held_elsewhere;
            first = false;
        }
        let full =
            batch.accounts.len() >= batch_size as usize || batch.retired >= u64::from(batch_size);
        let new: Vec<String> = batch
            .accounts
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();
        if new.is_empty() && !full {
            break;
        }
        report.due += new.len() as u64;
        let mut tasks = Vec::with_capacity(new.len());
        for account in new {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            if paused(&pause).is_some() {
                break;
            }
            let (tokens, pause, ahead) = (st.tokens.clone(), pause.clone(), cfg.ahead);
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                refresh_one(&tokens, &account, ahead, &pause).await
            }));
        }
        for t in tasks {
            if t.await.unwrap_or(false) {
                report.refreshed += 1;
            }
        }
        if paused(&pause).is_some() || !full {
            break;
        }
    }
    paused(&pause)
}

/// Refreshes one account if it still needs it; true if it has a fresh token.
async fn refresh_one(
    tokens: &spotoken::Tokens,
    account: &str,
    ahead: Duration,
    pause: &Mutex<Option<Duration>>,
) -> bool {
    match tokens.access_token_with(account, ahead).await {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::AuthorizationNeeded => {
            tracing::info!(account, "session needs a new login");
            false
        }
        Err(e) => {
            tracing::warn!(account, error = %e, "background refresh failed");
            if let Some(wait) = e.retry_after() {
                *pause.lock_unpoisoned() = Some(wait);
            }
            false
        }
    }
}

/// Runs passes until the task is dropped.
pub(crate) async fn run(st: AppState, cfg: RefresherConfig) {
    loop {
        let wait = match pass(&st, cfg).await {
            Some(pause) => {
                tracing::warn!(
                    pause_s = pause.as_secs(),
                    "rate limited: pausing background refreshes"
                );
                pause.max(cfg.interval)
            }
            None => cfg.interval,
        };
        tokio::time::sleep(wait).await;
    }
}
