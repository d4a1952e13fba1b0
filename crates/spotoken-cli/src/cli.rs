//! The command-line surface, as clap types: global options with their
//! environment fallbacks (the README's command-line contract), one subcommand
//! per command module and each command's options. This module parses; the
//! command modules take what it parsed, resolved by [`crate::config`], and
//! never reach back here for anything but these types. Names, environment
//! variables and defaults are written once, in [`defs`].

pub(crate) mod defs;
mod quick;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use defs::*;
pub(crate) use quick::token_args as quick_token_args;

/// Keeps Spotify OAuth tokens valid, safe and usable.
///
/// Log in once with `spotoken login`, then `spotoken token` prints a fresh access
/// token for ever after. Exit codes: 0 ok, 1 unexpected failure, 2 usage or
/// configuration error, 3 authorization needed, 4 temporary failure, 5 insufficient scope.
#[derive(Debug, Parser)]
#[command(
    name = "spotoken",
    version,
    about,
    long_about,
    propagate_version = true
)]
pub(crate) struct Args {
    /// Options every command accepts.
    #[command(flatten)]
    pub(crate) global: Global,
    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// Directory for config, store and key file [default: the platform's data dir]
    #[arg(long = HOME, global = true, env = HOME_ENV, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Account name [default: config's default_account, else "default"]
    #[arg(long = ACCOUNT, global = true, env = ACCOUNT_ENV, value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// The Spotify app's client id [default: from config]
    #[arg(long = CLIENT_ID, global = true, env = CLIENT_ID_ENV, value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// Accounts service base URL [default: https://accounts.spotify.com]
    #[arg(long = ACCOUNTS_URL, global = true, env = ACCOUNTS_URL_ENV, value_name = "URL")]
    pub(crate) accounts_url: Option<String>,
    /// Web API base URL [default: https://api.spotify.com]
    #[arg(long = API_URL, global = true, env = API_URL_ENV, value_name = "URL")]
    pub(crate) api_url: Option<String>,
    /// Another OAuth 2.0 provider, by its issuer URL: endpoints come from its
    /// discovery document (RFC 8414 or OpenID Connect) [default: Spotify]
    #[arg(long = ISSUER, global = true, env = ISSUER_ENV, value_name = "URL")]
    pub(crate) issuer: Option<String>,
    /// Output format.
    #[arg(long = OUTPUT, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// More logging on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// For scripts: JSON on stdout, logs stay on stderr.
    Json,
}

impl Output {
    /// The format named on the command line (`text`, `json`), as clap reads it.
    pub(crate) fn from_arg(name: &str) -> Option<Self> {
        <Self as ValueEnum>::from_str(name, false).ok()
    }
}

/// The commands.
// Parsed once per run: the size of the largest (`serve`'s options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Log in through the browser (PKCE) and store the tokens, encrypted.
    Login(LoginArgs),
    /// Print a fresh access token (and nothing else) on stdout.
    Token(TokenArgs),
    /// Show each account: user, scopes, expiries, state. Exit 3 if any needs a login.
    Status,
    /// Call the Web API with the account's token (refresh on 401, Retry-After honoured).
    Api(ApiArgs),
    /// Refresh the access token now.
    Refresh,
    /// Delete the account's tokens (revoking where the provider can).
    Logout(LogoutArgs),
    /// List accounts, or choose the default one.
    Accounts(AccountsArgs),
    /// Keep every account's token fresh in the background.
    Daemon(DaemonArgs),
    /// A guided tour against a built-in Spotify emulator: no setup, no network.
    Demo,
    /// Run the backend-for-frontend: browsers get a session cookie, never a refresh token.
    Serve(ServeArgs),
    /// Run the Spotify emulator (Accounts service + Web API) on a loopback port.
    Emulate(EmulateArgs),
    /// Re-encrypt the store under a new master key (the old one is kept for reading).
    Rekey,
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for every command into DIR (for packagers).
    #[command(hide = true)]
    Man {
        /// The directory to write spotoken.1, spotoken-login.1, ... into.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Exit 5 naming the scopes the account lacks for an endpoint, else 0 (no
    /// network; the language bindings explain a 403 with it).
    #[command(hide = true)]
    CheckScope {
        /// HTTP method, such as GET.
        method: String,
        /// The path, such as /v1/me/playlists.
        path: String,
    },
}

/// Writes the man pages of `spotoken` and of each visible command (section 1)
/// into `dir`, generated from the clap definitions above.
pub(crate) fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Args::command(), dir)
}

/// Options of `token`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TokenArgs {
    /// Refresh first if the token expires within this (90, 90s, 5m, 2h).
    #[arg(long = MIN_VALID, default_value = DEFAULT_MARGIN_ARG.as_str(), value_parser = parse_duration_arg)]
    pub(crate) min_valid: Duration,
}

/// Options of `logout`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LogoutArgs {
    /// Log out every account.
    #[arg(long)]
    pub(crate) all: bool,
}

/// Options of `accounts`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AccountsArgs {
    /// Make this account the default (written to config.toml).
    #[arg(long, value_name = "NAME")]
    pub(crate) set_default: Option<String>,
}

/// Options of `spotoken login`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoginArgs {
    /// Scopes to request (comma- or space-separated) [default: config, else user-read-private]
    #[arg(long)]
    pub(crate) scopes: Option<String>,
    /// The redirect URI registered with your app, e.g. http://127.0.0.1:8888/callback
    /// [default: config, else an ephemeral port]
    #[arg(long, env = REDIRECT_URI_ENV)]
    pub(crate) redirect_uri: Option<String>,
    /// Do not open a browser; print the URL (on stderr, on a line of its own).
    #[arg(long)]
    pub(crate) no_browser: bool,
    /// Read the redirected URL from stdin instead of listening (no browser here).
    #[arg(long)]
    pub(crate) paste: bool,
    /// Ask Spotify to show the consent dialog again (to switch Spotify user).
    #[arg(long)]
    pub(crate) show_dialog: bool,
    /// Use the device authorization grant (RFC 8628): show a code to enter on
    /// any other device; no browser or listener here (providers that offer it).
    #[arg(long, conflicts_with_all = ["paste", "redirect_uri"])]
    pub(crate) device: bool,
    /// Give up after this long (90s, 5m, ...).
    #[arg(long, default_value = DEFAULT_LOGIN_TIMEOUT_ARG.as_str(), value_parser = parse_duration_arg)]
    pub(crate) timeout: Duration,
}

/// Options of `spotoken api`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiArgs {
    /// HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub(crate) method: String,
    /// Request body; `@file` reads a file, `@-` reads stdin.
    #[arg(short = 'd', long = "data")]
    pub(crate) data: Option<String>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub(crate) headers: Vec<String>,
    /// The path, such as /v1/me or /v1/me/playlists?limit=5.
    pub(crate) path: String,
}

/// Options of `spotoken daemon`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DaemonArgs {
    /// Command to run when an account needs a login; gets the account, the
    /// reason and the login command as $1 $2 $3 and as SPOTOKEN_ACCOUNT,
    /// SPOTOKEN_REASON, SPOTOKEN_LOGIN_COMMAND [default: config's notify_cmd]
    #[arg(long, env = NOTIFY_CMD_ENV)]
    pub(crate) notify_cmd: Option<String>,
    /// Refresh this long before expiry.
    #[arg(long, default_value = DEFAULT_MARGIN_ARG.as_str(), value_parser = parse_duration_arg)]
    pub(crate) margin: Duration,
    /// Spread refreshes over up to this much earlier.
    #[arg(long, default_value = DEFAULT_JITTER_ARG.as_str(), value_parser = parse_duration_arg)]
    pub(crate) jitter: Duration,
    /// Do one pass over the accounts and exit (for cron).
    #[arg(long)]
    pub(crate) once: bool,
}

/// Options of `spotoken serve`. Each one not given falls back to the
/// `[serve]` table of `config.toml`, then to its default ([`Settings::resolve`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: config's [serve] bind, else 127.0.0.1:8080]
    #[arg(long, env = BIND_ENV)]
    pub(crate) bind: Option<String>,
    /// The origin browsers use [default: http://{the bound address}]
    #[arg(long, env = PUBLIC_URL_ENV)]
    pub(crate) public_url: Option<String>,
    /// Redirect URI registered with the app [default: config's [serve] redirect_uri, else {public-url}/auth/callback]
    #[arg(long, env = REDIRECT_URI_ENV)]
    pub(crate) redirect_uri: Option<String>,
    /// Scopes requested at login [default: config, else user-read-private]
    #[arg(long)]
    pub(crate) scopes: Option<String>,
    /// `postgres://…` to share sessions and tokens between instances, or a SQLite
    /// file path [default: tokens.db in the home]
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// API path prefixes the proxy forwards (repeatable) [default: v1/]
    #[arg(long = "allow-prefix")]
    pub(crate) allow_prefixes: Vec<String>,
    /// How long a browser session lasts [default: 30d]
    #[arg(long, value_parser = parse_duration_arg)]
    pub(crate) session_ttl: Option<Duration>,
    /// Serve a demo page at / (login button, profile, what is playing, logout).
    #[arg(long)]
    pub(crate) demo: bool,
    /// Threads serving requests, each with its own event loop [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub(crate) threads: Option<usize>,
    /// Serve /metrics on this address only, not where browsers connect [default: the main address]
    #[arg(long, value_name = "ADDR", env = METRICS_BIND_ENV)]
    pub(crate) metrics_bind: Option<String>,
    /// Serve the app's built files from DIR for every path that is not /auth, /api or an
    /// operations route; a GET for HTML that names no file gets DIR/index.html
    #[arg(long = "static", value_name = "DIR", env = STATIC_DIR_ENV, conflicts_with_all = ["app_upstream", "demo"])]
    pub(crate) static_dir: Option<String>,
    /// Send every path that is not /auth, /api or an operations route to the app's own
    /// server (WebSockets included), with Spotoken-User and Spotoken-Scopes set
    #[arg(
        long,
        value_name = "URL",
        env = APP_UPSTREAM_ENV,
        conflicts_with = "demo"
    )]
    pub(crate) app_upstream: Option<String>,
    /// End a session unused for this long (e.g. 2h), besides --session-ttl [default: none]
    #[arg(long, value_parser = parse_duration_arg)]
    pub(crate) session_idle: Option<Duration>,
    /// The session cookie's SameSite attribute: lax or strict [default: lax]
    #[arg(long, value_name = "lax|strict")]
    pub(crate) same_site: Option<spotoken_server::SameSite>,
    /// A TLS-terminating proxy in front (its address as the server sees it; repeatable):
    /// its X-Forwarded-For names the client, for bounds on logins and for the app
    #[arg(
        long = "trusted-proxy",
        value_name = "IP",
        env = TRUSTED_PROXY_ENV,
        value_delimiter = ','
    )]
    pub(crate) trusted_proxies: Vec<std::net::IpAddr>,
    /// Keep tokens warm in the background only for sessions used within this long
    /// (at least 10m); an idle session is refreshed on its next request [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, env = REFRESH_WINDOW_ENV)]
    pub(crate) refresh_window: Option<Duration>,
    /// Also trust the CA certificates in this PEM file for the Web API upstream
    /// (tests and benchmarks against `spotoken emulate --tls-port`); the system's
    /// roots stay trusted and certificates are always verified
    #[arg(long, value_name = "FILE", env = UPSTREAM_CA_ENV)]
    pub(crate) upstream_ca: Option<PathBuf>,
    /// Speak HTTP/2 to the Web API (HTTPS only) through hyper's client instead of
    /// HTTP/1.1 keep-alive connections (measured in docs/BENCHMARKS.md)
    #[arg(long, env = UPSTREAM_HTTP2_ENV)]
    pub(crate) upstream_http2: bool,
    /// Requests to the token endpoint allowed to every instance on the database
    /// together (N/s or N/m); beyond it a browser gets 503 with Retry-After [default: none]
    #[arg(long, value_name = "N/s", env = TOKEN_BUDGET_ENV)]
    pub(crate) token_budget: Option<spotoken::budget::Rate>,
    /// Web API requests through the proxy allowed to every instance on the database
    /// together (N/s or N/m); with it, a 429 pauses every instance [default: none]
    #[arg(long, value_name = "N/s", env = API_BUDGET_ENV)]
    pub(crate) api_budget: Option<spotoken::budget::Rate>,
    /// Development: start the built-in Spotify emulator and log in through it (its consent
    /// page; no Spotify app, no client id); sessions go to serve-emulator.db in the home
    #[arg(long)]
    pub(crate) emulator: bool,
}

/// Options of `spotoken emulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmulateArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
    /// Secret of the client named by --client-id (default: a random one,
    /// printed). Like every Spotify app it has one; PKCE flows do not send it.
    #[arg(long, env = EMULATOR_CLIENT_SECRET_ENV, hide_env_values = true)]
    pub(crate) client_secret: Option<String>,
    /// Redirect URIs registered for the client named by --client-id (default:
    /// loopback /callback and /auth/callback on any port).
    #[arg(long = "redirect-uri")]
    pub(crate) redirect_uris: Vec<String>,
    /// Also serve the same emulator over HTTPS on this port of 127.0.0.1
    /// (0 picks a free one), with a certificate from a test CA made at start.
    #[arg(long, value_name = "PORT")]
    pub(crate) tls_port: Option<u16>,
    /// Write the test CA's certificate (PEM) here, for clients to trust.
    #[arg(long, value_name = "FILE", requires = "tls_port")]
    pub(crate) tls_ca_out: Option<std::path::PathBuf>,
    /// Offer HTTP/2 on the HTTPS port (ALPN h2), as api.spotify.com does.
    #[arg(long, requires = "tls_port")]
    pub(crate) http2: bool,
    /// Added delay before every Web API answer (e.g. 20ms), as from a
    /// far-away api.spotify.com.
    #[arg(long, value_parser = parse_duration_arg)]
    pub(crate) api_latency: Option<Duration>,
}

/// Parses a duration option (`90`, `90s`, `5m`, `2h`).
pub(crate) fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    spotoken::core::wait::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command_and_their_options() {
        use clap::CommandFactory as _;
        let dir = tempfile::tempdir().expect("tmp");
        write_man_pages(dir.path()).expect("write");
        for sub in Args::command().get_subcommands() {
            let page = dir.path().join(format!("spotoken-{}.1", sub.get_name()));
            assert_eq!(page.exists(), !sub.is_hide_set(), "{}", page.display());
        }
        let token = std::fs::read_to_string(dir.path().join("spotoken-token.1")).expect("page");
        assert!(token.contains("min\\-valid"), "{token}");
        assert!(token.contains("SPOTOKEN_HOME"), "{token}");
        let top = std::fs::read_to_string(dir.path().join("spotoken.1")).expect("page");
        assert!(top.contains("insufficient scope"), "{top}");
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}
