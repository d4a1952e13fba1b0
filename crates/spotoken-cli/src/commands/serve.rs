//! `spotoken serve`: the backend-for-frontend (see the spotoken-server crate).
//! One process on SQLite by default; several instances share users through
//! `--database-url postgres://…`.

use std::sync::Arc;
use std::time::Duration;

use spotoken::Error;
use spotoken::core::scope::Scopes;
use spotoken::store::{SessionStore, TokenStore};
use spotoken_server::{AppState, Metrics, ServerConfig, refresher::RefresherConfig};

use crate::config::{Resolved, parse_duration_arg};

/// Options of `spotoken serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SPOTOKEN_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// The origin browsers use [default: http://{the bound address}]
    #[arg(long, env = "SPOTOKEN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Redirect URI registered with the app [default: {public-url}/auth/callback]
    #[arg(long, env = "SPOTOKEN_REDIRECT_URI")]
    pub redirect_uri: Option<String>,
    /// Scopes requested at login [default: config, else user-read-private]
    #[arg(long)]
    pub scopes: Option<String>,
    /// `postgres://…` to share sessions and tokens between instances, or a SQLite
    /// file path [default: tokens.db in the home]
    #[arg(long, env = "SPOTOKEN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// API path prefixes the proxy forwards (repeatable) [default: v1/]
    #[arg(long = "allow-prefix")]
    pub allow_prefixes: Vec<String>,
    /// How long a browser session lasts.
    #[arg(long, default_value = "30d", value_parser = parse_duration_arg)]
    pub session_ttl: Duration,
    /// Serve a demo page at / (login button, profile, what is playing, logout).
    #[arg(long)]
    pub demo: bool,
    /// Threads serving requests, each with its own event loop [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub threads: Option<usize>,
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn exec(cfg: &Resolved, args: ServeArgs) -> Result<u8, Error> {
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .map_err(|e| Error::Configuration(format!("cannot listen on {}: {e}", args.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut sc = ServerConfig::new(&public_url)?;
    if let Some(r) = args
        .redirect_uri
        .clone()
        .or_else(|| cfg.redirect_uri.clone())
    {
        spotoken::core::endpoint::check_redirect_uri(&r)?;
        sc.redirect_uri = r;
    }
    sc.scopes = match &args.scopes {
        Some(s) => Scopes::parse(s),
        None => cfg
            .scopes
            .clone()
            .unwrap_or_else(|| Scopes::parse("user-read-private")),
    };
    if !args.allow_prefixes.is_empty() {
        sc.allowed_prefixes = args
            .allow_prefixes
            .iter()
            .map(|p| p.trim_start_matches('/').to_owned())
            .collect();
    }
    sc.session_ttl = args.session_ttl;
    sc.demo = args.demo;

    let (tokens_store, sessions): (Arc<dyn TokenStore>, Arc<dyn SessionStore>) =
        match args.database_url.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pg = Arc::new(spotoken::store::Postgres::connect(url).await?);
                (pg.clone(), pg)
            }
            Some(path) => {
                let s = Arc::new(spotoken::store::Sqlite::open(
                    path.trim_start_matches("sqlite://"),
                )?);
                (s.clone(), s)
            }
            None => {
                let s = Arc::new(spotoken::store::Sqlite::open(&cfg.store_path)?);
                (s.clone(), s)
            }
        };
    let client_id = cfg.client_id.clone().ok_or_else(|| {
        Error::Configuration("no client id: pass --client-id or set SPOTOKEN_CLIENT_ID".into())
    })?;
    let metrics = Arc::new(Metrics::default());
    let m = metrics.clone();
    let mut b = spotoken::Tokens::builder()
        .client_id(client_id)
        .provider(spotoken::core::endpoint::Provider::spotify_like(
            &cfg.accounts_url,
            &cfg.api_url,
        )?)
        .shared_store(tokens_store)
        .keys(cfg.key_ring()?)
        .on_refresh(move |_, outcome| m.refresh(outcome.as_str()));
    if let Some(s) = &cfg.client_secret {
        b = b.client_secret(s.clone());
    }
    let tokens = b.build()?;
    let describe = tokens.store().describe();
    let state = AppState::new(tokens, sessions, sc, metrics)?;
    eprintln!(
        "spotoken serve listening on http://{addr} (public URL {public_url}; store: {describe})"
    );
    if args.demo {
        eprintln!("demo page: {public_url}/");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    spotoken_server::serve_on_threads(
        listener,
        state,
        RefresherConfig::default(),
        crate::commands::emulate::shutdown_signal(),
        threads,
    )
    .await
    .map_err(|e| Error::Internal(format!("server failed: {e}")))?;
    eprintln!("spotoken serve stopped");
    Ok(0)
}
