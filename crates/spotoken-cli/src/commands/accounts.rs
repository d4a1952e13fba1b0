//! `spotoken accounts`, `logout` and `rekey`: managing what the store holds.

use serde_json::json;
use spotoken::Error;
use spotoken::store::TokenStore as _;

use crate::cli::{AccountsArgs, LogoutArgs, Output};
use crate::config::{self, Resolved};
use crate::output;

/// Lists accounts, or sets the default one.
pub(crate) async fn exec(cfg: &Resolved, args: &AccountsArgs) -> Result<u8, Error> {
    if let Some(name) = &args.set_default {
        spotoken::account::validate_account_name(name)?;
        let mut file = cfg.file.clone();
        file.default_account = Some(name.clone());
        config::write_config(&cfg.config_path, &file)?;
        match cfg.output {
            Output::Text => eprintln!("default account is now '{name}'"),
            Output::Json => output::json(&json!({"default_account": name})),
        }
        return Ok(0);
    }
    let store = spotoken::store::Sqlite::open(&cfg.store_path)?;
    let rows = store.list().await?;
    match cfg.output {
        Output::Json => output::json(&json!({
            "default_account": cfg.account,
            "accounts": rows.iter().map(|r| json!({
                "account": r.account,
                "user_id": r.user_id,
                "display_name": r.display_name,
                "state": r.state_columns().0,
                "default": r.account == cfg.account,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if rows.is_empty() {
                eprintln!("no accounts yet: spotoken login [--account NAME]");
            }
            for r in &rows {
                let mark = if r.account == cfg.account { "*" } else { " " };
                let who = r
                    .display_name
                    .as_deref()
                    .or(r.user_id.as_deref())
                    .unwrap_or("?");
                output::line(&format!(
                    "{mark} {}\t{who}\t{}",
                    r.account,
                    r.state_columns().0
                ));
            }
        }
    }
    Ok(0)
}

/// Deletes the account's tokens (revoking where possible) and says where a
/// Spotify user removes the app's access.
pub(crate) async fn logout(cfg: &Resolved, args: &LogoutArgs) -> Result<u8, Error> {
    let tokens = cfg.tokens_for_logout()?;
    let accounts: Vec<String> = if args.all {
        tokens
            .store()
            .list()
            .await?
            .into_iter()
            .map(|r| r.account)
            .collect()
    } else {
        vec![cfg.account.clone()]
    };
    let mut outcomes = Vec::new();
    for a in &accounts {
        outcomes.push(tokens.logout(a).await?);
    }
    match cfg.output {
        Output::Json => output::json(&json!({"logged_out": outcomes})),
        Output::Text => {
            for o in &outcomes {
                let what = if o.deleted {
                    "deleted its tokens"
                } else {
                    "had no tokens"
                };
                eprintln!("account '{}': {what}", o.account);
                match o.revoked {
                    Some(true) => eprintln!("  the provider revoked the refresh token"),
                    Some(false) => eprintln!("  the provider did not confirm revocation"),
                    None => {}
                }
            }
            if let Some(page) = outcomes.iter().find_map(|o| o.remove_access_at.clone()) {
                eprintln!(
                    "Spotify has no revocation endpoint: to remove this app's access to your account,"
                );
                eprintln!("visit {page}");
            }
        }
    }
    Ok(0)
}

/// Re-encrypts the store under a new key; the old key stays in the key file for reading.
pub(crate) async fn rekey(cfg: &Resolved) -> Result<u8, Error> {
    if cfg.master_key_env.is_some() {
        return Err(Error::Configuration(format!(
            "the key comes from {}: put the new key first in that variable (old ones after a comma), then run rekey",
            spotoken::crypto::MASTER_KEY_ENV
        )));
    }
    let old_text = std::fs::read_to_string(&cfg.key_path).unwrap_or_default();
    let old = if old_text.is_empty() {
        Vec::new()
    } else {
        spotoken::crypto::parse_keys(&old_text, "the key file")?
    };
    let new = spotoken::crypto::random_key();
    let mut all = vec![&new];
    all.extend(old.iter());
    spotoken::crypto::write_key_file(&cfg.key_path, &all)?;
    let tokens = cfg.tokens_for_logout()?;
    let n = tokens.rekey().await?;
    match cfg.output {
        Output::Text => eprintln!(
            "re-encrypted {n} account(s) under the new key {}; older keys stay in {} for reading",
            spotoken::crypto::KeyRing::new(vec![new.clone()])?.active_id(),
            cfg.key_path.display()
        ),
        Output::Json => output::json(&json!({"reencrypted": n})),
    }
    Ok(0)
}
