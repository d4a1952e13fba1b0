//! `spotoken daemon`: keeps every account's access token fresh ahead of expiry.
//!
//! Each account is refreshed at a jittered point before its margin (so many
//! accounts, or many machines, do not refresh in the same second), backs off on
//! temporary failures, and when an account needs re-authorization the notify
//! command runs once per change of state. Stops cleanly on SIGTERM/SIGINT.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use spotoken::core::freshness::refresh_at;
use spotoken::store::{AccountState, unix_now};
use spotoken::{Error, ErrorKind, Tokens};

use crate::cli::DaemonArgs;
use crate::cli::defs::{ACCOUNT_ENV, LOGIN_COMMAND_ENV, REASON_ENV};
use crate::config::Resolved;

/// Wake at least this often, to notice accounts logged in since the last pass.
const RECHECK_SECS: i64 = 60;
/// After the store could not be read, try again this soon.
const STORE_RETRY_SECS: i64 = 30;
/// When a refreshed row cannot be re-read, assume it lasts an hour, the
/// lifetime of a Spotify access token.
const ASSUMED_LIFETIME_SECS: i64 = 3600;
/// A failing account waits this long after its first failure, doubled after
/// each further one ([`BACKOFF_DOUBLINGS`] times at most), never more than
/// [`BACKOFF_MAX_SECS`]: transient failures pass quickly, a long outage is
/// not hammered.
const BACKOFF_FIRST_SECS: i64 = 30;
/// How often the backoff doubles at most.
const BACKOFF_DOUBLINGS: u32 = 5;
/// The longest backoff: a quarter of an hour.
const BACKOFF_MAX_SECS: i64 = 900;

struct Schedule {
    next: HashMap<String, i64>,
    failures: HashMap<String, u32>,
    notified: HashSet<String>,
}

/// Runs the daemon until a signal (or after one pass with `--once`).
pub(crate) async fn exec(cfg: &Resolved, args: DaemonArgs) -> Result<u8, Error> {
    let tokens = cfg.tokens_for_logout()?;
    let notify = args.notify_cmd.clone().or_else(|| cfg.notify_cmd.clone());
    let mut s = Schedule {
        next: HashMap::new(),
        failures: HashMap::new(),
        notified: HashSet::new(),
    };
    tracing::info!(store = %tokens.store().describe(), "daemon started");
    let stop = crate::commands::emulate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let wake = pass(&tokens, &args, notify.as_deref(), &mut s).await;
        if args.once {
            break;
        }
        // Wake for the next due account, and at least once a minute to notice logins.
        let sleep = Duration::from_secs(
            wake.saturating_sub(unix_now())
                .clamp(1, RECHECK_SECS)
                .unsigned_abs(),
        );
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = &mut stop => {
                tracing::info!("daemon stopping");
                break;
            }
        }
    }
    Ok(0)
}

/// One pass; returns the unix time of the next due refresh.
async fn pass(tokens: &Tokens, args: &DaemonArgs, notify: Option<&str>, s: &mut Schedule) -> i64 {
    let now = unix_now();
    let mut wake = now + RECHECK_SECS;
    let rows = match tokens.store().list().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the store");
            return now + STORE_RETRY_SECS;
        }
    };
    for row in rows {
        let account = row.account.clone();
        if let AccountState::ReauthRequired(reason) = &row.state {
            notify_once(notify, &account, reason, s);
            continue;
        }
        s.notified.remove(&account);
        let due = *s.next.entry(account.clone()).or_insert_with(|| {
            refresh_at(
                row.access_expires_at,
                now,
                args.margin,
                args.jitter,
                rand::random(),
            )
        });
        if due > now {
            wake = wake.min(due);
            continue;
        }
        match tokens
            .access_token_with(&account, args.margin + args.jitter)
            .await
        {
            Ok(_) => {
                s.failures.remove(&account);
                let expires = tokens
                    .store()
                    .load(&account)
                    .await
                    .ok()
                    .flatten()
                    .map_or(now + ASSUMED_LIFETIME_SECS, |r| r.access_expires_at);
                let next = refresh_at(
                    expires,
                    unix_now(),
                    args.margin,
                    args.jitter,
                    rand::random(),
                );
                tracing::info!(
                    account,
                    next_refresh_in_s = next - unix_now(),
                    "token is fresh"
                );
                s.next.insert(account, next);
                wake = wake.min(next);
            }
            Err(e) if e.kind() == ErrorKind::AuthorizationNeeded => {
                tracing::warn!(account, error = %e, "re-authorization required");
                notify_once(notify, &account, &e.to_string(), s);
                s.next.remove(&account);
            }
            Err(e) => {
                let n = s.failures.entry(account.clone()).or_default();
                *n += 1;
                let backoff =
                    (BACKOFF_FIRST_SECS << (*n).min(BACKOFF_DOUBLINGS)).min(BACKOFF_MAX_SECS);
                let wait = e.retry_after().map_or(backoff, |d| {
                    i64::try_from(d.as_secs()).unwrap_or(backoff).max(backoff)
                });
                tracing::warn!(account, error = %e, retry_in_s = wait, "refresh failed; backing off");
                s.next.insert(account, unix_now() + wait);
                wake = wake.min(unix_now() + wait);
            }
        }
    }
    wake
}

fn notify_once(cmd: Option<&str>, account: &str, reason: &str, s: &mut Schedule) {
    if !s.notified.insert(account.to_owned()) {
        return;
    }
    let login = format!("spotoken login --account {account}");
    tracing::warn!(account, reason, "account needs a login: {login}");
    let Some(cmd) = cmd else { return };
    let spawned = crate::child::command("sh")
        .arg("-c")
        .arg(cmd)
        .arg("spotoken-notify")
        .arg(account)
        .arg(reason)
        .arg(&login)
        .env(ACCOUNT_ENV, account)
        .env(REASON_ENV, reason)
        .env(LOGIN_COMMAND_ENV, &login)
        .stdin(std::process::Stdio::null())
        .status();
    match spawned {
        Ok(st) if st.success() => tracing::info!(account, "notify command ran"),
        Ok(st) => tracing::warn!(account, status = %st, "notify command failed"),
        Err(e) => tracing::warn!(account, error = %e, "cannot run the notify command"),
    }
}
