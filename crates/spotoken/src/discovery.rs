//! Which provider an account's tokens belong to, and where its endpoints are.
//!
//! spotoken defaults to Spotify, but any OAuth 2.0 provider can be named by
//! its issuer: the endpoints then come from its RFC 8414 discovery document,
//! fetched here and checked by the pure [`spotoken_core::discovery`]. Each
//! account remembers its issuer, so a store can hold accounts of several
//! providers and each is refreshed where it was issued.
//!
//! Discovery is lazy: nothing is fetched until a request needs an endpoint,
//! so answering from a cached access token (`spotoken token`'s common case)
//! costs no round trip. Documents are kept in memory for as long as their
//! `Cache-Control` allows and dropped when a request to one of their
//! endpoints fails at the network level, so the next use fetches them again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CACHE_CONTROL};
use spotoken_core::discovery::{self, same_issuer};
use spotoken_core::endpoint::{Provider, SPOTIFY_ACCOUNTS_URL, parse_endpoint};
use url::Url;

use crate::{Error, http};
use spotoken_core::sync::LockUnpoisoned as _;

/// Fetches and checks `issuer`'s discovery document; `api_base` is the
/// resource API the tokens are for (a document does not say).
///
/// ```no_run
/// # async fn demo() -> Result<(), spotoken::Error> {
/// let provider = spotoken::discover("https://id.example.com", "https://api.example.com").await?;
/// let tokens = spotoken::Tokens::builder().provider(provider);
/// # Ok(()) }
/// ```
pub async fn discover(issuer: &str, api_base: &str) -> Result<Provider, Error> {
    let client = http::client(Duration::from_secs(30))?;
    let api = parse_endpoint(api_base, "API URL")?;
    fetch(&client, issuer, &api).await.map(|(p, _)| p)
}

/// Tries RFC 8414's location, then OpenID Connect's; returns the provider and
/// how long the answer may be reused.
async fn fetch(
    client: &reqwest::Client,
    issuer: &str,
    api_base: &Url,
) -> Result<(Provider, Duration), Error> {
    let mut last = None;
    for url in discovery::metadata_urls(issuer)? {
        let answer = http::send(client.get(url.clone()).header(ACCEPT, "application/json")).await?;
        if answer.status == 200 {
            let provider = discovery::parse_metadata(issuer, &answer.body, api_base)?;
            let ttl = discovery::cache_lifetime(
                answer
                    .headers
                    .get(CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok()),
            );
            tracing::debug!(issuer, %url, ttl_secs = ttl.as_secs(), "discovered the provider");
            return Ok((provider, ttl));
        }
        last = Some((url, answer.status));
    }
    let (url, status) = last.ok_or_else(|| Error::Internal("no discovery URL".into()))?;
    if status >= 500 || status == 429 {
        return Err(Error::temporary(
            format!("the discovery document of {issuer} is unavailable (HTTP {status} from {url})"),
            None,
        ));
    }
    Err(Error::Configuration(format!(
        "{issuer} publishes no discovery document (HTTP {status} from {url} and the RFC 8414 location); \
         give its endpoints instead (authorization_url, token_url)"
    )))
}

/// Where the configured provider comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Endpoints known up front (Spotify, an emulator, explicit URLs).
    Fixed(Box<Provider>),
    /// An issuer to discover on first use.
    Issuer { issuer: String, api_base: Url },
}

struct Entry {
    provider: Provider,
    until: Instant,
}

/// The configured provider and every discovered one, cached.
pub(crate) struct Providers {
    source: Source,
    cache: Mutex<HashMap<String, Entry>>,
}

impl Providers {
    pub(crate) fn new(source: Source) -> Self {
        Self {
            source,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The configured issuer, if any (what a new login stores).
    pub(crate) fn configured_issuer(&self) -> Option<&str> {
        match &self.source {
            Source::Fixed(p) => p.issuer.as_deref(),
            Source::Issuer { issuer, .. } => Some(issuer),
        }
    }

    /// The configured provider when known without a fetch: fixed, or
    /// discovered earlier in this process (even if its cache time is over).
    pub(crate) fn known(&self) -> Option<Provider> {
        match &self.source {
            Source::Fixed(p) => Some((**p).clone()),
            Source::Issuer { issuer, .. } => self
                .lock()
                .get(issuer.trim_end_matches('/'))
                .map(|e| e.provider.clone()),
        }
    }

    pub(crate) fn api_base(&self) -> &Url {
        match &self.source {
            Source::Fixed(p) => &p.api_base,
            Source::Issuer { api_base, .. } => api_base,
        }
    }

    /// The configured provider, discovering it if need be.
    pub(crate) async fn configured(&self, client: &reqwest::Client) -> Result<Provider, Error> {
        match &self.source {
            Source::Fixed(p) => Ok((**p).clone()),
            Source::Issuer { issuer, .. } => self.discovered(client, issuer).await,
        }
    }

    /// The provider an account stored with `issuer` belongs to: the
    /// configured one for `None` or its own issuer, Spotify's preset for
    /// Spotify, else the issuer's discovery document.
    pub(crate) async fn for_issuer(
        &self,
        client: &reqwest::Client,
        issuer: Option<&str>,
    ) -> Result<Provider, Error> {
        match issuer {
            None => self.configured(client).await,
            Some(i) if self.configured_issuer().is_some_and(|c| same_issuer(c, i)) => {
                self.configured(client).await
            }
            Some(i) if same_issuer(i, SPOTIFY_ACCOUNTS_URL) => {
                let mut p = Provider::spotify()?;
                p.api_base = self.api_base().clone();
                Ok(p)
            }
            Some(i) => self.discovered(client, i).await,
        }
    }

    async fn discovered(&self, client: &reqwest::Client, issuer: &str) -> Result<Provider, Error> {
        let key = issuer.trim_end_matches('/').to_owned();
        if let Some(e) = self.lock().get(&key)
            && e.until > Instant::now()
        {
            return Ok(e.provider.clone());
        }
        let (provider, ttl) = fetch(client, issuer, self.api_base()).await?;
        self.lock().insert(
            key,
            Entry {
                provider: provider.clone(),
                until: Instant::now() + ttl,
            },
        );
        Ok(provider)
    }

    /// Drops a discovered document after a request to one of its endpoints
    /// failed, so the next use fetches it again (the provider may have moved).
    pub(crate) fn forget(&self, issuer: Option<&str>) {
        if let Some(i) = issuer.or(match &self.source {
            Source::Issuer { issuer, .. } => Some(issuer.as_str()),
            Source::Fixed(_) => None,
        }) {
            self.lock().remove(i.trim_end_matches('/'));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cache.lock_unpoisoned()
    }
}

impl crate::Tokens {
    /// The endpoints of the provider an account with `issuer` belongs to.
    pub(crate) async fn provider_for(&self, issuer: Option<&str>) -> Result<Provider, Error> {
        self.inner
            .providers
            .for_issuer(&self.inner.http, issuer)
            .await
    }

    /// The token endpoint for an account with `issuer`.
    pub(crate) async fn token_url_for(&self, issuer: Option<&str>) -> Result<Url, Error> {
        Ok(self.provider_for(issuer).await?.token_url)
    }

    /// Forgets a discovered document after one of its endpoints failed.
    pub(crate) fn forget_provider(&self, issuer: Option<&str>) {
        self.inner.providers.forget(issuer);
    }

    /// The configured provider without a fetch, or a configuration error
    /// saying to discover it first.
    pub(crate) fn known_provider(&self) -> Result<Provider, Error> {
        self.inner.providers.known().ok_or_else(|| {
            Error::Configuration(format!(
                "the provider {} has not been discovered yet: call Tokens::discover_provider first",
                self.inner.providers.configured_issuer().unwrap_or("?")
            ))
        })
    }
}
