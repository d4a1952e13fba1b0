//! The background refresher: keeps every session's access token fresh ahead of
//! expiry, with bounded concurrency, and one shared pause when Spotify
//! rate-limits the app (limits count per app, so one account's 429 is
//! everyone's). Ended sessions are purged and their tokens deleted.

use std::sync::Arc;
use std::time::Duration;

use spotoken::ErrorKind;
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
}

impl Default for RefresherConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            ahead: Duration::from_secs(600),
            concurrency: 8,
        }
    }
}

/// One pass; returns how long to pause if the app is rate-limited.
pub(crate) async fn pass(st: &AppState, cfg: RefresherConfig) -> Option<Duration> {
    let now = st.tokens.now();
    match st.sessions.purge_expired(now).await {
        Ok(ended) => {
            for account in ended {
                let _ = st.tokens.logout(&account).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot purge ended sessions"),
    }
    let accounts = match st.sessions.session_accounts(now).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list sessions");
            return None;
        }
    };
    let listed = accounts.len();
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let pause = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let mut tasks = Vec::new();
    for account in accounts {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        if pause
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
        {
            break;
        }
        let (tokens, pause) = (st.tokens.clone(), pause.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match tokens.access_token_with(&account, cfg.ahead).await {
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::AuthorizationNeeded => {
                    tracing::info!(account, "session needs a new login");
                    true
                }
                Err(e) => {
                    tracing::warn!(account, error = %e, "background refresh failed");
                    if let Some(wait) = e.retry_after() {
                        *pause
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(wait);
                    }
                    false
                }
            }
        }));
    }
    let visited = tasks.len();
    let mut reauth = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            reauth += 1;
        }
    }
    st.metrics
        .counted(listed, (visited == listed).then_some(reauth));
    *pause
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
