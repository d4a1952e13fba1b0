//! A Web API client that never makes its caller think about tokens.
//!
//! Each request carries a fresh bearer token. On any 401 (whatever the message
//! says: Spotify's text changes) it refreshes once and retries once; many
//! requests rejected at once cause one refresh. On 429 it waits `Retry-After`
//! when that is within the caller's cap, else fails at once with a temporary
//! error that states the wait. A `403 Insufficient client scope` becomes an
//! insufficient-scope error naming the missing scope, from the endpoint table;
//! the 403s that no login fixes (a user off a development-mode app's
//! allowlist, an app owner without Premium, both sent as plain text, and a
//! free user's `PREMIUM_REQUIRED`) become configuration errors saying so.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use spotoken_core::scope::{self, Scopes};
use spotoken_core::secret::AccessToken;

use crate::http;
#[cfg(not(feature = "internals"))]
use crate::http::Answer;
use crate::{Error, Tokens};

/// How many 429s in a row a request sits through.
const MAX_RATE_LIMIT_RETRIES: u32 = 3;

/// The Web API for one account.
#[derive(Debug, Clone)]
pub struct Api {
    tokens: Tokens,
    account: String,
    max_wait: Duration,
}

/// A Web API answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

fn to_json<B: serde::Serialize + ?Sized>(body: &B) -> Result<Bytes, Error> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("cannot serialize the request body: {e}")))
}

impl ApiResponse {
    /// This response if its status is 2xx, else a protocol error naming it.
    fn success(self, path: &str) -> Result<Self, Error> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(Error::protocol(
                Some(self.status),
                format!("{path} answered HTTP {}", self.status),
                &self.body,
            ))
        }
    }

    /// Deserializes the JSON body.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::protocol(
                Some(self.status),
                format!("the API answered with unexpected JSON: {e}"),
                &self.body,
            )
        })
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The API's own error message (`{"error":{"message":...}}`), if any.
    pub fn error_message(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.pointer("/error/message")
            .and_then(|m| m.as_str())
            .map(spotoken_core::redact)
    }
}

impl Tokens {
    /// The Web API for `account`.
    pub fn api(&self, account: &str) -> Api {
        Api {
            tokens: self.clone(),
            account: account.to_owned(),
            max_wait: self.inner.backoff.max_wait,
        }
    }
}

impl Api {
    /// Sets the longest `Retry-After` this client sits through (default: the backoff's `max_wait`).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<ApiResponse, Error> {
        self.request(Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Bytes) -> Result<ApiResponse, Error> {
        self.request(Method::POST, path, Some(body), &[]).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: Bytes) -> Result<ApiResponse, Error> {
        self.request(Method::PUT, path, Some(body), &[]).await
    }

    /// `GET path`, its JSON body deserialized; any answer but 2xx is an error.
    ///
    /// ```no_run
    /// # async fn demo(tokens: spotoken::Tokens) -> Result<(), spotoken::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Me { id: String }
    /// let me: Me = tokens.api("default").get_json("/v1/me").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.get(path).await?.success(path)?.json()
    }

    /// `POST path` with `body` serialized as JSON.
    pub async fn post_json<B: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<ApiResponse, Error> {
        self.post(path, to_json(body)?).await
    }

    /// `PUT path` with `body` serialized as JSON.
    pub async fn put_json<B: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<ApiResponse, Error> {
        self.put(path, to_json(body)?).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<ApiResponse, Error> {
        self.request(Method::DELETE, path, None, &[]).await
    }

    /// Any request. Non-2xx answers other than those described in the module
    /// docs come back as responses for the caller to judge.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(String, String)],
    ) -> Result<ApiResponse, Error> {
        let url = spotoken_core::endpoint::api_url(self.tokens.api_base(), path)?;
        let mut token = self.tokens.access_token(&self.account).await?;
        let mut refreshed = false;
        let mut rate_limited = 0;
        loop {
            let b = self.build(&method, &url, &token, headers, body.as_ref())?;
            let answer = http::send(b).await?;
            match answer.status {
                401 if !refreshed => {
                    tracing::debug!(account = %self.account, "API answered 401; refreshing once");
                    match self
                        .tokens
                        .refresh_after_rejection(&self.account, &token)
                        .await?
                    {
                        Some(fresh) => token = fresh,
                        None => return Err(refused_moments_old(&method, path)),
                    }
                    refreshed = true;
                }
                429 => {
                    let wait = answer.retry_after.unwrap_or(RATE_LIMIT_WAIT_UNSAID);
                    rate_limited += 1;
                    if wait > self.max_wait || rate_limited > MAX_RATE_LIMIT_RETRIES {
                        return Err(classify(&answer, method.as_str(), path, &Scopes::default()));
                    }
                    tracing::warn!(
                        wait_s = wait.as_secs_f64(),
                        "rate limited by the Web API; waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
                401 | 403 => {
                    let granted = self
                        .tokens
                        .granted_scopes(&self.account)
                        .await
                        .unwrap_or_default();
                    return Err(naming(
                        &self.account,
                        classify(&answer, method.as_str(), path, &granted),
                    ));
                }
                _ => {
                    return Ok(ApiResponse {
                        status: answer.status,
                        headers: answer.headers,
                        body: answer.body,
                    });
                }
            }
        }
    }

    /// One attempt's request: the caller's headers (never its
    /// `Authorization`), the bearer, and the body, JSON unless said otherwise.
    fn build(
        &self,
        method: &Method,
        url: &url::Url,
        token: &AccessToken,
        headers: &[(String, String)],
        body: Option<&Bytes>,
    ) -> Result<reqwest::RequestBuilder, Error> {
        let mut b = self
            .tokens
            .inner
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token.expose());
        for (k, v) in headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| Error::Configuration(format!("'{k}' is not a valid header name")))?;
            if name == reqwest::header::AUTHORIZATION {
                continue;
            }
            let value = HeaderValue::try_from(v.as_str()).map_err(|_| {
                Error::Configuration(format!("the value of header '{k}' is not valid"))
            })?;
            b = b.header(name, value);
        }
        if let Some(body) = body {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                b = b.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            b = b.body(body.clone());
        }
        Ok(b)
    }
}

/// A 429 without `Retry-After` is waited out this long: Spotify always says,
/// so this is for other servers, and short enough to stay under the cap.
const RATE_LIMIT_WAIT_UNSAID: Duration = Duration::from_secs(1);

/// The error for a 401 to a token obtained moments ago: nothing says the
/// grant ended (that shows at the next refresh), so this is a failure to try
/// again after the interval between 401-driven refreshes.
fn refused_moments_old(method: &Method, path: &str) -> Error {
    let wait = Duration::from_secs(crate::engine::REFRESH_AFTER_401_INTERVAL_SECS.unsigned_abs());
    Error::temporary(
        format!(
            "the Web API refused an access token obtained moments ago \
             (HTTP 401 on {} {path}); it is refreshed at the next 401 \
             after a minute",
            method.as_str()
        ),
        Some(wait),
    )
}

/// `e`, naming `account` if it is about authorization (the classifier below
/// does not know the account).
fn naming(account: &str, mut e: Error) -> Error {
    if let Error::AuthorizationNeeded { account: a, .. } = &mut e {
        account.clone_into(a);
    }
    e
}

/// `classify` for the fuzz targets (with the `internals` feature).
#[cfg(feature = "internals")]
pub fn classify_api_error(answer: &Answer, method: &str, path: &str, granted: &Scopes) -> Error {
    classify(answer, method, path, granted)
}

/// An answer as the HTTP layer reads it (with the `internals` feature).
#[cfg(feature = "internals")]
pub use crate::http::Answer;

/// Turns the Web API's 401/403/429 into the taxonomy.
pub(crate) fn classify(answer: &Answer, method: &str, path: &str, granted: &Scopes) -> Error {
    let json = serde_json::from_slice::<serde_json::Value>(&answer.body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.pointer(&format!("/error/{name}")))
            .and_then(|m| m.as_str())
            .map(spotoken_core::redact)
    };
    // Some 403s are plain text (the allowlist, the owner's Premium): their
    // text is the message.
    let message = field("message").unwrap_or_else(|| match &json {
        Some(_) => String::new(),
        None => spotoken_core::redact(String::from_utf8_lossy(&answer.body).trim()),
    });
    let reason = field("reason").unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let endpoint = format!("{method} {}", path.split('?').next().unwrap_or(path));
    match answer.status {
        // By status alone: Spotify's 401 text has changed and will again.
        401 => Error::AuthorizationNeeded {
            account: String::new(),
            reason: spotoken_core::ReauthReason::Flagged(format!(
                "the Web API rejected a freshly refreshed token ({message})"
            )),
        },
        403 if lower.contains("not registered") || lower.contains("not approved") => {
            Error::Configuration(format!(
                "this Spotify user is not on the app's allowlist (development mode allows 5 users): add them under \
                 User Management in the Spotify Developer Dashboard; logging in again does not help ({message})"
            ))
        }
        403 if lower.contains("premium subscription required for the owner") => {
            Error::Configuration(format!(
                "the Spotify account that owns this app (client id) has no Premium subscription, which a \
                 development-mode app needs; logging in again does not help ({message})"
            ))
        }
        403 if reason == "PREMIUM_REQUIRED" => Error::Configuration(format!(
            "{endpoint} needs a Spotify Premium account, and this user has none ({message})"
        )),
        403 if lower.contains("scope") => Error::InsufficientScope {
            endpoint,
            missing: scope::missing_for(method, path, granted),
        },
        429 => {
            let reason = if reason.is_empty() {
                reason
            } else {
                format!(", {reason}")
            };
            Error::RateLimited {
                by: spotoken_core::RateLimiter::WebApi,
                reason: format!("HTTP 429{reason}"),
                retry_after: answer.retry_after,
            }
        }
        s => Error::protocol(Some(s), format!("{endpoint} failed"), &answer.body),
    }
}
