//! spotoken as rspotify's token source.
//!
//! rspotify 0.16 pins reqwest 0.12 and reqwest-middleware 0.4, so spotoken's
//! middleware (reqwest 0.13) cannot plug into it. This crate implements
//! rspotify's client traits over [`spotoken::Tokens`] instead: every endpoint
//! rspotify has, with spotoken keeping the tokens (encrypted store, one
//! refresh per account across tasks and processes, rotation kept).
//!
//! rspotify refreshes by expiry, not on a 401: it calls
//! [`BaseClient::refetch_token`] when the token it holds has expired. The
//! tokens handed to rspotify are therefore marked to expire after
//! [`HANDOFF`], well inside the margin spotoken keeps, so rspotify asks
//! spotoken again at least that often and picks up a token spotoken has
//! refreshed meanwhile. `refresh_token()` asks at once.
//!
//! ```no_run
//! # async fn demo(tokens: spotoken::Tokens) -> rspotify::ClientResult<()> {
//! use rspotify::prelude::*;
//!
//! let spotify = spotoken_rspotify::SpotokenSpotify::new(tokens, "default");
//! let me = spotify.current_user().await?;
//! println!("{}", me.id);
//! # Ok(()) }
//! ```
//!
//! A spotoken error reaches the app as `ClientError::Io` whose inner error
//! is the [`spotoken::Error`] (`io.get_ref()` then `downcast_ref`).

// Functions a reader can hold (the threshold is in clippy.toml); tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::sync::Arc;
use std::time::Duration;

use rspotify::clients::{BaseClient, OAuthClient};
use rspotify::http::HttpClient;
use rspotify::sync::Mutex;
use rspotify::{ClientError, ClientResult, Config, Credentials, OAuth, Token};
use spotoken::Tokens;

/// How long a token handed to rspotify is marked valid.
pub const HANDOFF: Duration = Duration::from_secs(60);

/// An rspotify client whose tokens come from spotoken, for one account.
///
/// `Default` exists because rspotify's traits require it; a default client
/// has no [`Tokens`] and answers every call with an error.
#[derive(Clone, Debug, Default)]
pub struct SpotokenSpotify {
    tokens: Option<Tokens>,
    account: String,
    config: Config,
    creds: Credentials,
    oauth: OAuth,
    http: HttpClient,
    token: Arc<Mutex<Option<Token>>>,
}

impl SpotokenSpotify {
    /// A client for `account`, calling the Web API that `tokens` is set up for.
    pub fn new(tokens: Tokens, account: &str) -> Self {
        let mut api_base_url = tokens.api_base().as_str().to_owned();
        if !api_base_url.ends_with('/') {
            api_base_url.push('/');
        }
        api_base_url.push_str("v1/");
        let config = Config {
            api_base_url,
            token_refreshing: true,
            token_cached: false,
            ..Config::default()
        };
        Self {
            creds: Credentials::new_pkce(tokens.client_id()),
            tokens: Some(tokens),
            account: account.to_owned(),
            config,
            oauth: OAuth::default(),
            http: HttpClient::default(),
            // Expired from the start: the first request fetches one.
            token: Arc::new(Mutex::new(Some(Token {
                expires_at: Some(chrono::DateTime::UNIX_EPOCH),
                ..Token::default()
            }))),
        }
    }
}

fn spotoken_error(e: spotoken::Error) -> ClientError {
    ClientError::Io(std::io::Error::other(e))
}

#[async_trait::async_trait]
impl BaseClient for SpotokenSpotify {
    fn get_config(&self) -> &Config {
        &self.config
    }

    fn get_http(&self) -> &HttpClient {
        &self.http
    }

    fn get_creds(&self) -> &Credentials {
        &self.creds
    }

    fn get_token(&self) -> Arc<Mutex<Option<Token>>> {
        Arc::clone(&self.token)
    }

    async fn refetch_token(&self) -> ClientResult<Option<Token>> {
        let tokens = self.tokens.as_ref().ok_or(ClientError::InvalidToken)?;
        let access = tokens
            .access_token(&self.account)
            .await
            .map_err(spotoken_error)?;
        let handoff = chrono::Duration::from_std(HANDOFF).unwrap_or_default();
        Ok(Some(Token {
            access_token: access.expose().to_owned(),
            expires_in: handoff,
            expires_at: Some(chrono::Utc::now() + handoff),
            // spotoken keeps the refresh token; rspotify never sees it.
            refresh_token: None,
            scopes: Default::default(),
        }))
    }
}

#[async_trait::async_trait]
impl OAuthClient for SpotokenSpotify {
    fn get_oauth(&self) -> &OAuth {
        &self.oauth
    }

    /// Logging in is spotoken's: `Tokens::begin_login` and `complete_login`.
    async fn request_token(&self, _code: &str) -> ClientResult<()> {
        Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "log in with spotoken (Tokens::begin_login and complete_login), not through rspotify",
        )))
    }
}
