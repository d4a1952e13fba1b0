//! An account's life outside refreshing: PKCE login, status, logout.
//!
//! Login is split in two so any front end can drive the browser part:
//! [`Tokens::begin_login`] gives the authorize URL (fresh verifier and `state`
//! each time), [`Tokens::complete_login`] takes whatever the browser came back
//! with, checks `state`, exchanges the code, asks `/v1/me` who logged in, and
//! stores the sealed tokens with the scopes actually granted.

use std::time::Duration;

use serde::Serialize;
use spotoken_core::ReauthReason;
use spotoken_core::callback::parse_callback;
use spotoken_core::endpoint::{SPOTIFY_APPS_PAGE, check_redirect_uri};
use spotoken_core::freshness::{self, Lifetime, REFRESH_TOKEN_LIFETIME};
use spotoken_core::pkce;
use spotoken_core::protocol::{self, AuthorizeParams};
use spotoken_core::scope::Scopes;
use spotoken_core::secret::CodeVerifier;
use url::Url;

use crate::crypto::Field;
use crate::store::{AccountState, Row};
use crate::{Error, Tokens, http};

/// A login in progress: where to send the browser, and what to check when it comes back.
pub struct PendingLogin {
    /// The authorize URL to open.
    pub url: Url,
    /// The redirect URI it names.
    pub redirect_uri: String,
    /// The scopes asked for.
    pub requested: Scopes,
    state: String,
    verifier: CodeVerifier,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("redirect_uri", &self.redirect_uri)
            .field("requested", &self.requested.to_wire())
            .finish_non_exhaustive()
    }
}

impl PendingLogin {
    /// The `state` this login expects back (for servers that key pending logins by it).
    pub fn state(&self) -> &str {
        &self.state
    }
}

/// What a completed login found.
#[derive(Debug, Clone, Serialize)]
pub struct LoginOutcome {
    /// The account the tokens were stored under.
    pub account: String,
    /// Spotify user id (None if `/v1/me` could not be read).
    pub user_id: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Scopes granted.
    pub granted: Scopes,
    /// Requested scopes that were not granted.
    pub not_granted: Vec<String>,
    /// Things the user should know.
    pub warnings: Vec<String>,
}

/// Options for [`Tokens::begin_login`]; `LoginOptions::default()` for none.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoginOptions {
    /// Show the consent screen even to a user who approved before (Spotify's
    /// `show_dialog`), for example to switch Spotify users.
    pub show_dialog: bool,
}

impl LoginOptions {
    /// Sets [`show_dialog`](Self::show_dialog).
    pub fn show_dialog(mut self, show: bool) -> Self {
        self.show_dialog = show;
        self
    }
}

/// Whether an account's tokens can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoginState {
    /// Logged in; refreshes as needed.
    Active,
    /// Flagged: a new login is needed (see [`AccountStatus::reauth_reason`]).
    ReauthRequired,
}

/// One account's state, without any secret.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    /// Account name.
    pub account: String,
    /// Client id the tokens belong to.
    pub client_id: String,
    /// The issuer the tokens came from (`None`: the configured endpoints).
    pub issuer: Option<String>,
    /// Spotify user id.
    pub user_id: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Granted scopes.
    pub scopes: Scopes,
    /// When the user authorized (unix seconds).
    pub authorized_at: i64,
    /// When the access token expires (unix seconds; 0 if none).
    pub access_expires_at: i64,
    /// Last refresh (unix seconds).
    pub last_refresh: Option<i64>,
    /// Active or flagged (serialized as `active` / `reauth_required`).
    pub state: LoginState,
    /// Why re-authorization is required.
    pub reauth_reason: Option<String>,
    /// Seconds left before the refresh token's six-month lifetime ends (negative: past).
    pub refresh_token_seconds_left: i64,
    /// True in the last fourteen days of that lifetime.
    pub refresh_token_ending_soon: bool,
}

impl AccountStatus {
    #[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
    /// The status of a stored row at `now`.
    pub fn from_row(r: &Row, now: i64) -> Self {
        let (_, reason) = r.state_columns();
        let end = r.authorized_at + REFRESH_TOKEN_LIFETIME.as_secs() as i64;
        Self {
            account: r.account.clone(),
            client_id: r.client_id.clone(),
            issuer: r.issuer.clone(),
            user_id: r.user_id.clone(),
            display_name: r.display_name.clone(),
            scopes: r.scopes.clone(),
            authorized_at: r.authorized_at,
            access_expires_at: if r.access_token.is_some() {
                r.access_expires_at
            } else {
                0
            },
            last_refresh: r.last_refresh,
            state: match r.state {
                AccountState::Active => LoginState::Active,
                AccountState::ReauthRequired(_) => LoginState::ReauthRequired,
            },
            reauth_reason: reason.map(str::to_owned),
            refresh_token_seconds_left: end - now,
            refresh_token_ending_soon: matches!(
                freshness::refresh_token_lifetime(r.authorized_at, now, REFRESH_TOKEN_LIFETIME),
                Lifetime::EndingSoon(_) | Lifetime::Expired
            ),
        }
    }

    /// Whether the user must log in again.
    pub fn needs_reauth(&self) -> bool {
        self.state != LoginState::Active || self.refresh_token_seconds_left <= 0
    }
}

/// What logout did.
#[derive(Debug, Clone, Serialize)]
pub struct LogoutOutcome {
    /// The account.
    pub account: String,
    /// Whether we had tokens to delete.
    pub deleted: bool,
    /// Whether the provider's revocation endpoint accepted the token (None: no endpoint).
    pub revoked: Option<bool>,
    /// Where the user removes the app's access at the provider, when we cannot revoke.
    pub remove_access_at: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PendingParts {
    url: String,
    redirect_uri: String,
    requested: Scopes,
    state: String,
    verifier: String,
}

impl Tokens {
    #[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
    /// Seals a pending login for storage between the redirect and the callback
    /// (a server keeps it in its database so any instance can finish it). The
    /// ciphertext is bound to the login's `state`.
    pub fn seal_pending(&self, p: &PendingLogin) -> Result<Vec<u8>, Error> {
        let parts = PendingParts {
            url: p.url.to_string(),
            redirect_uri: p.redirect_uri.clone(),
            requested: p.requested.clone(),
            state: p.state.clone(),
            verifier: p.verifier.expose().to_owned(),
        };
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(&parts)
                .map_err(|e| Error::Internal(format!("cannot serialize a pending login: {e}")))?,
        );
        self.inner.keys.seal(&p.state, Field::PendingLogin, &json)
    }

    #[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
    /// Opens a pending login sealed by [`seal_pending`](Self::seal_pending) for `state`.
    pub fn open_pending(&self, state: &str, sealed: &[u8]) -> Result<PendingLogin, Error> {
        let json = self.inner.keys.open(state, Field::PendingLogin, sealed)?;
        let parts: PendingParts = serde_json::from_slice(&json)
            .map_err(|e| Error::Internal(format!("a stored pending login is unreadable: {e}")))?;
        Ok(PendingLogin {
            url: Url::parse(&parts.url).map_err(|e| Error::Internal(e.to_string()))?,
            redirect_uri: parts.redirect_uri,
            requested: parts.requested,
            state: parts.state,
            verifier: CodeVerifier::new(parts.verifier),
        })
    }

    /// Starts a PKCE login: a fresh verifier and `state`, and the URL to open.
    pub fn begin_login(
        &self,
        redirect_uri: &str,
        scopes: &Scopes,
        options: LoginOptions,
    ) -> Result<PendingLogin, Error> {
        let show_dialog = options.show_dialog;
        check_redirect_uri(redirect_uri)?;
        let provider = self.known_provider()?;
        let unknown = scopes.unknown();
        // Spotify's scope table means nothing to another provider.
        if provider.is_spotify_like() && !unknown.is_empty() {
            return Err(Error::Configuration(format!(
                "unknown scope{} {}: see https://developer.spotify.com/documentation/web-api/concepts/scopes",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            )));
        }
        let mut rng = |buf: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), buf);
        let verifier = pkce::new_verifier(&mut rng);
        let state = pkce::new_state(&mut rng);
        let challenge = pkce::s256_challenge(verifier.expose());
        let url = protocol::authorize_url(
            &provider.authorize_url,
            &AuthorizeParams {
                client_id: &self.inner.client.client_id,
                redirect_uri,
                scopes,
                state: &state,
                code_challenge: &challenge,
                show_dialog,
            },
        );
        Ok(PendingLogin {
            url,
            redirect_uri: redirect_uri.to_owned(),
            requested: scopes.clone(),
            state,
            verifier,
        })
    }

    /// Finishes a login from the callback (a URL, a path with a query, or a query).
    /// Nothing is stored unless `state` matches and the code exchange succeeds.
    pub async fn complete_login(
        &self,
        account: &str,
        pending: &PendingLogin,
        callback: &str,
    ) -> Result<LoginOutcome, Error> {
        validate_account_name(account)?;
        let code = parse_callback(callback, &pending.state, account)?;
        let provider = self.discover_provider().await?;
        let req = protocol::code_exchange_request(
            &provider.token_url,
            &self.inner.client,
            &code,
            &pending.redirect_uri,
            &pending.verifier,
        );
        self.token_endpoint_open()?;
        self.spend_token_budget().await?;
        let answer = http::send_form(&self.inner.http, &req).await?;
        let parsed = protocol::parse_token_answer(answer.as_core(), account);
        if let Err(e) = &parsed {
            self.note_token_endpoint_answer(e).await;
        }
        let set = parsed.map_err(|e| match e {
            // The refresh token's wording does not fit a code.
            Error::AuthorizationNeeded {
                account,
                reason: ReauthReason::InvalidGrant { description },
            } => Error::AuthorizationNeeded {
                account,
                reason: ReauthReason::CodeRejected { description },
            },
            e => e,
        })?;
        self.store_login(account, &provider, set, &pending.requested, answer.status)
            .await
    }

    /// Stores what a login (browser or device) obtained, with the issuer it
    /// came from, after asking Spotify's `/v1/me` who it is (Spotify only).
    pub(crate) async fn store_login(
        &self,
        account: &str,
        provider: &spotoken_core::endpoint::Provider,
        set: protocol::TokenSet,
        requested: &Scopes,
        status: u16,
    ) -> Result<LoginOutcome, Error> {
        let refresh = set.refresh_token.as_ref().ok_or_else(|| {
            Error::protocol(
                Some(status),
                "the provider returned no refresh token (an OpenID Connect provider may need the offline_access scope)",
                b"",
            )
        })?;
        let granted = set.scope.clone().unwrap_or_else(|| requested.clone());
        let not_granted = requested.missing_from(&granted);
        let mut warnings = Vec::new();
        if !not_granted.is_empty() {
            warnings.push(format!(
                "these requested scopes were not granted: {}",
                not_granted.join(", ")
            ));
        }
        let (user_id, display_name) = if provider.is_spotify_like() {
            match self.whoami(&set.access_token).await {
                Ok(me) => me,
                Err(e) => {
                    warnings.push(format!("logged in, but /v1/me failed: {e}"));
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let now = self.now();
        let row = Row {
            account: account.to_owned(),
            client_id: self.inner.client.client_id.clone(),
            user_id: user_id.clone(),
            display_name: display_name.clone(),
            scopes: granted.clone(),
            authorized_at: now,
            access_token: None,
            access_expires_at: now + set.expires_in.as_secs() as i64,
            refresh_token: Vec::new(),
            last_refresh: None,
            state: AccountState::Active,
            version: 0,
            updated_at: now,
            issuer: provider.issuer.clone(),
        };
        self.write_login(
            row,
            set.access_token.expose().as_bytes(),
            refresh.expose().as_bytes(),
        )
        .await?;
        self.evict(account);
        Ok(LoginOutcome {
            account: account.to_owned(),
            user_id,
            display_name,
            granted,
            not_granted,
            warnings,
        })
    }

    async fn whoami(
        &self,
        token: &spotoken_core::secret::AccessToken,
    ) -> Result<(Option<String>, Option<String>), Error> {
        let url = spotoken_core::endpoint::api_url(self.api_base(), "/v1/me")?;
        let answer = http::send(self.inner.http.get(url).bearer_auth(token.expose())).await?;
        if answer.status != 200 {
            return Err(crate::api::classify(
                &answer,
                "GET",
                "/v1/me",
                &Scopes::default(),
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|_| Error::protocol(Some(200), "/v1/me did not answer JSON", &answer.body))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        Ok((s("id"), s("display_name")))
    }

    /// Every account's status, ordered by name.
    pub async fn accounts(&self) -> Result<Vec<AccountStatus>, Error> {
        let now = self.now();
        Ok(self
            .inner
            .store
            .list()
            .await?
            .iter()
            .map(|r| AccountStatus::from_row(r, now))
            .collect())
    }

    /// One account's status.
    pub async fn status(&self, account: &str) -> Result<Option<AccountStatus>, Error> {
        Ok(self
            .inner
            .store
            .load(account)
            .await?
            .map(|r| AccountStatus::from_row(&r, self.now())))
    }

    /// Writes a fresh login's row, its secrets sealed for the row version the
    /// write gives it (a replaced row's version plus one, else 1); retried if
    /// another writer got in between.
    async fn write_login(&self, mut row: Row, access: &[u8], refresh: &[u8]) -> Result<(), Error> {
        let (keys, store) = (&self.inner.keys, &self.inner.store);
        let account = row.account.clone();
        for _ in 0..5 {
            let existing = store.load(&account).await?;
            // A new row gets a version no row the account had before got:
            // a refresh still holding a logged-out row's version must not
            // match it.
            let version = existing
                .as_ref()
                .map_or_else(crate::store::fresh_version, |r| r.version + 1);
            row.access_token =
                Some(keys.seal_row(&account, Field::AccessToken, version, access)?);
            row.refresh_token = keys.seal_row(&account, Field::RefreshToken, version, refresh)?;
            // Written only over the row just read, or only where there is
            // none (a negative version): a write that replaced anything else would
            // store secrets sealed for another version.
            row.version = existing.as_ref().map_or(-version, |r| r.version);
            let written = store.update(row.clone()).await?.map(|w| w.version);
            if written == Some(version) {
                return Ok(());
            }
        }
        Err(Error::temporary(
            "the account kept changing while logging in; try again",
            None,
        ))
    }

    /// Revokes where the provider can (RFC 7009), then deletes our copy,
    /// whatever the revocation's outcome.
    pub async fn logout(&self, account: &str) -> Result<LogoutOutcome, Error> {
        let row = self.inner.store.load(account).await?;
        let mut revoked = None;
        if let Some(row) = &row {
            revoked = self.revoke(row).await;
        }
        let deleted = self.inner.store.delete(account).await?;
        self.evict(account);
        // Spotify has no revocation endpoint: its users remove access on a page.
        let spotify = row.as_ref().is_none_or(|r| {
            r.issuer.as_deref().is_none_or(|i| {
                spotoken_core::discovery::same_issuer(
                    i,
                    spotoken_core::endpoint::SPOTIFY_ACCOUNTS_URL,
                )
            })
        });
        Ok(LogoutOutcome {
            account: account.to_owned(),
            deleted,
            revoked,
            remove_access_at: (revoked != Some(true) && spotify)
                .then(|| SPOTIFY_APPS_PAGE.to_owned()),
        })
    }

    /// Revokes the row's refresh token (`token_type_hint=refresh_token`) at
    /// its provider's revocation endpoint: `None` when there is none. 200 is
    /// success whatever the token's state (RFC 7009 §2.2); 503 is retried
    /// after its `Retry-After` within the backoff budget.
    async fn revoke(&self, row: &Row) -> Option<bool> {
        let account = row.account.as_str();
        let provider = match self.provider_for(row.issuer.as_deref()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account, error = %e, "cannot find the revocation endpoint");
                return Some(false);
            }
        };
        let url = provider.revocation_url?;
        let plain = match self.inner.keys.open_row(
            account,
            Field::RefreshToken,
            row.version,
            &row.refresh_token,
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account, error = %e, "cannot decrypt the refresh token to revoke it");
                return Some(false);
            }
        };
        let rt =
            spotoken_core::secret::RefreshToken::new(String::from_utf8_lossy(&plain).into_owned());
        let client = self.client_for(&row.client_id);
        let req = protocol::revocation_request(&url, &client, &rt);
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            let err = match http::send_form(&self.inner.http, &req).await {
                Ok(a) if a.status == 200 => return Some(true),
                Ok(a) if a.status == 503 => Error::temporary(
                    "the revocation endpoint is unavailable (HTTP 503)",
                    a.retry_after,
                ),
                Ok(a) => {
                    tracing::warn!(account, status = a.status, "revocation refused");
                    return Some(false);
                }
                Err(e) => e,
            };
            match self
                .inner
                .backoff
                .decide(err, attempt, started.elapsed(), rand::random())
            {
                spotoken_core::backoff::Retry::After(d) => {
                    tracing::warn!(
                        account,
                        attempt,
                        wait_ms = d.as_millis() as u64,
                        "revocation failed; retrying"
                    );
                    tokio::time::sleep(d).await;
                    attempt += 1;
                }
                spotoken_core::backoff::Retry::GiveUp(e) => {
                    tracing::warn!(account, error = %e, "revocation failed");
                    self.forget_provider(row.issuer.as_deref());
                    return Some(false);
                }
            }
        }
    }

    /// How long until `account`'s access token expires, if there is one.
    pub async fn expires_in(&self, account: &str) -> Result<Option<Duration>, Error> {
        Ok(self.inner.store.load(account).await?.and_then(|r| {
            r.access_token.map(|_| {
                Duration::from_secs(r.access_expires_at.saturating_sub(self.now()).max(0) as u64)
            })
        }))
    }
}

#[doc(hidden)] // for spotoken's own CLI and server; not a promise to users
/// Account names go into file names, URLs and log lines: keep them plain.
pub fn validate_account_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Configuration(format!(
            "account name '{name}' must be 1-64 characters of letters, digits, '-', '_', '.', '@'"
        )))
    }
}
