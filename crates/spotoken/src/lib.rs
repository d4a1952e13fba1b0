//! # spotoken
//!
//! Spotify OAuth tokens kept valid, safe and usable. [`Tokens::access_token`]
//! always returns a fresh token: it refreshes ahead of expiry, exactly once per
//! account however many tasks, processes or server instances ask at the same
//! moment; it stores a rotated refresh token durably before handing out the
//! access token that came with it; it stops and asks for a new login on
//! `invalid_grant` instead of retrying; it backs off on 429 and 5xx, honouring
//! `Retry-After` within a cap. Tokens are encrypted at rest.
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn demo() -> Result<(), spotoken::Error> {
//! use spotoken::{Tokens, crypto, store};
//!
//! let home = std::path::Path::new("/home/me/.local/share/spotoken");
//! let tokens = Tokens::builder()
//!     .client_id("your-spotify-client-id")                       // a public PKCE client
//!     .store(store::Sqlite::open(home.join("tokens.db"))?)
//!     .keys(crypto::load_key_file(&home.join("master.key"))?)
//!     .build()?;
//!
//! // Once: log in (the `spotoken login` command does this with a browser).
//! let scopes = spotoken::Scopes::parse("user-read-private");
//! let options = spotoken::LoginOptions::default();
//! let pending = tokens.begin_login("http://127.0.0.1:8888/callback", &scopes, options)?;
//! println!("open {}", pending.url);
//! # let redirected_to = "";
//! tokens.complete_login("default", &pending, redirected_to).await?;
//!
//! // For ever after:
//! let token = tokens.access_token("default").await?;
//! let me = tokens.api("default").get("/v1/me").await?;   // 401 → refresh + retry once
//! # Ok(()) }
//! ```
//!
//! Errors are one [`Error`] whose [`kind`](Error::kind) says what to do:
//! authorization needed, temporary (with the wait), configuration, insufficient
//! scope (naming the scope), protocol, internal. Match the variants for more:
//! [`Error::RateLimited`] names the server that limited you and the wait;
//! [`Error::AuthorizationNeeded`] carries a typed [`ReauthReason`], also for
//! an account flagged earlier. Messages say what happened and what the app
//! must do, never which command to run: that is the app's to say.
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `default-tls` | yes | reqwest's own TLS: rustls with the aws-lc-rs provider compiled in, so every reqwest client in the program works, the app's own included. Without it spotoken uses ring only (no C build of aws-lc) and installs ring as rustls' process-wide provider when it builds its HTTP client; an app built so that makes its own reqwest client earlier calls [`install_crypto_provider`] first |
//! | `middleware` | yes | [`Tokens::middleware`], a `reqwest-middleware` layer for apps with their own client |
//! | `postgres` | no | `store::Postgres`, for several server instances sharing accounts (adds tokio-postgres and its dependencies) |
//! | `keyring` | no | the OS keyring (Secret Service, Keychain, Credential Manager) as a master-key source |
//! | `crash-points` | no | test builds only: stops at `SPOTOKEN_CRASH_AT` to be killed there; never in a build people use |
//! | `internals` | no | for spotoken's own CLI and server only (the server's session store, private-file helpers); outside semver |
//!
//! Your own reqwest client can carry spotoken's requests too:
//! [`TokensBuilder::http_client`].
//!
//! ## Platforms
//!
//! Unix only (Linux, macOS, the BSDs): the SQLite store locks accounts across
//! processes with `flock`, and key and store files are checked and created
//! with Unix permissions. Windows is not supported.
//!
//! ## How it works
//!
//! The repository's `docs/ARCHITECTURE.md` describes the layers, the
//! invariants (each with the test that guards it) and a refresh step by step.

// Functions a reader can hold (the threshold is in clippy.toml); tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod account;
pub mod api;
pub mod budget;
mod crash;
pub mod crypto;
mod device;
mod discovery;
pub mod engine;
#[cfg(feature = "internals")]
pub mod fs;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub, dead_code)] // `pub` for spotoken's CLI, with `internals`
mod fs;
mod http;
#[cfg(feature = "middleware")]
pub mod middleware;
pub mod store;

pub use account::{
    AccountStatus, LoginOptions, LoginOutcome, LoginState, LogoutOutcome, PendingLogin,
};
pub use api::{Api, ApiResponse};
pub use crypto::KeyRing;
pub use device::DeviceLogin;
pub use discovery::discover;
pub use engine::{ReauthEvent, RefreshOutcome, Tokens, TokensBuilder};
pub use http::install_crypto_provider;
pub use reqwest::Method;
pub use spotoken_core as core;
pub use spotoken_core::endpoint::Provider;
pub use spotoken_core::scope::Scopes;
pub use spotoken_core::secret::AccessToken;
pub use spotoken_core::{Error, ErrorKind, RateLimiter, ReauthReason};
pub use store::{Sqlite, TokenStore};
