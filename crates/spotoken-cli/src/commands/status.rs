//! `spotoken status`: every account's user, scopes, expiries and state, for a
//! person (text) or for monitoring (JSON, exit 3 when any account needs a login).

use spotoken::Error;
use spotoken::core::wait::human_duration;
use spotoken::store::unix_now;

use crate::cli::Output;
use crate::config::Resolved;
use crate::output;

/// Runs `status`.
pub(crate) async fn exec(cfg: &Resolved) -> Result<u8, Error> {
    let store = spotoken::store::Sqlite::open(&cfg.store_path)?;
    let rows = spotoken::store::TokenStore::list(&store).await?;
    let now = unix_now();
    let statuses: Vec<spotoken::AccountStatus> = rows
        .iter()
        .map(|r| spotoken::AccountStatus::from_row(r, now))
        .collect();
    let any_reauth = statuses.iter().any(spotoken::AccountStatus::needs_reauth);
    match cfg.output {
        Output::Json => output::json(&serde_json::json!({
            "store": cfg.store_path,
            "default_account": cfg.account,
            "accounts": statuses,
        })),
        Output::Text if statuses.is_empty() => {
            output::line(&format!(
                "No accounts in {}. Log in with: spotoken login",
                cfg.store_path.display()
            ));
        }
        Output::Text => {
            for s in &statuses {
                print_text(s, now, s.account == cfg.account);
            }
        }
    }
    if statuses.is_empty() {
        return Ok(3);
    }
    Ok(if any_reauth { 3 } else { 0 })
}

fn print_text(s: &spotoken::AccountStatus, now: i64, is_default: bool) {
    let who = match (&s.display_name, &s.user_id) {
        (Some(n), Some(id)) => format!("{n} ({id})"),
        (None, Some(id)) => id.clone(),
        _ => "unknown user".into(),
    };
    output::line(&format!(
        "{}{}: {who}",
        s.account,
        if is_default { " (default)" } else { "" }
    ));
    let state = match &s.reauth_reason {
        None => "active".to_owned(),
        Some(r) => format!(
            "reauth required: {r} — run `spotoken login --account {}`",
            s.account
        ),
    };
    output::line(&format!("  state:          {state}"));
    output::line(&format!(
        "  provider:       {}",
        s.issuer.as_deref().map_or("the configured endpoints", |i| {
            if spotoken::core::discovery::same_issuer(
                i,
                spotoken::core::endpoint::SPOTIFY_ACCOUNTS_URL,
            ) {
                "spotify"
            } else {
                i
            }
        })
    ));
    output::line(&format!(
        "  scopes:         {}",
        if s.scopes.is_empty() {
            "(none)".into()
        } else {
            s.scopes.to_wire()
        }
    ));
    if s.access_expires_at > 0 {
        let when = if s.access_expires_at > now {
            "expires"
        } else {
            "expired"
        };
        output::line(&format!(
            "  access token:   {when} {}",
            output::relative(s.access_expires_at, now)
        ));
    } else {
        output::line("  access token:   none");
    }
    match s.last_refresh {
        Some(t) => output::line(&format!("  last refresh:   {}", output::relative(t, now))),
        None => output::line("  last refresh:   never"),
    }
    let left = s.refresh_token_seconds_left;
    let lifetime = if left <= 0 {
        "past its six-month lifetime: log in again".to_owned()
    } else {
        let d = human_duration(std::time::Duration::from_secs(left.unsigned_abs()));
        if s.refresh_token_ending_soon {
            format!("WARNING: ends in {d}; log in again before then")
        } else {
            format!(
                "authorized {}, ends in about {d}",
                output::relative(s.authorized_at, now)
            )
        }
    };
    output::line(&format!("  refresh token:  {lifetime}"));
}
