//! `spotoken token` and `spotoken refresh`.
//!
//! `token` prints the access token alone on stdout, so
//! `curl -H "Authorization: Bearer $(spotoken token)"` works. Its common case, a
//! cached token with time to spare, is a fast path: read one row, decrypt,
//! print; no async runtime, no migrations, no network. Anything else (stale,
//! missing, flagged, unreadable) takes the full path through the engine.

use serde_json::json;
use spotoken::Error;
use spotoken::core::freshness::{Freshness, freshness};
use spotoken::crypto::Field;
use spotoken::store::{AccountState, Row, Sqlite, unix_now};

use crate::cli::{Global, Output, TokenArgs};
use crate::config::{self, Resolved};
use crate::output;

/// Answers from the store alone if the cached token is fresh; `None` means
/// "take the full path" (never an error: the full path reports errors properly).
pub(crate) fn fast_path(g: &Global, args: &TokenArgs) -> Option<u8> {
    let cfg = config::resolve(g).ok()?;
    let row = Sqlite::load_blocking(&cfg.store_path, &cfg.account).ok()??;
    if row.state != AccountState::Active
        || cfg.client_id.as_deref().is_some_and(|c| c != row.client_id)
    {
        return None;
    }
    let sealed = row.access_token.as_ref()?;
    if freshness(row.access_expires_at, unix_now(), args.min_valid) != Freshness::Fresh {
        return None;
    }
    if !cfg.key_path.exists() && cfg.master_key_env.is_none() {
        return None;
    }
    let keys = cfg.key_ring().ok()?;
    let plain = keys
        .open_row(&cfg.account, Field::AccessToken, row.version, sealed)
        .ok()?;
    let token = std::str::from_utf8(&plain).ok()?;
    print_token(&cfg, token, &row);
    Some(0)
}

fn print_token(cfg: &Resolved, token: &str, row: &Row) {
    match cfg.output {
        Output::Text => output::line(token),
        Output::Json => output::json(&json!({
            "account": cfg.account,
            "access_token": token,
            "token_type": "Bearer",
            "expires_at": row.access_expires_at,
            "expires_in": (row.access_expires_at - unix_now()).max(0),
            "scopes": row.scopes,
        })),
    }
}

/// The full path: refresh if needed (single-flight across processes), then print.
pub(crate) async fn exec(cfg: &Resolved, args: &TokenArgs) -> Result<u8, Error> {
    let tokens = cfg.tokens()?;
    let token = tokens
        .access_token_with(&cfg.account, args.min_valid)
        .await?;
    if matches!(cfg.output, Output::Text) {
        output::line(token.expose());
        return Ok(0);
    }
    // JSON adds the row's expiry and scopes. A `logout` that ran after the
    // token was obtained removes the row: that is "not logged in", as it
    // would have been a moment later.
    let row =
        tokens
            .store()
            .load(&cfg.account)
            .await?
            .ok_or_else(|| Error::AuthorizationNeeded {
                account: cfg.account.clone(),
                reason: spotoken::ReauthReason::NotLoggedIn,
            })?;
    print_token(cfg, token.expose(), &row);
    Ok(0)
}

/// `spotoken refresh`: refresh now, whatever the expiry.
pub(crate) async fn refresh(cfg: &Resolved) -> Result<u8, Error> {
    let tokens = cfg.tokens()?;
    tokens.force_refresh(&cfg.account).await?;
    let left = tokens.expires_in(&cfg.account).await?.unwrap_or_default();
    match cfg.output {
        Output::Text => eprintln!(
            "refreshed account '{}'; the new access token expires in {}",
            cfg.account,
            spotoken::core::wait::human_duration(left)
        ),
        Output::Json => output::json(
            &json!({"account": cfg.account, "refreshed": true, "expires_in": left.as_secs()}),
        ),
    }
    Ok(0)
}
