//! Where the provider lives, and the rule that plain `http://` is refused for
//! every endpoint except loopback addresses (invariant 6 in docs/ARCHITECTURE.md).

use url::Url;

use crate::error::Error;

/// Spotify's Accounts service.
pub const SPOTIFY_ACCOUNTS_URL: &str = "https://accounts.spotify.com";
/// Spotify's Web API.
pub const SPOTIFY_API_URL: &str = "https://api.spotify.com";
/// Where a Spotify user removes an app's access (Spotify has no revocation endpoint).
pub const SPOTIFY_APPS_PAGE: &str = "https://www.spotify.com/account/apps/";

/// The provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The issuer identifier (RFC 8414), which an account remembers so that
    /// it is refreshed where it was issued. `None` for endpoints given
    /// explicitly without one (such as an emulator's).
    pub issuer: Option<String>,
    /// The authorization endpoint.
    pub authorize_url: Url,
    /// The token endpoint.
    pub token_url: Url,
    /// An RFC 7009 revocation endpoint, where the provider has one (Spotify does not).
    pub revocation_url: Option<Url>,
    /// An RFC 8628 device authorization endpoint, where the provider has one.
    pub device_authorization_url: Option<Url>,
    /// Base of the resource API (`/v1/...` is appended).
    pub api_base: Url,
}

impl Provider {
    /// Spotify's endpoints derived from an Accounts base and an API base, with
    /// Spotify's paths (`/authorize`, `/api/token`). Both must be HTTPS or loopback.
    pub fn spotify_like(accounts: &str, api: &str) -> Result<Self, Error> {
        let accounts = parse_endpoint(accounts, "accounts URL")?;
        let api_base = parse_endpoint(api, "API URL")?;
        let is_spotify = accounts.as_str().trim_end_matches('/') == SPOTIFY_ACCOUNTS_URL;
        Ok(Self {
            issuer: is_spotify.then(|| SPOTIFY_ACCOUNTS_URL.to_owned()),
            authorize_url: join(&accounts, "authorize")?,
            token_url: join(&accounts, "api/token")?,
            revocation_url: None,
            device_authorization_url: None,
            api_base,
        })
    }

    /// Spotify itself.
    pub fn spotify() -> Result<Self, Error> {
        Self::spotify_like(SPOTIFY_ACCOUNTS_URL, SPOTIFY_API_URL)
    }

    /// Endpoints given one by one (`authorization_url`, `token_url`, ...), for
    /// a provider without a discovery document. Each is checked like the others.
    pub fn explicit(authorize: &str, token: &str, api: &str) -> Result<Self, Error> {
        Ok(Self {
            issuer: None,
            authorize_url: parse_endpoint(authorize, "authorization URL")?,
            token_url: parse_endpoint(token, "token URL")?,
            revocation_url: None,
            device_authorization_url: None,
            api_base: parse_endpoint(api, "API URL")?,
        })
    }

    /// Whether this is Spotify's Accounts service or one built like it (an
    /// emulator): Spotify's scope table and `/v1/me` apply.
    pub fn is_spotify_like(&self) -> bool {
        self.token_url.path().ends_with("/api/token")
            && self
                .issuer
                .as_deref()
                .is_none_or(|i| i == SPOTIFY_ACCOUNTS_URL)
    }

    /// A short name for `spotoken status`: the issuer, else the token endpoint.
    pub fn name(&self) -> String {
        match &self.issuer {
            Some(i) if i == SPOTIFY_ACCOUNTS_URL => "spotify".to_owned(),
            Some(i) => i.clone(),
            None => self.token_url.to_string(),
        }
    }

    /// Adds an RFC 8628 device authorization endpoint (checked like the others).
    pub fn with_device_authorization(mut self, url: &str) -> Result<Self, Error> {
        self.device_authorization_url = Some(parse_endpoint(url, "device authorization URL")?);
        Ok(self)
    }

    /// Names the issuer these endpoints belong to (stored with each account).
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.issuer = Some(issuer.to_owned());
        self
    }

    /// Adds an RFC 7009 revocation endpoint (checked like the others).
    pub fn with_revocation(mut self, url: &str) -> Result<Self, Error> {
        self.revocation_url = Some(parse_endpoint(url, "revocation URL")?);
        Ok(self)
    }

    /// The full URL of an API path such as `/v1/me` (a query string may follow).
    pub fn api_url(&self, path_and_query: &str) -> Result<Url, Error> {
        api_url(&self.api_base, path_and_query)
    }
}

/// The full URL of an API path under `api_base`, refusing anything that would
/// leave it (another origin, `..` above the base, backslashes).
pub fn api_url(api_base: &Url, path_and_query: &str) -> Result<Url, Error> {
    let not_under = || {
        Error::Configuration(format!(
            "'{path_and_query}' is not a path under the API base"
        ))
    };
    if path_and_query.starts_with("//")
        || path_and_query.contains("://")
        || path_and_query.contains('\\')
    {
        return Err(not_under());
    }
    let url = join(api_base, path_and_query.trim_start_matches('/'))?;
    if url.origin() != api_base.origin()
        || !url
            .path()
            .starts_with(api_base.path().trim_end_matches('/'))
    {
        return Err(not_under());
    }
    Ok(url)
}

fn join(base: &Url, path: &str) -> Result<Url, Error> {
    let mut b = base.clone();
    if !b.path().ends_with('/') {
        let p = format!("{}/", b.path());
        b.set_path(&p);
    }
    b.join(path).map_err(|e| {
        Error::Configuration(format!("cannot build a URL from {base} and {path}: {e}"))
    })
}

/// Parses an endpoint URL and applies the HTTPS rule.
pub fn parse_endpoint(s: &str, what: &str) -> Result<Url, Error> {
    let url = Url::parse(s)
        .map_err(|e| Error::Configuration(format!("the {what} '{s}' is not a URL: {e}")))?;
    check_secure(&url, what)?;
    Ok(url)
}

/// Refuses anything but `https://`, and `http://` to a loopback address.
pub fn check_secure(url: &Url, what: &str) -> Result<(), Error> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(Error::Configuration(format!(
            "the {what} {url} uses plain http://, which is allowed only for loopback addresses (127.0.0.1, [::1]); use https://"
        ))),
        other => Err(Error::Configuration(format!(
            "the {what} {url} has scheme '{other}'; only https:// (or http:// to loopback) is allowed"
        ))),
    }
}

/// Whether the URL's host is a loopback IP address.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Checks a redirect URI the way Spotify does: HTTPS, or loopback `http://` by
/// IP address; `localhost` is refused.
pub fn check_redirect_uri(s: &str) -> Result<Url, Error> {
    let url = Url::parse(s)
        .map_err(|e| Error::Configuration(format!("the redirect URI '{s}' is not a URL: {e}")))?;
    if url.host_str() == Some("localhost") {
        return Err(Error::Configuration(format!(
            "the redirect URI {s} uses 'localhost', which Spotify rejects; use http://127.0.0.1:PORT/... and register that"
        )));
    }
    check_secure(&url, "redirect URI")?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(parse_endpoint("https://accounts.spotify.com", "x").is_ok());
        assert!(parse_endpoint("http://127.0.0.1:1234", "x").is_ok());
        assert!(parse_endpoint("http://[::1]:1234", "x").is_ok());
        let e = parse_endpoint("http://accounts.spotify.com", "accounts URL").unwrap_err();
        assert!(e.to_string().contains("plain http://"), "{e}");
        assert!(parse_endpoint("http://10.0.0.1", "x").is_err());
        assert!(parse_endpoint("ftp://127.0.0.1", "x").is_err());
    }

    #[test]
    fn spotify_paths() {
        let p = Provider::spotify_like("http://127.0.0.1:9/", "http://127.0.0.1:9").expect("ok");
        assert_eq!(p.authorize_url.as_str(), "http://127.0.0.1:9/authorize");
        assert_eq!(p.token_url.as_str(), "http://127.0.0.1:9/api/token");
        assert_eq!(
            p.api_url("/v1/me?x=1").expect("ok").as_str(),
            "http://127.0.0.1:9/v1/me?x=1"
        );
        assert!(p.api_url("https://evil.example/v1/me").is_err());
        assert!(p.api_url("//evil.example/v1").is_err());
        let prefixed =
            Provider::spotify_like("https://h.example/accounts", "https://h.example/api")
                .expect("ok");
        assert_eq!(
            prefixed.token_url.as_str(),
            "https://h.example/accounts/api/token"
        );
    }

    #[test]
    fn redirect_uris_follow_spotify() {
        assert!(check_redirect_uri("http://127.0.0.1:8888/callback").is_ok());
        assert!(check_redirect_uri("http://localhost:8888/callback").is_err());
        assert!(check_redirect_uri("http://example.com/callback").is_err());
    }
}
