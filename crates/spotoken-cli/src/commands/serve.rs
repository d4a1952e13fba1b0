//! `spotoken serve`: the backend-for-frontend (see the spotoken-server crate).
//! One process on SQLite by default; several instances share users through
//! `--database-url postgres://…`.

use std::sync::Arc;
use std::time::Duration;

use spotoken::Error;
use spotoken::core::scope::Scopes;
use spotoken::store::{SessionStore, TokenStore};
use spotoken_server::cookies::SameSite;
use spotoken_server::{AppState, Metrics, ServerConfig, refresher::RefresherConfig};

use crate::cli::Output;
use crate::config::{Resolved, parse_duration_arg};
use crate::output;

/// Options of `spotoken serve`. Each one not given falls back to the
/// `[serve]` table of `config.toml`, then to its default ([`Settings::resolve`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: config's [serve] bind, else 127.0.0.1:8080]
    #[arg(long, env = "SPOTOKEN_BIND")]
    pub bind: Option<String>,
    /// The origin browsers use [default: http://{the bound address}]
    #[arg(long, env = "SPOTOKEN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Redirect URI registered with the app [default: config's [serve] redirect_uri, else {public-url}/auth/callback]
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
    /// How long a browser session lasts [default: 30d]
    #[arg(long, value_parser = parse_duration_arg)]
    pub session_ttl: Option<Duration>,
    /// Serve a demo page at / (login button, profile, what is playing, logout).
    #[arg(long)]
    pub demo: bool,
    /// Threads serving requests, each with its own event loop [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub threads: Option<usize>,
    /// Serve /metrics on this address only, not where browsers connect [default: the main address]
    #[arg(long, value_name = "ADDR", env = "SPOTOKEN_METRICS_BIND")]
    pub metrics_bind: Option<String>,
    /// Serve the app's built files from DIR for every path that is not /auth, /api or an
    /// operations route; a GET for HTML that names no file gets DIR/index.html
    #[arg(long = "static", value_name = "DIR", env = "SPOTOKEN_STATIC_DIR", conflicts_with_all = ["app_upstream", "demo"])]
    pub static_dir: Option<String>,
    /// Send every path that is not /auth, /api or an operations route to the app's own
    /// server (WebSockets included), with Spotoken-User and Spotoken-Scopes set
    #[arg(
        long,
        value_name = "URL",
        env = "SPOTOKEN_APP_UPSTREAM",
        conflicts_with = "demo"
    )]
    pub app_upstream: Option<String>,
    /// End a session unused for this long (e.g. 2h), besides --session-ttl [default: none]
    #[arg(long, value_parser = parse_duration_arg)]
    pub session_idle: Option<Duration>,
    /// The session cookie's SameSite attribute: lax or strict [default: lax]
    #[arg(long, value_name = "lax|strict")]
    pub same_site: Option<SameSite>,
    /// A TLS-terminating proxy in front (its address as the server sees it; repeatable):
    /// its X-Forwarded-For names the client, for bounds on logins and for the app
    #[arg(
        long = "trusted-proxy",
        value_name = "IP",
        env = "SPOTOKEN_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Development: start the built-in Spotify emulator and log in through it (its consent
    /// page; no Spotify app, no client id); sessions go to serve-emulator.db in the home
    #[arg(long)]
    pub emulator: bool,
    /// Also trust the CA certificates in this PEM file for the Web API upstream
    /// (tests and benchmarks against `spotoken emulate --tls-port`); the system's
    /// roots stay trusted and certificates are always verified
    #[arg(long, value_name = "FILE", env = "SPOTOKEN_UPSTREAM_CA")]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Speak HTTP/2 to the Web API (HTTPS only) through hyper's client instead of
    /// HTTP/1.1 keep-alive connections (measured in docs/BENCHMARKS.md)
    #[arg(long, env = "SPOTOKEN_UPSTREAM_HTTP2")]
    pub upstream_http2: bool,
}

/// What the server runs with: flags and environment, then `[serve]` in
/// `config.toml`, then the top-level `scopes` (shared with the CLI login),
/// then defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Address to listen on.
    pub bind: String,
    /// The origin browsers use; `None`: `http://{the bound address}`.
    pub public_url: Option<String>,
    /// Redirect URI; `None`: `{public-url}/auth/callback`.
    pub redirect_uri: Option<String>,
    /// Scopes requested at login.
    pub scopes: Scopes,
    /// `postgres://…` or a SQLite path; `None`: the home's store.
    pub database_url: Option<String>,
    /// API path prefixes the proxy forwards, without a leading slash.
    pub allow_prefixes: Vec<String>,
    /// How long a browser session lasts.
    pub session_ttl: Duration,
    /// Threads serving requests; `None`: one per core.
    pub threads: Option<usize>,
    /// Serve the demo page.
    pub demo: bool,
    /// A separate address for `/metrics`; `None`: the main one.
    pub metrics_bind: Option<String>,
    /// The app's built files.
    pub static_dir: Option<std::path::PathBuf>,
    /// The app's own server.
    pub app_upstream: Option<String>,
    /// The idle timeout of sessions; `None`: only the TTL.
    pub session_idle: Option<Duration>,
    /// The session cookie's SameSite.
    pub same_site: SameSite,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Extra roots for the Web API upstream (flag or environment only).
    pub upstream_ca: Option<std::path::PathBuf>,
    /// HTTP/2 to the Web API (flag or environment only).
    pub upstream_http2: bool,
}

impl Settings {
    /// Resolves `args` against the config (pure: no I/O).
    pub fn resolve(args: &ServeArgs, cfg: &Resolved) -> Result<Self, Error> {
        let file = cfg.file.serve.clone().unwrap_or_default();
        let session_ttl = match (args.session_ttl, &file.session_ttl) {
            (Some(d), _) => d,
            (None, Some(s)) => parse_duration_arg(s).map_err(|e| {
                Error::Configuration(format!(
                    "[serve] session_ttl in {}: {e}",
                    cfg.config_path.display()
                ))
            })?,
            (None, None) => Duration::from_secs(30 * 24 * 3600),
        };
        let in_file = |key: &str, e: String| {
            Error::Configuration(format!(
                "[serve] {key} in {}: {e}",
                cfg.config_path.display()
            ))
        };
        let session_idle = match (args.session_idle, &file.session_idle) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => Some(parse_duration_arg(s).map_err(|e| in_file("session_idle", e))?),
            (None, None) => None,
        };
        let same_site = match (args.same_site, &file.same_site) {
            (Some(s), _) => s,
            (None, Some(s)) => s.parse().map_err(|e| in_file("same_site", e))?,
            (None, None) => SameSite::Lax,
        };
        let trusted_proxies = if args.trusted_proxies.is_empty() {
            file.trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    p.parse().map_err(|_| {
                        in_file("trusted_proxies", format!("{p:?} is not an IP address"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            args.trusted_proxies.clone()
        };
        let static_dir = args.static_dir.clone().or(file.static_dir);
        let app_upstream = args.app_upstream.clone().or(file.app_upstream);
        let demo = args.demo || file.demo.unwrap_or(false);
        if static_dir.is_some() && app_upstream.is_some() {
            return Err(Error::Configuration(
                "static_dir and app_upstream exclude each other: serve the app's files or \
                 send its paths to its server"
                    .into(),
            ));
        }
        if demo && (static_dir.is_some() || app_upstream.is_some()) {
            return Err(Error::Configuration(
                "the demo page takes /: use it without static_dir or app_upstream".into(),
            ));
        }
        let allow_prefixes = if args.allow_prefixes.is_empty() {
            file.allow_prefixes
                .unwrap_or_else(|| vec!["v1/".to_owned()])
        } else {
            args.allow_prefixes.clone()
        };
        Ok(Self {
            bind: args
                .bind
                .clone()
                .or(file.bind)
                .unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            public_url: args.public_url.clone().or(file.public_url),
            // Not the top-level `redirect_uri`: that is the CLI login's
            // loopback listener, where this server's callback is not.
            redirect_uri: args.redirect_uri.clone().or(file.redirect_uri),
            scopes: match (&args.scopes, &file.scopes) {
                (Some(s), _) | (None, Some(s)) => Scopes::parse(s),
                (None, None) => cfg
                    .scopes
                    .clone()
                    .unwrap_or_else(|| Scopes::parse("user-read-private")),
            },
            database_url: args.database_url.clone().or(file.database_url),
            allow_prefixes: allow_prefixes
                .iter()
                .map(|p| p.trim_start_matches('/').to_owned())
                .collect(),
            session_ttl,
            threads: args.threads.or(file.threads),
            demo,
            metrics_bind: args.metrics_bind.clone().or(file.metrics_bind),
            static_dir: static_dir.map(std::path::PathBuf::from),
            app_upstream,
            session_idle,
            same_site,
            trusted_proxies,
            upstream_ca: args.upstream_ca.clone(),
            upstream_http2: args.upstream_http2,
        })
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn exec(cfg: &Resolved, args: ServeArgs) -> Result<u8, Error> {
    let mut settings = Settings::resolve(&args, cfg)?;
    let mut cfg = cfg.clone();
    // Kept alive as long as the server runs.
    let emulator = if args.emulator {
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
        Some(emu)
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
    let mut sc = ServerConfig::new(&public_url)?;
    if let Some(r) = &settings.redirect_uri {
        spotoken::core::endpoint::check_redirect_uri(r)?;
        sc.redirect_uri = r.clone();
    }
    sc.scopes = settings.scopes.clone();
    sc.allowed_prefixes = settings.allow_prefixes.clone();
    sc.session_ttl = settings.session_ttl;
    sc.demo = settings.demo;
    sc.metrics_on_main = settings.metrics_bind.is_none();
    sc.static_dir = settings.static_dir.clone();
    sc.app_upstream =
        match &settings.app_upstream {
            Some(u) => Some(url::Url::parse(u).map_err(|e| {
                Error::Configuration(format!("--app-upstream {u}: not a URL ({e})"))
            })?),
            None => None,
        };
    sc.session_idle = settings.session_idle;
    sc.same_site = settings.same_site;
    sc.trusted_proxies = settings.trusted_proxies.clone();
    sc.upstream_ca = settings.upstream_ca.clone();
    sc.upstream_http2 = settings.upstream_http2;

    let (tokens_store, sessions): (Arc<dyn TokenStore>, Arc<dyn SessionStore>) =
        match settings.database_url.as_deref() {
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
    let mut b = cfg
        .with_provider(spotoken::Tokens::builder())?
        .client_id(client_id)
        .shared_store(tokens_store)
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
    let tokens = b.build()?;
    // Logins begin without a round trip: know the provider's endpoints first.
    tokens.discover_provider().await?;
    let describe = tokens.store().describe();
    let state = AppState::new(tokens, sessions, sc, metrics)?;
    let threads = settings.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let demo = settings.demo.then(|| format!("{public_url}/"));
    let metrics_addr = match &settings.metrics_bind {
        Some(bind) => {
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
            Some(format!("http://{at}/metrics"))
        }
        None => None,
    };
    if cfg.output == Output::Json {
        // For scripts: where it listens, on stdout (logs are JSON on stderr).
        output::json(&serde_json::json!({
            "listening": format!("http://{addr}"),
            "public_url": public_url,
            "store": describe,
            "threads": threads,
            "demo": demo,
            "metrics": metrics_addr,
            "emulator": emulator.as_ref().map(spotoken_emulator::Emulator::url),
        }));
    } else {
        eprintln!(
            "spotoken serve listening on http://{addr} (public URL {public_url}; store: {describe})"
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
        if let Some(m) = &metrics_addr {
            eprintln!("metrics: {m}");
        }
    }
    spotoken_server::serve_on_threads(
        listener,
        state,
        RefresherConfig::default(),
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
        assert_eq!(s.allow_prefixes, ["v1/"]);
        assert_eq!(s.session_ttl, Duration::from_secs(30 * 24 * 3600));
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
        assert_eq!(s.allow_prefixes, ["v1/me"]);
        assert_eq!(s.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!((s.threads, s.demo), (Some(3), true));
        assert_eq!(s.metrics_bind.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(s.session_idle, Some(Duration::from_secs(7200)));
        assert_eq!(s.same_site, SameSite::Strict);
        assert_eq!(s.trusted_proxies, [std::net::IpAddr::from([127, 0, 0, 1])]);

        let flags = ServeArgs {
            bind: Some("127.0.0.1:0".into()),
            public_url: Some("http://127.0.0.1:1".into()),
            scopes: Some("user-read-email".into()),
            allow_prefixes: vec!["v1/search".into()],
            session_ttl: Some(Duration::from_secs(60)),
            threads: Some(1),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(&flags, &resolved(Some(file), None)).expect("ok");
        assert_eq!(s.bind, "127.0.0.1:0");
        assert_eq!(s.public_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(s.scopes, Scopes::parse("user-read-email"));
        assert_eq!(s.allow_prefixes, ["v1/search"]);
        assert_eq!(s.session_ttl, Duration::from_secs(60));
        assert_eq!(s.threads, Some(1));
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
    fn a_bad_session_ttl_names_the_file() {
        let file = ServeFile {
            session_ttl: Some("soon".into()),
            ..ServeFile::default()
        };
        let e = Settings::resolve(&ServeArgs::default(), &resolved(Some(file), None))
            .expect_err("refused");
        assert!(e.to_string().contains("[serve] session_ttl"), "{e}");
        assert!(e.to_string().contains("config.toml"), "{e}");
    }
}
