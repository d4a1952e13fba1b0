//! What a `spotoken serve` instance is configured with, checked once at start.

use std::time::Duration;

use spotoken::Error;
use spotoken::core::scope::Scopes;
use url::Url;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The origin browsers use, e.g. `http://127.0.0.1:8080` or `https://app.example`.
    pub public_url: Url,
    /// Where the provider sends the browser back (default `{public_url}/auth/callback`).
    pub redirect_uri: String,
    /// Scopes requested at login.
    pub scopes: Scopes,
    /// API path prefixes the proxy forwards (without a leading slash), e.g. `v1/`.
    pub allowed_prefixes: Vec<String>,
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// How long a started login may take.
    pub login_ttl: Duration,
    /// Largest request body the proxy forwards.
    pub max_body: usize,
    /// Upstream timeout for proxied requests.
    pub upstream_timeout: Duration,
    /// How long an instance trusts its in-memory copy of a session.
    pub session_cache_ttl: Duration,
    /// How long a connection may take to send a request's headers, counted
    /// from when it opens or its previous response was written: closes idle
    /// keep-alive connections and clients that trickle headers (slowloris).
    pub header_read_timeout: Duration,
    /// Serve the demo page at `/`.
    pub demo: bool,
    /// Bounds on logins started by unauthenticated clients.
    pub login_limits: crate::limits::LoginLimits,
    /// Serve `/metrics` on the main address (false when it has its own,
    /// `--metrics-bind`).
    pub metrics_on_main: bool,
    /// The built app's files, served for every path that is not ours
    /// (`--static DIR`).
    pub static_dir: Option<std::path::PathBuf>,
    /// The team's own server, reached for every path that is not ours
    /// (`--app-upstream URL`).
    pub app_upstream: Option<Url>,
    /// A session unused for this long ends, whatever its TTL says
    /// (`--session-idle`); `None`: only the TTL ends it.
    pub session_idle: Option<Duration>,
    /// The session cookie's `SameSite` attribute.
    pub same_site: crate::cookies::SameSite,
    /// Peers whose `X-Forwarded-For` names the client (a TLS-terminating
    /// proxy in front, `--trusted-proxy`); from anyone else it is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A PEM file of CA certificates the Web API upstream may also chain to,
    /// besides the system's roots (`--upstream-ca`: tests and benchmarks
    /// against the emulator's TLS port). Never a way to skip verification.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Speak HTTP/2 to the Web API (`--upstream-http2`; HTTPS only) through
    /// hyper's client, instead of HTTP/1.1 over the proxy's own pool.
    pub upstream_http2: bool,
}

impl ServerConfig {
    /// Defaults for a public URL.
    pub fn new(public_url: &str) -> Result<Self, Error> {
        let public_url = spotoken::core::endpoint::parse_endpoint(public_url, "public URL")?;
        if public_url.path() != "/" || public_url.query().is_some() {
            return Err(Error::Configuration(format!(
                "the public URL {public_url} must be an origin (scheme, host, port) without a path: \
                 __Host- cookies need Path=/"
            )));
        }
        let redirect_uri = format!("{}auth/callback", public_url.as_str());
        Ok(Self {
            public_url,
            redirect_uri,
            scopes: Scopes::parse(spotoken::core::scope::DEFAULT_SCOPES),
            allowed_prefixes: vec!["v1/".into()],
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            login_ttl: Duration::from_secs(600),
            max_body: 1024 * 1024,
            upstream_timeout: Duration::from_secs(30),
            session_cache_ttl: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            demo: false,
            login_limits: crate::limits::LoginLimits::default(),
            metrics_on_main: true,
            static_dir: None,
            app_upstream: None,
            session_idle: None,
            same_site: crate::cookies::SameSite::Lax,
            trusted_proxies: Vec::new(),
            upstream_ca: None,
            upstream_http2: false,
        })
    }

    /// The public URL's origin as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}
