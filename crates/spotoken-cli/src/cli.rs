//! The command-line surface, as clap types: global options with their
//! environment fallbacks (the README's command-line contract) and one subcommand
//! per command module.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::config::parse_duration_arg;

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
pub struct Args {
    /// Options every command accepts.
    #[command(flatten)]
    pub global: Global,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Directory for config, store and key file [default: the platform's data dir]
    #[arg(long, global = true, env = "SPOTOKEN_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Account name [default: config's default_account, else "default"]
    #[arg(long, global = true, env = "SPOTOKEN_ACCOUNT", value_name = "NAME")]
    pub account: Option<String>,
    /// The Spotify app's client id [default: from config]
    #[arg(long, global = true, env = "SPOTOKEN_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// Accounts service base URL [default: https://accounts.spotify.com]
    #[arg(long, global = true, env = "SPOTOKEN_ACCOUNTS_URL", value_name = "URL")]
    pub accounts_url: Option<String>,
    /// Web API base URL [default: https://api.spotify.com]
    #[arg(long, global = true, env = "SPOTOKEN_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// Another OAuth 2.0 provider, by its issuer URL: endpoints come from its
    /// discovery document (RFC 8414 or OpenID Connect) [default: Spotify]
    #[arg(long, global = true, env = "SPOTOKEN_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// More logging on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts: JSON on stdout, logs stay on stderr.
    Json,
}

/// The commands.
// Parsed once per process: the size of the largest (serve's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in through the browser (PKCE) and store the tokens, encrypted.
    Login(commands::login::LoginArgs),
    /// Print a fresh access token (and nothing else) on stdout.
    Token(TokenArgs),
    /// Show each account: user, scopes, expiries, state. Exit 3 if any needs a login.
    Status,
    /// Call the Web API with the account's token (refresh on 401, Retry-After honoured).
    Api(commands::api::ApiArgs),
    /// Refresh the access token now.
    Refresh,
    /// Delete the account's tokens (revoking where the provider can).
    Logout(LogoutArgs),
    /// List accounts, or choose the default one.
    Accounts(AccountsArgs),
    /// Keep every account's token fresh in the background.
    Daemon(commands::daemon::DaemonArgs),
    /// A guided tour against a built-in Spotify emulator: no setup, no network.
    Demo,
    /// Run the backend-for-frontend: browsers get a session cookie, never a refresh token.
    Serve(commands::serve::ServeArgs),
    /// Run the Spotify emulator (Accounts service + Web API) on a loopback port.
    Emulate(commands::emulate::EmulateArgs),
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
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Args::command(), dir)
}

/// Options of `token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Refresh first if the token expires within this (90, 90s, 5m, 2h).
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    pub min_valid: Duration,
}

/// Options of `logout`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogoutArgs {
    /// Log out every account.
    #[arg(long)]
    pub all: bool,
}

/// Options of `accounts`.
#[derive(Debug, Clone, clap::Args)]
pub struct AccountsArgs {
    /// Make this account the default (written to config.toml).
    #[arg(long, value_name = "NAME")]
    pub set_default: Option<String>,
}

/// Recognizes the common `spotoken token [--min-valid D] [--account A]
/// [--output text|json] [--home DIR]` without building clap's command tree
/// (the environment fallbacks apply as with clap). Anything else, including
/// anything unusual, returns `None` and goes through clap.
pub fn quick_token_args(
    mut args: impl Iterator<Item = std::ffi::OsString>,
) -> Option<(Global, TokenArgs)> {
    if args.next()?.to_str()? != "token" {
        return None;
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut g = Global {
        home: env("SPOTOKEN_HOME").map(PathBuf::from),
        account: env("SPOTOKEN_ACCOUNT").and_then(|v| v.into_string().ok()),
        client_id: env("SPOTOKEN_CLIENT_ID").and_then(|v| v.into_string().ok()),
        accounts_url: env("SPOTOKEN_ACCOUNTS_URL").and_then(|v| v.into_string().ok()),
        api_url: env("SPOTOKEN_API_URL").and_then(|v| v.into_string().ok()),
        issuer: env("SPOTOKEN_ISSUER").and_then(|v| v.into_string().ok()),
        output: Output::Text,
        verbose: 0,
    };
    let mut t = TokenArgs {
        min_valid: Duration::from_secs(300),
    };
    while let Some(flag) = args.next() {
        let flag = flag.into_string().ok()?;
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag, None),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next()?.into_string().ok()?,
        };
        match name.as_str() {
            "--min-valid" => t.min_valid = parse_duration_arg(&value).ok()?,
            "--account" => g.account = Some(value),
            "--home" => g.home = Some(PathBuf::from(value)),
            "--client-id" => g.client_id = Some(value),
            "--issuer" => g.issuer = Some(value),
            "--output" if value == "json" => g.output = Output::Json,
            "--output" if value == "text" => g.output = Output::Text,
            _ => return None,
        }
    }
    Some((g, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(args: &[&str]) -> Option<(Global, TokenArgs)> {
        quick_token_args(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn quick_parser_takes_the_common_forms_and_nothing_else() {
        let (g, t) = quick(&[
            "token",
            "--min-valid",
            "15m",
            "--account=work",
            "--output",
            "json",
        ])
        .expect("quick");
        assert_eq!(t.min_valid, Duration::from_secs(900));
        assert_eq!(g.account.as_deref(), Some("work"));
        assert_eq!(g.output, Output::Json);
        assert!(quick(&["token", "-v"]).is_none());
        assert!(quick(&["token", "--min-valid"]).is_none());
        assert!(
            quick(&["token", "--min-valid", "soon"]).is_none(),
            "clap reports the error"
        );
        assert!(quick(&["status"]).is_none());
        assert!(quick(&["token", "--help"]).is_none());
    }

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
