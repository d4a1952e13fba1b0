//! `spotoken check-scope METHOD PATH` (hidden): whether the account's granted
//! scopes cover an endpoint, from the store and spotoken's endpoint table, with
//! no network. Spotify's 403 says only "Insufficient client scope"; the
//! language bindings call this after one to raise an error that names the
//! scopes to add, as `spotoken api` does.

use spotoken::core::scope;
use spotoken::{Error, ReauthReason};

use crate::config::Resolved;

/// Runs `check-scope`: `Ok(0)` when nothing is missing (or the endpoint is not
/// in the table), else the insufficient-scope error (exit code 5).
pub(crate) async fn exec(cfg: &Resolved, method: &str, path: &str) -> Result<u8, Error> {
    let tokens = cfg.tokens()?;
    let Some(row) = tokens.store().load(&cfg.account).await? else {
        return Err(Error::AuthorizationNeeded {
            account: cfg.account.clone(),
            reason: ReauthReason::NotLoggedIn,
        });
    };
    let method = method.to_ascii_uppercase();
    let missing = scope::missing_for(&method, path, &row.scopes);
    if missing.is_empty() {
        return Ok(0);
    }
    Err(Error::InsufficientScope {
        endpoint: format!("{method} {}", path.split('?').next().unwrap_or(path)),
        missing,
    })
}
