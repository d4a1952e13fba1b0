//! Every flag name, environment variable and default of the command line,
//! written once.
//!
//! The clap definitions ([`super`]) and the `spotoken` executable's own reader
//! of `token`'s arguments ([`super::quick`]) both take their names from here,
//! so the fast path cannot accept a spelling clap refuses or read another
//! variable than clap does; the configuration, the child-process scrubbing and
//! the commands take the same constants (ripgrep's `flags/defs.rs` is the
//! model).

use std::sync::LazyLock;
use std::time::Duration;

// Global options: the flag's long name, then the environment variable that
// stands in for it.

/// `--home DIR`: config, store and key file.
pub(crate) const HOME: &str = "home";
/// Stands in for `--home`.
pub(crate) const HOME_ENV: &str = "SPOTOKEN_HOME";
/// `--account NAME`.
pub(crate) const ACCOUNT: &str = "account";
/// Stands in for `--account`; also what the notify command gets.
pub(crate) const ACCOUNT_ENV: &str = "SPOTOKEN_ACCOUNT";
/// `--client-id ID`.
pub(crate) const CLIENT_ID: &str = "client-id";
/// Stands in for `--client-id`.
pub(crate) const CLIENT_ID_ENV: &str = "SPOTOKEN_CLIENT_ID";
/// `--accounts-url URL`.
pub(crate) const ACCOUNTS_URL: &str = "accounts-url";
/// Stands in for `--accounts-url`.
pub(crate) const ACCOUNTS_URL_ENV: &str = "SPOTOKEN_ACCOUNTS_URL";
/// `--api-url URL`.
pub(crate) const API_URL: &str = "api-url";
/// Stands in for `--api-url`.
pub(crate) const API_URL_ENV: &str = "SPOTOKEN_API_URL";
/// `--issuer URL`.
pub(crate) const ISSUER: &str = "issuer";
/// Stands in for `--issuer`.
pub(crate) const ISSUER_ENV: &str = "SPOTOKEN_ISSUER";
/// `--output text|json`.
pub(crate) const OUTPUT: &str = "output";

// `token`.

/// `token --min-valid D`.
pub(crate) const MIN_VALID: &str = "min-valid";

// Secrets and settings that only the environment carries.

/// The client secret (never a flag: flags show in `ps`).
pub(crate) const CLIENT_SECRET_ENV: &str = "SPOTOKEN_CLIENT_SECRET";
/// The master key(s), base64.
pub(crate) const MASTER_KEY_ENV: &str = spotoken::crypto::MASTER_KEY_ENV;
/// `emulate --client-secret`.
pub(crate) const EMULATOR_CLIENT_SECRET_ENV: &str = "SPOTOKEN_EMULATOR_CLIENT_SECRET";
/// `serve --database-url` (may carry a password).
pub(crate) const DATABASE_URL_ENV: &str = "SPOTOKEN_DATABASE_URL";
/// A shell command that opens the login URL (`$1`).
pub(crate) const BROWSER_ENV: &str = "SPOTOKEN_BROWSER";
/// `login --redirect-uri` and `serve --redirect-uri`.
pub(crate) const REDIRECT_URI_ENV: &str = "SPOTOKEN_REDIRECT_URI";
/// `daemon --notify-cmd`.
pub(crate) const NOTIFY_CMD_ENV: &str = "SPOTOKEN_NOTIFY_CMD";
/// The notify command's reason for the login.
pub(crate) const REASON_ENV: &str = "SPOTOKEN_REASON";
/// The notify command's `spotoken login …` to run.
pub(crate) const LOGIN_COMMAND_ENV: &str = "SPOTOKEN_LOGIN_COMMAND";

/// Set by `spotoken` when it hands a `token` it could not answer to
/// `spotoken-full`, which then starts past the fast path instead of reading
/// and decrypting the same stale row again.
pub(crate) const FAST_PATH_TRIED_ENV: &str = "SPOTOKEN_FAST_PATH_TRIED";

// `serve`'s environment.

/// `serve --bind`.
pub(crate) const BIND_ENV: &str = "SPOTOKEN_BIND";
/// `serve --public-url`.
pub(crate) const PUBLIC_URL_ENV: &str = "SPOTOKEN_PUBLIC_URL";
/// `serve --metrics-bind`.
pub(crate) const METRICS_BIND_ENV: &str = "SPOTOKEN_METRICS_BIND";
/// `serve --static`.
pub(crate) const STATIC_DIR_ENV: &str = "SPOTOKEN_STATIC_DIR";
/// `serve --app-upstream`.
pub(crate) const APP_UPSTREAM_ENV: &str = "SPOTOKEN_APP_UPSTREAM";
/// `serve --trusted-proxy`.
pub(crate) const TRUSTED_PROXY_ENV: &str = "SPOTOKEN_TRUSTED_PROXY";
/// `serve --refresh-window`.
pub(crate) const REFRESH_WINDOW_ENV: &str = "SPOTOKEN_REFRESH_WINDOW";
/// `serve --upstream-ca`.
pub(crate) const UPSTREAM_CA_ENV: &str = "SPOTOKEN_UPSTREAM_CA";
/// `serve --upstream-http2`.
pub(crate) const UPSTREAM_HTTP2_ENV: &str = "SPOTOKEN_UPSTREAM_HTTP2";
/// `serve --token-budget`.
pub(crate) const TOKEN_BUDGET_ENV: &str = "SPOTOKEN_TOKEN_BUDGET";
/// `serve --api-budget`.
pub(crate) const API_BUDGET_ENV: &str = "SPOTOKEN_API_BUDGET";

// Defaults.

/// The account used when none is named anywhere.
pub(crate) const DEFAULT_ACCOUNT: &str = "default";
/// Scopes a login asks for when nobody says (Spotify-like providers).
pub(crate) const DEFAULT_SCOPES: &str = spotoken::core::scope::DEFAULT_SCOPES;
/// `token --min-valid` and `daemon --margin`: the library's margin, so the
/// command and the library agree on when a token is too old to hand out.
pub(crate) const DEFAULT_MARGIN: Duration = spotoken::core::freshness::DEFAULT_MARGIN;
/// `daemon --jitter`: spreads many accounts' refreshes over two minutes.
pub(crate) const DEFAULT_JITTER: Duration = Duration::from_secs(120);
/// `login --timeout`: long enough to read a consent page and log in to
/// Spotify, short enough that a forgotten login does not hold the port.
pub(crate) const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);
/// `serve --bind`: loopback, so nothing is exposed until asked.
pub(crate) const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// `login --paste`'s redirect URI when none is configured: the one the
/// README tells people to register (nothing listens on it).
pub(crate) const DEFAULT_PASTE_REDIRECT_URI: &str = "http://127.0.0.1:8888/callback";

/// The defaults above as clap shows and parses them (`5m`).
pub(crate) static DEFAULT_MARGIN_ARG: LazyLock<String> =
    LazyLock::new(|| duration_arg(DEFAULT_MARGIN));
/// `--jitter`'s default as an argument.
pub(crate) static DEFAULT_JITTER_ARG: LazyLock<String> =
    LazyLock::new(|| duration_arg(DEFAULT_JITTER));
/// `--timeout`'s default as an argument.
pub(crate) static DEFAULT_LOGIN_TIMEOUT_ARG: LazyLock<String> =
    LazyLock::new(|| duration_arg(DEFAULT_LOGIN_TIMEOUT));

/// `d` in its largest whole unit, as a duration argument is written (`5m`,
/// `2h`, `90s`), so `--help` shows the default the way a user would type it.
fn duration_arg(d: Duration) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    match d.as_secs() {
        s if s >= HOUR && s % HOUR == 0 => format!("{}h", s / HOUR),
        s if s >= MINUTE && s % MINUTE == 0 => format!("{}m", s / MINUTE),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_defaults_read_as_typed_and_parse_back() {
        assert_eq!(DEFAULT_MARGIN_ARG.as_str(), "5m");
        assert_eq!(DEFAULT_JITTER_ARG.as_str(), "2m");
        assert_eq!(duration_arg(Duration::from_secs(7200)), "2h");
        assert_eq!(duration_arg(Duration::from_secs(90)), "90s");
        for d in [DEFAULT_MARGIN, DEFAULT_JITTER, DEFAULT_LOGIN_TIMEOUT] {
            assert_eq!(super::super::parse_duration_arg(&duration_arg(d)), Ok(d));
        }
    }
}
