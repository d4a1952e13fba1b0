//! From raw options to resolved settings: command line, then environment, then
//! `config.toml` under the home, then defaults (the README's command-line
//! contract). Parse first, then resolve; commands only see [`Resolved`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spotoken::Error;
use spotoken::core::endpoint::{SPOTIFY_ACCOUNTS_URL, SPOTIFY_API_URL};
use spotoken::core::scope::Scopes;
use spotoken::core::secret::ClientSecret;
use spotoken::crypto::KeyRing;

use crate::cli::defs::{
    CLIENT_ID, CLIENT_ID_ENV, CLIENT_SECRET_ENV, DEFAULT_ACCOUNT, HOME, HOME_ENV, MASTER_KEY_ENV,
};
use crate::cli::{Global, Output};

/// `config.toml`: every field optional.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// The Spotify app's client id.
    pub(crate) client_id: Option<String>,
    /// Redirect URI registered with the app (login listens there).
    pub(crate) redirect_uri: Option<String>,
    /// Scopes to request at login, comma- or space-separated.
    pub(crate) scopes: Option<String>,
    /// Accounts service base URL.
    pub(crate) accounts_url: Option<String>,
    /// Web API base URL.
    pub(crate) api_url: Option<String>,
    /// RFC 7009 revocation endpoint, for providers that have one.
    pub(crate) revocation_url: Option<String>,
    /// Another OAuth 2.0 provider, by its issuer URL (endpoints discovered).
    pub(crate) issuer: Option<String>,
    /// Authorization endpoint, for a provider without discovery.
    pub(crate) authorization_url: Option<String>,
    /// Token endpoint, for a provider without discovery.
    pub(crate) token_url: Option<String>,
    /// RFC 8628 device authorization endpoint, for a provider without discovery.
    pub(crate) device_authorization_url: Option<String>,
    /// Command the daemon runs when an account needs re-authorization.
    pub(crate) notify_cmd: Option<String>,
    /// Where the master key comes from: `file` (default) or `env`.
    pub(crate) key_source: Option<String>,
    /// The account used when `--account` is not given.
    pub(crate) default_account: Option<String>,
    /// `spotoken serve`'s settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) serve: Option<ServeFile>,
}

/// The `[serve]` table of `config.toml`: what `spotoken serve` takes when
/// neither its flags nor the environment say.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeFile {
    /// Address to listen on.
    pub(crate) bind: Option<String>,
    /// The origin browsers use.
    pub(crate) public_url: Option<String>,
    /// Redirect URI registered with the app (overrides the top-level one,
    /// which is the CLI login's).
    pub(crate) redirect_uri: Option<String>,
    /// Scopes requested at login (overrides the top-level `scopes`).
    pub(crate) scopes: Option<String>,
    /// `postgres://…` or a SQLite file path.
    pub(crate) database_url: Option<String>,
    /// API path prefixes the proxy forwards.
    pub(crate) allow_prefixes: Option<Vec<String>>,
    /// How long a browser session lasts (`30d`, `12h`, seconds).
    pub(crate) session_ttl: Option<String>,
    /// Threads serving requests.
    pub(crate) threads: Option<usize>,
    /// Serve the demo page at `/`.
    pub(crate) demo: Option<bool>,
    /// A separate address for `/metrics`.
    pub(crate) metrics_bind: Option<String>,
    /// The app's built files, served for every other path.
    pub(crate) static_dir: Option<String>,
    /// The app's own server, reached for every other path.
    pub(crate) app_upstream: Option<String>,
    /// A session unused this long ends (`2h`, seconds).
    pub(crate) session_idle: Option<String>,
    /// The session cookie's SameSite: `lax` or `strict`.
    pub(crate) same_site: Option<String>,
    /// Proxies in front whose `X-Forwarded-For` names the client.
    pub(crate) trusted_proxies: Option<Vec<String>>,
    /// Keep tokens warm in the background only for sessions used within
    /// this long (`1h`, seconds).
    pub(crate) refresh_window: Option<String>,
    /// Token-endpoint requests allowed to the whole fleet (`10/s`, `600/m`).
    pub(crate) token_budget: Option<String>,
    /// Web API requests through the proxy allowed to the whole fleet.
    pub(crate) api_budget: Option<String>,
}

/// Where the key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// The key file under the home (created on first use).
    File,
    /// `SPOTOKEN_MASTER_KEY` only.
    Env,
    /// The OS keyring (builds with the `keyring` feature).
    Keyring,
}

/// Settings every command works from.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Where config.toml is.
    pub(crate) config_path: PathBuf,
    /// The SQLite store.
    pub(crate) store_path: PathBuf,
    /// The key file.
    pub(crate) key_path: PathBuf,
    /// The account.
    pub(crate) account: String,
    /// The client id, if configured anywhere.
    pub(crate) client_id: Option<String>,
    /// The client secret (environment only).
    pub(crate) client_secret: Option<ClientSecret>,
    /// Accounts base URL.
    pub(crate) accounts_url: String,
    /// API base URL.
    pub(crate) api_url: String,
    /// Revocation endpoint.
    pub(crate) revocation_url: Option<String>,
    /// Issuer to discover.
    pub(crate) issuer: Option<String>,
    /// Explicit authorization endpoint.
    pub(crate) authorization_url: Option<String>,
    /// Explicit token endpoint.
    pub(crate) token_url: Option<String>,
    /// Explicit device authorization endpoint.
    pub(crate) device_authorization_url: Option<String>,
    /// Configured redirect URI.
    pub(crate) redirect_uri: Option<String>,
    /// Configured login scopes.
    pub(crate) scopes: Option<Scopes>,
    /// Notify command.
    pub(crate) notify_cmd: Option<String>,
    /// Key source.
    pub(crate) key_source: KeySource,
    /// `SPOTOKEN_MASTER_KEY`, if set.
    pub(crate) master_key_env: Option<String>,
    /// Output format.
    pub(crate) output: Output,
    /// The parsed config file (for commands that rewrite it).
    pub(crate) file: ConfigFile,
}

/// The platform's default home: `$XDG_DATA_HOME/spotoken` on Linux.
fn default_home() -> Result<PathBuf, Error> {
    directories::ProjectDirs::from("", "", "spotoken")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| {
            Error::Configuration(format!(
                "cannot find a home directory: set {HOME_ENV} or pass --{HOME}"
            ))
        })
}

/// Reads `config.toml` if it exists.
pub(crate) fn read_config(path: &Path) -> Result<ConfigFile, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_config(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(Error::Configuration(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Parses the text of `config.toml` (at `path`, named in the error).
///
/// The error says where and what, never the offending line: toml's own
/// message quotes that line, and a secret put in the file by mistake (a
/// `client_secret`, a database URL with its password) would be printed with
/// it. What toml says is redacted too, since it may quote a value.
pub(crate) fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, Error> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or_else(String::new, |span| {
            let before = text.as_bytes().get(..span.start).unwrap_or(text.as_bytes());
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            format!(" (line {line}, column {column})")
        });
        let what = spotoken::core::redact(e.message().trim());
        Error::Configuration(format!("{} is not valid{at}: {what}", path.display()))
    })
}

/// Writes `config.toml` (0600, atomically).
pub(crate) fn write_config(path: &Path, cfg: &ConfigFile) -> Result<(), Error> {
    use std::io::Write as _;
    let text = toml::to_string(cfg)
        .map_err(|e| Error::Internal(format!("cannot serialize the config: {e}")))?;
    if let Some(dir) = path.parent() {
        spotoken::fs::private_dir(dir)?;
    }
    let tmp = path.with_extension("toml.tmp");
    let io =
        |e: std::io::Error| Error::Configuration(format!("cannot write {}: {e}", path.display()));
    let mut f = spotoken::fs::create_private_file(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Resolves the global options.
pub(crate) fn resolve(g: &Global) -> Result<Resolved, Error> {
    let home = match &g.home {
        Some(h) => h.clone(),
        None => default_home()?,
    };
    let config_path = home.join("config.toml");
    let file = read_config(&config_path)?;
    let nonempty = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
    let account = nonempty(g.account.clone())
        .or_else(|| nonempty(file.default_account.clone()))
        .unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned());
    spotoken::account::validate_account_name(&account)?;
    let key_source = match file.key_source.as_deref() {
        None | Some("file") => KeySource::File,
        Some("env") => KeySource::Env,
        Some("keyring") => KeySource::Keyring,
        Some(other) => {
            return Err(Error::Configuration(format!(
                "key_source = '{other}' in {}: use 'file', 'env' or 'keyring'",
                config_path.display()
            )));
        }
    };
    let scopes = file.scopes.as_deref().map(Scopes::parse);
    Ok(Resolved {
        store_path: home.join("tokens.db"),
        key_path: home.join("master.key"),
        config_path,
        account,
        client_id: nonempty(g.client_id.clone()).or_else(|| nonempty(file.client_id.clone())),
        client_secret: nonempty(std::env::var(CLIENT_SECRET_ENV).ok()).map(ClientSecret::new),
        accounts_url: nonempty(g.accounts_url.clone())
            .or_else(|| nonempty(file.accounts_url.clone()))
            .unwrap_or_else(|| SPOTIFY_ACCOUNTS_URL.to_owned()),
        api_url: nonempty(g.api_url.clone())
            .or_else(|| nonempty(file.api_url.clone()))
            .unwrap_or_else(|| SPOTIFY_API_URL.to_owned()),
        revocation_url: nonempty(file.revocation_url.clone()),
        issuer: nonempty(g.issuer.clone()).or_else(|| nonempty(file.issuer.clone())),
        authorization_url: nonempty(file.authorization_url.clone()),
        token_url: nonempty(file.token_url.clone()),
        device_authorization_url: nonempty(file.device_authorization_url.clone()),
        redirect_uri: nonempty(file.redirect_uri.clone()),
        scopes,
        notify_cmd: nonempty(file.notify_cmd.clone()),
        key_source,
        master_key_env: nonempty(std::env::var(MASTER_KEY_ENV).ok()),
        output: g.output,
        file,
    })
}

impl Resolved {
    /// The key ring from the configured source.
    pub(crate) fn key_ring(&self) -> Result<spotoken::crypto::KeyRing, Error> {
        if let Some(v) = &self.master_key_env {
            return KeyRing::new(spotoken::crypto::parse_keys(
                v,
                spotoken::crypto::MASTER_KEY_ENV,
            )?);
        }
        if self.key_source == KeySource::Keyring {
            #[cfg(feature = "keyring")]
            return spotoken::crypto::load_key_ring_from_os_keyring(
                &self.config_path.with_file_name("").display().to_string(),
            );
            #[cfg(not(feature = "keyring"))]
            return Err(Error::Configuration(
                "key_source = 'keyring' needs a spotoken built with the keyring feature \
                 (cargo install --path crates/spotoken-cli --features keyring)"
                    .into(),
            ));
        }
        if self.key_source == KeySource::Env && self.master_key_env.is_none() {
            return Err(Error::Configuration(format!(
                "key_source = 'env' but {} is not set",
                spotoken::crypto::MASTER_KEY_ENV
            )));
        }
        spotoken::crypto::load_key_ring(&self.key_path, self.master_key_env.as_deref())
    }

    /// The engine over the SQLite store under the home.
    pub(crate) fn tokens(&self) -> Result<spotoken::Tokens, Error> {
        // After a login the store knows the client id, so later commands need no flag.
        let stored = || {
            spotoken::store::Sqlite::load_blocking(&self.store_path, &self.account)
                .ok()
                .flatten()
                .map(|r| r.client_id)
        };
        let client_id = self.client_id.clone().or_else(stored).ok_or_else(|| {
            Error::Configuration(
                format!("no client id: pass --{CLIENT_ID}, set {CLIENT_ID_ENV}, or put client_id in config.toml"),
            )
        })?;
        let mut b = self
            .with_provider(spotoken::Tokens::builder())?
            .client_id(client_id)
            .store(spotoken::store::Sqlite::open(&self.store_path)?)
            .keys(self.key_ring()?);
        if let Some(s) = &self.client_secret {
            b = b.client_secret(s.clone());
        }
        b.build()
    }
}

impl Resolved {
    /// Sets the configured provider: explicit endpoints when `token_url` is
    /// given, else the issuer's discovery document (fetched when first
    /// needed), else Spotify's paths under the accounts URL.
    pub(crate) fn with_provider(
        &self,
        b: spotoken::TokensBuilder,
    ) -> Result<spotoken::TokensBuilder, Error> {
        use spotoken::core::endpoint::Provider;
        let mut provider = match (&self.token_url, &self.issuer) {
            (Some(token), issuer) => {
                let authorize = self.authorization_url.as_deref().ok_or_else(|| {
                    Error::Configuration(format!(
                        "token_url is set in {} but authorization_url is not; give both (or an issuer to discover)",
                        self.config_path.display()
                    ))
                })?;
                let p = Provider::explicit(authorize, token, &self.api_url)?;
                match issuer {
                    Some(i) => p.with_issuer(i),
                    None => p,
                }
            }
            (None, Some(issuer)) => return Ok(b.issuer(issuer, &self.api_url)),
            (None, None) => Provider::spotify_like(&self.accounts_url, &self.api_url)?,
        };
        if let Some(r) = &self.revocation_url {
            provider = provider.with_revocation(r)?;
        }
        if let Some(d) = &self.device_authorization_url {
            provider = provider.with_device_authorization(d)?;
        }
        Ok(b.provider(provider))
    }

    /// The engine for commands that manage stored rows (logout, rekey,
    /// daemon, accounts): they work even when no client id is configured,
    /// since the engine refreshes and revokes each account with the client id
    /// it was logged in with (the placeholder id is never sent).
    pub(crate) fn tokens_for_logout(&self) -> Result<spotoken::Tokens, Error> {
        if self.client_id.is_some()
            || spotoken::store::Sqlite::load_blocking(&self.store_path, &self.account)
                .ok()
                .flatten()
                .is_some()
        {
            return self.tokens();
        }
        let mut r = self.clone();
        r.client_id = Some("unknown-client".into());
        r.tokens()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "AQDxJ3k9_Lq-7rVbN0pZ2sWcT8yHfGmUe4iKoA";

    #[test]
    fn a_config_error_never_quotes_a_secret_on_the_bad_line() {
        for text in [
            format!("client_secret = \"{SECRET}\"\n"),
            format!("client_id = \"cid\"\n[serve]\ndatabase_url = \"postgres://u:{SECRET}@db/x\n"),
            format!("[serve]\nthreads = \"{SECRET}\"\n"),
        ] {
            let e = parse_config(&text, Path::new("/h/config.toml")).expect_err("invalid");
            let s = e.to_string();
            assert!(!s.contains(SECRET), "{s}");
            assert!(s.contains("/h/config.toml is not valid (line "), "{s}");
        }
        let e = parse_config("\nclient_id = 1\n", Path::new("c.toml")).expect_err("invalid");
        assert!(e.to_string().contains("(line 2, column 13)"), "{e}");
    }

    #[test]
    fn a_written_config_reads_back_the_same() {
        let cfg = ConfigFile {
            client_id: Some("cid \"quoted\" \\ tab\t".into()),
            notify_cmd: Some("notify-send 'spotoken' \"$ACCOUNT\"\n".into()),
            serve: Some(ServeFile {
                allow_prefixes: Some(vec!["v1/me".into(), String::new()]),
                threads: Some(4),
                ..ServeFile::default()
            }),
            ..ConfigFile::default()
        };
        let text = toml::to_string(&cfg).expect("serializes");
        let back = parse_config(&text, Path::new("c.toml")).expect("reads back");
        assert_eq!(format!("{back:?}"), format!("{cfg:?}"));
    }
}
