//! `spotoken serve`: the backend-for-frontend (see the spotoken-server crate).
//! One process on SQLite by default; several instances share users through
//! `--database-url postgres://…`.

use std::sync::Arc;
use std::time::Duration;

use spotoken::Error;
use spotoken::budget::{MemoryLedger, Rate, SharedLedger};
use spotoken::core::scope::Scopes;
use spotoken::store::{SessionStore, TokenStore};
use spotoken_server::{AppState, Budgets, Metrics, RefresherConfig, SameSite, ServerConfig};

use crate::cli::defs::{CLIENT_ID, CLIENT_ID_ENV, DEFAULT_BIND, DEFAULT_SCOPES};
use crate::cli::{Output, ServeArgs, parse_duration_arg};
use crate::config::Resolved;
use crate::output;

/// What the server runs with: flags and environment, then `[serve]` in
/// `config.toml`, then the top-level `scopes` (shared with the CLI login),
/// then defaults. `None` where the server has its own default
/// ([`ServerConfig::new`]), so each default is written once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Address to listen on.
    pub(crate) bind: String,
    /// The origin browsers use; `None`: `http://{the bound address}`.
    pub(crate) public_url: Option<String>,
    /// Redirect URI; `None`: `{public-url}/auth/callback`.
    pub(crate) redirect_uri: Option<String>,
    /// Scopes requested at login.
    pub(crate) scopes: Scopes,
    /// `postgres://…` or a SQLite path; `None`: the home's store.
    pub(crate) database_url: Option<String>,
    /// API path prefixes the proxy forwards, without a leading slash.
    pub(crate) allow_prefixes: Option<Vec<String>>,
    /// How long a browser session lasts.
    pub(crate) session_ttl: Option<Duration>,
    /// Threads serving requests; `None`: one per core.
    pub(crate) threads: Option<usize>,
    /// Serve the demo page.
    pub(crate) demo: bool,
    /// A separate address for `/metrics`; `None`: the main one.
    pub(crate) metrics_bind: Option<String>,
    /// The app's built files.
    pub(crate) static_dir: Option<std::path::PathBuf>,
    /// The app's own server.
    pub(crate) app_upstream: Option<String>,
    /// The idle timeout of sessions; `None`: only the TTL.
    pub(crate) session_idle: Option<Duration>,
    /// The session cookie's SameSite.
    pub(crate) same_site: Option<SameSite>,
    /// Proxies whose X-Forwarded-For is believed.
    pub(crate) trusted_proxies: Vec<std::net::IpAddr>,
    /// The background refresher's active window; `None`: its default.
    pub(crate) refresh_window: Option<Duration>,
    /// Extra roots for the Web API upstream (flag or environment only).
    pub(crate) upstream_ca: Option<std::path::PathBuf>,
    /// HTTP/2 to the Web API (flag or environment only).
    pub(crate) upstream_http2: bool,
    /// The fleet's budget at the token endpoint.
    pub(crate) token_budget: Option<Rate>,
    /// The fleet's budget at the Web API, through the proxy.
    pub(crate) api_budget: Option<Rate>,
}

impl Settings {
    /// Resolves `args` against the config (pure: no I/O).
    pub(crate) fn resolve(args: &ServeArgs, cfg: &Resolved) -> Result<Self, Error> {
        let file = cfg.file.serve.clone().unwrap_or_default();
        let in_file = |key: &str, e: String| {
            Error::Configuration(format!(
                "[serve] {key} in {}: {e}",
                cfg.config_path.display()
            ))
        };
        let duration = |flag: Option<Duration>, key: &str, text: &Option<String>| match (flag, text)
        {
            (Some(d), _) => Ok(Some(d)),
            (None, Some(s)) => parse_duration_arg(s).map(Some).map_err(|e| in_file(key, e)),
            (None, None) => Ok(None),
        };
        let session_ttl = duration(args.session_ttl, "session_ttl", &file.session_ttl)?;
        let session_idle = duration(args.session_idle, "session_idle", &file.session_idle)?;
        let same_site = match (args.same_site, &file.same_site) {
            (Some(s), _) => Some(s),
            (None, Some(s)) => Some(s.parse().map_err(|e| in_file("same_site", e))?),
            (None, None) => None,
        };
        let trusted_proxies = if args.trusted_proxies.is_empty() {
            parse_proxies(file.trusted_proxies.as_deref().unwrap_or_default())
                .map_err(|e| in_file("trusted_proxies", e))?
        } else {
            args.trusted_proxies.clone()
        };
        let refresh_window = duration(args.refresh_window, "refresh_window", &file.refresh_window)?;
        check_refresh_window(refresh_window)?;
        let rate = |flag: Option<Rate>, key: &str, v: &Option<String>| match (flag, v) {
            (Some(r), _) => Ok(Some(r)),
            (None, Some(s)) => s.parse().map(Some).map_err(|e| in_file(key, e)),
            (None, None) => Ok(None),
        };
        let token_budget = rate(args.token_budget, "token_budget", &file.token_budget)?;
        let api_budget = rate(args.api_budget, "api_budget", &file.api_budget)?;
        let static_dir = args.static_dir.clone().or(file.static_dir);
        let app_upstream = args.app_upstream.clone().or(file.app_upstream);
        let demo = args.demo || file.demo.unwrap_or(false);
        check_app_routes(static_dir.is_some(), app_upstream.is_some(), demo)?;
        let allow_prefixes = if args.allow_prefixes.is_empty() {
            file.allow_prefixes
        } else {
            Some(args.allow_prefixes.clone())
        };
        Ok(Self {
            bind: (args.bind.clone().or(file.bind)).unwrap_or_else(|| DEFAULT_BIND.to_owned()),
            public_url: args.public_url.clone().or(file.public_url),
            // Not the top-level `redirect_uri`: that is the CLI login's
            // loopback listener, where this server's callback is not.
            redirect_uri: args.redirect_uri.clone().or(file.redirect_uri),
            scopes: match (&args.scopes, &file.scopes) {
                (Some(s), _) | (None, Some(s)) => Scopes::parse(s),
                (None, None) => cfg
                    .scopes
                    .clone()
                    .unwrap_or_else(|| Scopes::parse(DEFAULT_SCOPES)),
            },
            database_url: args.database_url.clone().or(file.database_url),
            allow_prefixes: allow_prefixes.map(|prefixes| {
                prefixes
                    .iter()
                    .map(|p| p.trim_start_matches('/').to_owned())
                    .collect()
            }),
            session_ttl,
            threads: args.threads.or(file.threads),
            demo,
            metrics_bind: args.metrics_bind.clone().or(file.metrics_bind),
            static_dir: static_dir.map(std::path::PathBuf::from),
            app_upstream,
            session_idle,
            same_site,
            trusted_proxies,
            refresh_window,
            upstream_ca: args.upstream_ca.clone(),
            upstream_http2: args.upstream_http2,
            token_budget,
            api_budget,
        })
    }

    /// The server's configuration for `public_url`: the server's defaults
    /// where these settings leave a `None` (pure: no I/O).
    pub(crate) fn server_config(&self, public_url: &str) -> Result<ServerConfig, Error> {
        let mut sc = ServerConfig::new(public_url)?;
        if let Some(r) = &self.redirect_uri {
            spotoken::core::endpoint::check_redirect_uri(r)?;
            sc.redirect_uri = r.clone();
        }
        sc.scopes = self.scopes.clone();
        if let Some(prefixes) = &self.allow_prefixes {
            sc.allowed_prefixes = prefixes.clone();
        }
        if let Some(ttl) = self.session_ttl {
            sc.session_ttl = ttl;
        }
        if let Some(same_site) = self.same_site {
            sc.same_site = same_site;
        }
        sc.demo = self.demo;
        sc.metrics_on_main = self.metrics_bind.is_none();
        sc.static_dir = self.static_dir.clone();
        sc.app_upstream = match &self.app_upstream {
            Some(u) => Some(url::Url::parse(u).map_err(|e| {
                Error::Configuration(format!("--app-upstream {u}: not a URL ({e})"))
            })?),
            None => None,
        };
        sc.session_idle = self.session_idle;
        sc.trusted_proxies = self.trusted_proxies.clone();
        sc.upstream_ca = self.upstream_ca.clone();
        sc.upstream_http2 = self.upstream_http2;
        Ok(sc)
    }
}

/// A refresh window, if one is set, is not shorter than the refresher's least.
fn check_refresh_window(window: Option<Duration>) -> Result<(), Error> {
    let least = RefresherConfig::MIN_WINDOW.as_secs();
    if window.is_some_and(|w| w.as_secs() < least) {
        return Err(Error::Configuration(format!(
            "the refresh window must be at least {} minutes",
            least / 60
        )));
    }
    Ok(())
}

/// `[serve] trusted_proxies` as addresses; the error names the bad one.
fn parse_proxies(proxies: &[String]) -> Result<Vec<std::net::IpAddr>, String> {
    proxies
        .iter()
        .map(|p| p.parse().map_err(|_| format!("{p:?} is not an IP address")))
        .collect()
}

/// The paths that are not spotoken's go one way only: the app's files, its
/// server, or the demo page.
fn check_app_routes(static_dir: bool, app_upstream: bool, demo: bool) -> Result<(), Error> {
    if static_dir && app_upstream {
        return Err(Error::Configuration(
            "static_dir and app_upstream exclude each other: serve the app's files or \
             send its paths to its server"
                .into(),
        ));
    }
    if demo && (static_dir || app_upstream) {
        return Err(Error::Configuration(
            "the demo page takes /: use it without static_dir or app_upstream".into(),
        ));
    }
    Ok(())
}

/// Runs the server until SIGINT/SIGTERM: the stores, the engine over them,
/// then the server.
pub(crate) async fn exec(cfg: &Resolved, args: ServeArgs) -> Result<u8, Error> {
    let mut settings = Settings::resolve(&args, cfg)?;
    let mut cfg = cfg.clone();
    // Kept alive as long as the server runs.
    let emulator = if args.emulator {
        Some(start_emulator(&mut cfg, &mut settings).await?)
    } else {
        None
    };
    let cfg = &cfg;
    let listener = tokio::net::TcpListener::bind(&settings.bind)
        .await
        .map_err(|e| Error::Configuration(format!("cannot listen on {}: {e}", settings.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let sc = settings.server_config(&public_url)?;
    let (tokens_store, sessions, postgres) =
        open_stores(settings.database_url.as_deref(), cfg).await?;
    let budgets = budgets(cfg, &settings, postgres.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    let tokens = engine(cfg, tokens_store, &metrics, &budgets)?;
    // Logins begin without a round trip: know the provider's endpoints first.
    tokens.discover_provider().await?;
    let store = tokens.store().describe();
    let state = AppState::with_budgets(tokens, sessions, sc, metrics, budgets)?;
    let threads = settings.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let metrics_url = match &settings.metrics_bind {
        Some(bind) => Some(serve_metrics(bind, &state).await?),
        None => None,
    };
    let started = Started {
        addr,
        public_url,
        store,
        threads,
        metrics_url,
        emulator_url: emulator.as_ref().map(spotoken_emulator::Emulator::url),
    };
    announce(cfg.output, &settings, &started);
    let defaults = RefresherConfig::default();
    let refresher = RefresherConfig {
        window: settings.refresh_window.unwrap_or(defaults.window),
        ..defaults
    };
    spotoken_server::serve_on_threads(
        listener,
        state,
        refresher,
        crate::commands::emulate::shutdown_signal(),
        threads,
    )
    .await
    .map_err(|e| Error::Internal(format!("server failed: {e}")))?;
    if cfg.output == Output::Text {
        eprintln!("spotoken serve stopped");
    }
    Ok(0)
}

/// `--emulator`: starts Spotify's stand-in and points the configuration at
/// it (its client, its consent page, a store of its own unless one is named).
async fn start_emulator(
    cfg: &mut Resolved,
    settings: &mut Settings,
) -> Result<spotoken_emulator::Emulator, Error> {
    let emu = spotoken_emulator::Emulator::start()
        .await
        .map_err(|e| Error::Internal(format!("cannot start the emulator: {e}")))?;
    emu.update(|s| s.consent = spotoken_emulator::Consent::Page);
    cfg.accounts_url = emu.url();
    cfg.api_url = emu.url();
    cfg.client_id = Some(spotoken_emulator::DEFAULT_CLIENT_ID.to_owned());
    cfg.client_secret = None;
    if settings.database_url.is_none() {
        let db = cfg.store_path.with_file_name("serve-emulator.db");
        settings.database_url = Some(db.display().to_string());
    }
    if cfg.output == Output::Text {
        eprintln!(
            "emulator: {} (Spotify's stand-in: user alice, consent page on)",
            emu.url()
        );
    }
    Ok(emu)
}

/// The token and session stores: PostgreSQL for a `postgres://` URL (also
/// returned as itself, for the budgets' ledger), else SQLite at the path
/// given or the home's store.
async fn open_stores(
    database_url: Option<&str>,
    cfg: &Resolved,
) -> Result<
    (
        Arc<dyn TokenStore>,
        Arc<dyn SessionStore>,
        Option<Arc<spotoken::store::Postgres>>,
    ),
    Error,
> {
    Ok(match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pg = Arc::new(spotoken::store::Postgres::connect(url).await?);
            (pg.clone(), pg.clone(), Some(pg))
        }
        Some(path) => {
            let s = Arc::new(spotoken::store::Sqlite::open(
                path.trim_start_matches("sqlite://"),
            )?);
            (s.clone(), s, None)
        }
        None => {
            let s = Arc::new(spotoken::store::Sqlite::open(&cfg.store_path)?);
            (s.clone(), s, None)
        }
    })
}

/// The app's request budgets: counted with every instance on the database
/// (PostgreSQL), or by this process alone (SQLite); none unless one is set.
async fn budgets(
    cfg: &Resolved,
    settings: &Settings,
    postgres: Option<&spotoken::store::Postgres>,
) -> Result<Budgets, Error> {
    if settings.token_budget.is_none() && settings.api_budget.is_none() {
        return Ok(Budgets::default());
    }
    let ledger: Arc<dyn SharedLedger> = match postgres {
        Some(pg) => Arc::new(pg.budget_ledger().await?),
        None => Arc::new(MemoryLedger::default()),
    };
    Ok(Budgets::new(
        &client_id(cfg)?,
        settings.token_budget,
        settings.api_budget,
        ledger,
        Arc::new(spotoken::store::unix_now),
        spotoken_server::BROWSER_WAIT,
    ))
}

/// The client id, which the server cannot run without.
fn client_id(cfg: &Resolved) -> Result<String, Error> {
    cfg.client_id.clone().ok_or_else(|| {
        Error::Configuration(format!(
            "no client id: pass --{CLIENT_ID} or set {CLIENT_ID_ENV}"
        ))
    })
}

/// The engine over the shared token store, counting refreshes in `metrics`
/// and asking the token budget, if one is set, before each token request.
fn engine(
    cfg: &Resolved,
    store: Arc<dyn TokenStore>,
    metrics: &Arc<Metrics>,
    budgets: &Budgets,
) -> Result<spotoken::Tokens, Error> {
    let client_id = client_id(cfg)?;
    let m = metrics.clone();
    let mut b = cfg
        .with_provider(spotoken::Tokens::builder())?
        .client_id(client_id)
        .shared_store(store)
        .keys(cfg.key_ring()?)
        // A browser waits on every refresh: a Retry-After is answered at
        // once (503 with Retry-After), never sat through, and no token
        // request is sent before it elapses.
        .backoff(spotoken::core::backoff::Backoff {
            max_wait: Duration::ZERO,
            ..Default::default()
        })
        .on_refresh(move |_, outcome| m.refresh(outcome.as_str()));
    if let Some(s) = &cfg.client_secret {
        b = b.client_secret(s.clone());
    }
    if let Some(budget) = &budgets.token {
        b = b.request_budget(budget.clone());
    }
    b.build()
}

/// `--metrics-bind`: `/metrics` on a listener of its own; returns its URL.
async fn serve_metrics(bind: &str, state: &AppState) -> Result<String, Error> {
    let l = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        Error::Configuration(format!("cannot listen on {bind} (--metrics-bind): {e}"))
    })?;
    let at = l.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    let metrics = spotoken_server::metrics_app(state.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, metrics).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(format!("http://{at}/metrics"))
}

/// Where a started server can be reached.
struct Started {
    addr: std::net::SocketAddr,
    public_url: String,
    store: String,
    threads: usize,
    metrics_url: Option<String>,
    emulator_url: Option<String>,
}

/// Says where the server listens: JSON on stdout for scripts (logs are JSON
/// on stderr), else lines on stderr for people.
fn announce(output: Output, settings: &Settings, s: &Started) {
    let demo = settings.demo.then(|| format!("{}/", s.public_url));
    let addr = s.addr;
    if output == Output::Json {
        output::json(&serde_json::json!({
            "listening": format!("http://{addr}"),
            "public_url": s.public_url,
            "store": s.store,
            "threads": s.threads,
            "demo": demo,
            "metrics": s.metrics_url,
            "emulator": s.emulator_url,
        }));
        return;
    }
    eprintln!(
        "spotoken serve listening on http://{addr} (public URL {}; store: {})",
        s.public_url, s.store
    );
    if let Some(page) = &demo {
        eprintln!("demo page: {page}");
    }
    if let Some(dir) = &settings.static_dir {
        eprintln!("serving the app from {}", dir.display());
    }
    if let Some(app) = &settings.app_upstream {
        eprintln!("the app's server: {app}");
    }
    if let Some(m) = &s.metrics_url {
        eprintln!("metrics: {m}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeFile;

    fn resolved(serve: Option<ServeFile>, top_scopes: Option<&str>) -> Resolved {
        let g = crate::cli::Global {
            home: Some(std::env::temp_dir().join("spotoken-serve-settings-test")),
            account: None,
            client_id: None,
            accounts_url: None,
            api_url: None,
            issuer: None,
            output: crate::cli::Output::Text,
            verbose: 0,
        };
        let mut cfg = crate::config::resolve(&g).expect("resolve");
        cfg.file.serve = serve;
        cfg.scopes = top_scopes.map(Scopes::parse);
        cfg.redirect_uri = Some("http://127.0.0.1:9999/callback".into());
        cfg
    }

    #[test]
    fn defaults_without_flags_or_config() {
        let s = Settings::resolve(&ServeArgs::default(), &resolved(None, None)).expect("ok");
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(s.public_url, None);
        assert_eq!(s.scopes, Scopes::parse("user-read-private"));
        // The server's own defaults apply where the settings say nothing.
        assert_eq!(
            (&s.allow_prefixes, s.session_ttl, s.same_site),
            (&None, None, None)
        );
        let sc = s.server_config("http://127.0.0.1:8080").expect("config");
        assert_eq!(sc.allowed_prefixes, ["v1/"]);
        assert_eq!(sc.session_ttl, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(sc.same_site, SameSite::Lax);
        assert_eq!(sc.scopes, Scopes::parse("user-read-private"));
        assert_eq!((s.threads, s.demo, s.database_url), (None, false, None));
        assert_eq!(s.metrics_bind, None);
        // Not the top-level redirect URI: that is the CLI login's listener.
        assert_eq!(s.redirect_uri, None);
    }

    #[test]
    fn the_serve_table_fills_what_flags_leave_out() {
        let file = ServeFile {
            bind: Some("0.0.0.0:9000".into()),
            public_url: Some("https://app.example".into()),
            redirect_uri: Some("https://app.example/auth/callback".into()),
            scopes: Some("user-read-private,playlist-read-private".into()),
            database_url: Some("postgres://db/spotoken".into()),
            allow_prefixes: Some(vec!["/v1/me".into()]),
            session_ttl: Some("12h".into()),
            threads: Some(3),
            demo: Some(true),
            metrics_bind: Some("127.0.0.1:9100".into()),
            static_dir: None,
            app_upstream: None,
            session_idle: Some("2h".into()),
            same_site: Some("strict".into()),
            trusted_proxies: Some(vec!["127.0.0.1".into()]),
            refresh_window: Some("2h".into()),
            token_budget: Some("600/m".into()),
            api_budget: None,
        };
        let s = Settings::resolve(
            &ServeArgs::default(),
            &resolved(Some(file.clone()), Some("x")),
        )
        .expect("ok");
        assert_eq!(s.bind, "0.0.0.0:9000");
        assert_eq!(s.public_url.as_deref(), Some("https://app.example"));
        assert_eq!(
            s.redirect_uri.as_deref(),
            Some("https://app.example/auth/callback")
        );
        assert_eq!(
            s.scopes,
            Scopes::parse("user-read-private playlist-read-private")
        );
        assert_eq!(s.database_url.as_deref(), Some("postgres://db/spotoken"));
        assert_eq!(s.allow_prefixes, Some(vec!["v1/me".to_owned()]));
        assert_eq!(s.session_ttl, Some(Duration::from_secs(12 * 3600)));
        assert_eq!((s.threads, s.demo), (Some(3), true));
        assert_eq!(s.metrics_bind.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(s.session_idle, Some(Duration::from_secs(7200)));
        assert_eq!(s.same_site, Some(SameSite::Strict));
        assert_eq!(s.trusted_proxies, [std::net::IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(s.refresh_window, Some(Duration::from_secs(7200)));
        assert_eq!(s.token_budget, Some("600/m".parse().expect("rate")));
        assert_eq!(s.api_budget, None);

        let flags = ServeArgs {
            bind: Some("127.0.0.1:0".into()),
            public_url: Some("http://127.0.0.1:1".into()),
            scopes: Some("user-read-email".into()),
            allow_prefixes: vec!["v1/search".into()],
            session_ttl: Some(Duration::from_secs(60)),
            threads: Some(1),
            token_budget: Some("10/s".parse().expect("rate")),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(&flags, &resolved(Some(file), None)).expect("ok");
        assert_eq!(s.bind, "127.0.0.1:0");
        assert_eq!(s.public_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(s.scopes, Scopes::parse("user-read-email"));
        assert_eq!(s.allow_prefixes, Some(vec!["v1/search".to_owned()]));
        assert_eq!(s.session_ttl, Some(Duration::from_secs(60)));
        assert_eq!(s.threads, Some(1));
        assert_eq!(s.token_budget, Some("10/s".parse().expect("rate")));
    }

    #[test]
    fn top_level_scopes_apply_when_the_serve_table_has_none() {
        let s = Settings::resolve(&ServeArgs::default(), &resolved(None, Some("a b"))).expect("ok");
        assert_eq!(s.scopes, Scopes::parse("a b"));
    }

    #[test]
    fn the_app_is_served_one_way_only() {
        let both = ServeFile {
            static_dir: Some("dist".into()),
            app_upstream: Some("http://127.0.0.1:5173".into()),
            ..ServeFile::default()
        };
        let e = Settings::resolve(&ServeArgs::default(), &resolved(Some(both), None))
            .expect_err("refused");
        assert!(e.to_string().contains("exclude each other"), "{e}");
        let with_demo = ServeArgs {
            demo: true,
            static_dir: Some("dist".into()),
            ..ServeArgs::default()
        };
        assert!(Settings::resolve(&with_demo, &resolved(None, None)).is_err());
        let file = ServeFile {
            static_dir: Some("dist".into()),
            same_site: Some("none".into()),
            ..ServeFile::default()
        };
        let e = Settings::resolve(&ServeArgs::default(), &resolved(Some(file), None))
            .expect_err("refused");
        assert!(e.to_string().contains("[serve] same_site"), "{e}");
    }

    #[test]
    fn the_refresh_window_defaults_to_the_refreshers_and_is_not_too_short() {
        let s = Settings::resolve(&ServeArgs::default(), &resolved(None, None)).expect("ok");
        assert_eq!(s.refresh_window, None, "the refresher's own default");
        let short = ServeArgs {
            refresh_window: Some(Duration::from_secs(60)),
            ..ServeArgs::default()
        };
        let e = Settings::resolve(&short, &resolved(None, None)).expect_err("refused");
        assert!(e.to_string().contains("refresh window"), "{e}");
        let file = ServeFile {
            refresh_window: Some("later".into()),
            ..ServeFile::default()
        };
        let e = Settings::resolve(&ServeArgs::default(), &resolved(Some(file), None))
            .expect_err("refused");
        assert!(e.to_string().contains("[serve] refresh_window"), "{e}");
    }

    #[test]
    fn a_bad_session_ttl_names_the_file() {
        let file = ServeFile {
            session_ttl: Some("soon".into()),
            ..ServeFile::default()
        };
        let e = Settings::resolve(&ServeArgs::default(), &resolved(Some(file), None))
            .expect_err("refused");
        assert!(e.to_string().contains("[serve] session_ttl"), "{e}");
        assert!(e.to_string().contains("config.toml"), "{e}");
        let file = ServeFile {
            api_budget: Some("10/h".into()),
            ..ServeFile::default()
        };
        let e = Settings::resolve(&ServeArgs::default(), &resolved(Some(file), None))
            .expect_err("refused");
        assert!(e.to_string().contains("[serve] api_budget"), "{e}");
    }
}
