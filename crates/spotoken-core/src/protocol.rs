//! OAuth 2.0 token protocol as pure functions: build the authorize URL and the
//! token requests, parse the token response strictly, and classify every error
//! answer into the taxonomy.
//!
//! The HTTP layer sends a [`FormRequest`] as it is and hands back the status, the
//! `Retry-After` header and the body; nothing here touches a socket. (We do not
//! use the `oauth2` crate's request path: its errors drop the HTTP status and
//! `Retry-After`, which our retry decisions need.)

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use url::Url;
use zeroize::Zeroizing;

use crate::error::{Error, ReauthReason};
use crate::scope::Scopes;
use crate::secret::{AccessToken, AuthorizationCode, ClientSecret, CodeVerifier, RefreshToken};

/// Access tokens are never trusted for longer than this, whatever `expires_in` says.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);
/// Assumed lifetime when a response has no `expires_in` (Spotify always sends 3600).
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// Who we are to the provider.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The client id.
    pub client_id: String,
    /// Present for a confidential client, which authenticates with HTTP Basic.
    pub client_secret: Option<ClientSecret>,
}

impl ClientAuth {
    /// A public PKCE client.
    pub fn public(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: None,
        }
    }
}

/// The parameters of an authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizeParams<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// Where the provider sends the browser back.
    pub redirect_uri: &'a str,
    /// Scopes to ask for.
    pub scopes: &'a Scopes,
    /// The anti-CSRF `state`, checked on the callback.
    pub state: &'a str,
    /// `BASE64URL(SHA256(verifier))`.
    pub code_challenge: &'a str,
    /// Ask Spotify to show the consent dialog even if already approved (switch user).
    pub show_dialog: bool,
}

/// The URL to send the browser to.
pub fn authorize_url(endpoint: &Url, p: &AuthorizeParams<'_>) -> Url {
    let mut u = endpoint.clone();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("client_id", p.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", p.redirect_uri)
            .append_pair("state", p.state)
            .append_pair("code_challenge_method", "S256")
            .append_pair("code_challenge", p.code_challenge);
        if !p.scopes.is_empty() {
            q.append_pair("scope", &p.scopes.to_wire());
        }
        if p.show_dialog {
            q.append_pair("show_dialog", "true");
        }
    }
    u
}

/// A form-encoded POST, ready to send. Its `Debug` shows only the URL.
pub struct FormRequest {
    /// Where to POST.
    pub url: Url,
    /// `application/x-www-form-urlencoded` body (contains secrets).
    pub body: Zeroizing<String>,
    /// The `Authorization` header value for a confidential client.
    pub authorization: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for FormRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormRequest")
            .field("url", &self.url.as_str())
            .field("body", &"[redacted]")
            .finish()
    }
}

pub(crate) fn form_request(url: &Url, client: &ClientAuth, pairs: &[(&str, &str)]) -> FormRequest {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let authorization = match &client.client_secret {
        Some(secret) => {
            // RFC 6749 §2.3.1: form-encode id and secret before Base64.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let raw = Zeroizing::new(format!(
                "{}:{}",
                enc(&client.client_id),
                enc(secret.expose())
            ));
            Some(Zeroizing::new(format!(
                "Basic {}",
                STANDARD.encode(raw.as_bytes())
            )))
        }
        None => {
            ser.append_pair("client_id", &client.client_id);
            None
        }
    };
    FormRequest {
        url: url.clone(),
        body: Zeroizing::new(ser.finish()),
        authorization,
    }
}

/// The code exchange (`grant_type=authorization_code`) with the PKCE verifier.
pub fn code_exchange_request(
    token_url: &Url,
    client: &ClientAuth,
    code: &AuthorizationCode,
    redirect_uri: &str,
    verifier: &CodeVerifier,
) -> FormRequest {
    form_request(
        token_url,
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
        ],
    )
}

/// A refresh (`grant_type=refresh_token`).
pub fn refresh_request(
    token_url: &Url,
    client: &ClientAuth,
    refresh_token: &RefreshToken,
) -> FormRequest {
    form_request(
        token_url,
        client,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ],
    )
}

/// An RFC 7009 revocation of a refresh token.
pub fn revocation_request(
    url: &Url,
    client: &ClientAuth,
    refresh_token: &RefreshToken,
) -> FormRequest {
    form_request(
        url,
        client,
        &[
            ("token", refresh_token.expose()),
            ("token_type_hint", "refresh_token"),
        ],
    )
}

/// A successful token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    /// The access token.
    pub access_token: AccessToken,
    /// Its lifetime, bounded to `(0, MAX_EXPIRES_IN]`.
    pub expires_in: Duration,
    /// A new refresh token, if the provider rotated it (Spotify in 2026: usually not).
    pub refresh_token: Option<RefreshToken>,
    /// The granted scopes, if the provider said.
    pub scope: Option<Scopes>,
}

/// What the HTTP layer saw.
#[derive(Debug, Clone, Copy)]
pub struct HttpAnswer<'a> {
    /// Status code.
    pub status: u16,
    /// Parsed `Retry-After`, if present.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: &'a [u8],
}

/// Parses a token endpoint answer: a [`TokenSet`] on 2xx, otherwise the
/// classified error. `account` names the account in authorization errors.
///
/// Strictness, documented: the body must be a JSON object; `access_token` must
/// be a non-empty string; `token_type` must be `Bearer` in any case; `expires_in`
/// may be a number or a numeric string, missing means 3600 s, zero, negative or
/// non-numeric is an error, more than a day is clamped to a day; an empty
/// `refresh_token` counts as absent; `scope` is split on spaces.
pub fn parse_token_answer(answer: HttpAnswer<'_>, account: &str) -> Result<TokenSet, Error> {
    if !(200..300).contains(&answer.status) {
        return Err(classify_token_error(answer, account));
    }
    let bad = |m: &str| {
        Error::protocol(
            Some(answer.status),
            format!("token response: {m}"),
            answer.body,
        )
    };
    let v: serde_json::Value = serde_json::from_slice(answer.body).map_err(|_| bad("not JSON"))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let access = obj
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing or empty access_token"))?;
    // RFC 6750's b64token: no spaces, no control characters. A token with a
    // line break would split the `Authorization` header it is sent in (and
    // any header a script builds from `spotoken token`).
    if !access.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("access_token holds characters a header cannot carry"));
    }
    match obj.get("token_type").and_then(|v| v.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(bad("token_type is not Bearer")),
        None => return Err(bad("missing token_type")),
    }
    let expires_in = match obj.get("expires_in") {
        None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
        Some(v) => {
            let secs = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
                .filter(|f| f.is_finite())
                .ok_or_else(|| bad("expires_in is not a number"))?;
            if secs < 1.0 {
                return Err(bad("expires_in is zero or negative"));
            }
            Duration::from_secs(secs.min(MAX_EXPIRES_IN.as_secs_f64()) as u64)
        }
    };
    let refresh_token = match obj.get("refresh_token") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        // RFC 6749's VSCHAR: printable ASCII.
        Some(serde_json::Value::String(s)) if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            return Err(bad(
                "refresh_token holds characters outside printable ASCII",
            ));
        }
        Some(serde_json::Value::String(s)) => Some(RefreshToken::new(s.clone())),
        Some(_) => return Err(bad("refresh_token is not a string")),
    };
    let scope = match obj.get("scope") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(Scopes::parse(s)),
        Some(_) => return Err(bad("scope is not a string")),
    };
    Ok(TokenSet {
        access_token: AccessToken::new(access),
        expires_in,
        refresh_token,
        scope,
    })
}

/// Classifies a non-2xx token endpoint answer.
pub fn classify_token_error(answer: HttpAnswer<'_>, account: &str) -> Error {
    let status = answer.status;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(answer.body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let code = field("error").map(|c| crate::redact::redact(&c));
    let description = crate::redact::redact(&field("error_description").unwrap_or_default());
    match code.as_deref() {
        Some("invalid_grant") => Error::AuthorizationNeeded {
            account: account.to_owned(),
            reason: ReauthReason::InvalidGrant {
                description: crate::error::redact_snippet(description.as_bytes()),
            },
        },
        Some(c @ ("invalid_client" | "unauthorized_client")) => Error::Configuration(format!(
            "the provider rejected the client ({c}: {description}); check the client id{}",
            if c == "invalid_client" {
                " and secret"
            } else {
                ""
            }
        )),
        Some(c @ ("slow_down" | "temporarily_unavailable" | "server_error")) => Error::temporary(
            format!("the provider answered {c} (HTTP {status})"),
            answer.retry_after,
        ),
        _ if status == 429 => {
            let reason = parsed
                .as_ref()
                .and_then(|v| v.pointer("/error/reason"))
                .and_then(|v| v.as_str())
                .map(|r| format!(", {}", crate::redact::redact(r)))
                .unwrap_or_default();
            Error::RateLimited {
                by: crate::error::RateLimiter::TokenEndpoint,
                reason: format!("HTTP 429{reason}"),
                retry_after: answer.retry_after,
            }
        }
        _ if status >= 500 || status == 408 => Error::temporary(
            format!("the provider failed (HTTP {status})"),
            answer.retry_after,
        ),
        Some(c) => Error::protocol(
            Some(status),
            format!("the token endpoint answered {c}: {description}"),
            answer.body,
        ),
        None => Error::protocol(
            Some(status),
            "unexpected answer from the token endpoint",
            answer.body,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(body: &str) -> Result<TokenSet, Error> {
        parse_token_answer(
            HttpAnswer {
                status: 200,
                retry_after: None,
                body: body.as_bytes(),
            },
            "a",
        )
    }

    fn err(status: u16, body: &str, retry: Option<u64>) -> Error {
        classify_token_error(
            HttpAnswer {
                status,
                retry_after: retry.map(Duration::from_secs),
                body: body.as_bytes(),
            },
            "a",
        )
    }

    #[test]
    fn parses_spotify_refresh_response_without_refresh_token() {
        let t = ok(r#"{"access_token":"BQx","token_type":"Bearer","expires_in":3600,"scope":"user-read-private"}"#)
            .expect("ok");
        assert_eq!(t.access_token.expose(), "BQx");
        assert_eq!(t.expires_in, Duration::from_secs(3600));
        assert!(t.refresh_token.is_none());
        assert!(t.scope.expect("scope").contains("user-read-private"));
    }

    #[test]
    fn strict_about_what_matters() {
        assert!(ok(r#"{"token_type":"Bearer"}"#).is_err());
        assert!(ok(r#"{"access_token":"","token_type":"Bearer"}"#).is_err());
        assert!(ok(r#"{"access_token":"x","token_type":"mac"}"#).is_err());
        assert!(ok(r#"{"access_token":"x","token_type":"bearer","expires_in":0}"#).is_err());
        assert!(ok(r#"{"access_token":"x","token_type":"bearer","expires_in":-5}"#).is_err());
        assert!(ok(r#"{"access_token":"x","token_type":"bearer","expires_in":"soon"}"#).is_err());
        assert!(ok("{\"access_token\":\"a\\r\\nX-Evil: 1\",\"token_type\":\"Bearer\"}").is_err());
        assert!(ok(r#"{"access_token":"a b","token_type":"Bearer"}"#).is_err());
        assert!(
            ok(r#"{"access_token":"a","token_type":"Bearer","refresh_token":"r\u0000"}"#).is_err()
        );
        assert!(ok(r#"{"access_token":"a","token_type":"Bearer","refresh_token":"r é"}"#).is_err());
        assert!(ok("<html>").is_err());
        let t = ok(r#"{"access_token":"x","token_type":"BEARER","expires_in":"99999999","refresh_token":""}"#)
            .expect("ok");
        assert_eq!(t.expires_in, MAX_EXPIRES_IN);
        assert!(t.refresh_token.is_none());
    }

    #[test]
    fn provider_text_in_every_token_error_is_redacted() {
        let token = "BQC7b1x0Zy9wVu8tSr7qPo";
        for body in [
            format!(r#"{{"error":"invalid_client","error_description":"bad secret {token}"}}"#),
            format!(r#"{{"error":"odd_error","error_description":"echo {token}"}}"#),
            format!(r#"{{"error":"{token}"}}"#),
            format!(r#"{{"error":{{"status":429,"reason":"{token}"}}}}"#),
        ] {
            let status = if body.contains("429") { 429 } else { 400 };
            let e = err(status, &body, None);
            assert!(!format!("{e} {e:?}").contains(token), "{e}");
        }
    }

    #[test]
    fn classifies_errors() {
        let e = err(
            400,
            r#"{"error":"invalid_grant","error_description":"Refresh token revoked"}"#,
            None,
        );
        assert!(
            matches!(&e, Error::AuthorizationNeeded { reason: ReauthReason::InvalidGrant { description }, .. } if description == "Refresh token revoked")
        );
        assert_eq!(
            err(
                400,
                r#"{"error":"invalid_client","error_description":"Invalid client"}"#,
                None
            )
            .kind(),
            crate::error::ErrorKind::Configuration
        );
        let e = err(
            429,
            r#"{"error":{"status":429,"message":"Too many requests","reason":"QUOTA_EXCEEDED"}}"#,
            Some(7200),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7200)));
        assert!(e.to_string().contains("QUOTA_EXCEEDED"));
        assert_eq!(
            err(502, "<html>Bad gateway</html>", None).kind(),
            crate::error::ErrorKind::Temporary
        );
        assert_eq!(
            err(400, r#"{"error":"slow_down"}"#, None).kind(),
            crate::error::ErrorKind::Temporary
        );
        assert_eq!(
            err(400, r#"{"error":"invalid_request"}"#, None).kind(),
            crate::error::ErrorKind::Protocol
        );
        assert_eq!(
            err(418, "teapot", None).kind(),
            crate::error::ErrorKind::Protocol
        );
    }

    #[test]
    fn public_client_id_in_body_confidential_in_basic() {
        let url = Url::parse("https://a.example/api/token").expect("url");
        let r = refresh_request(
            &url,
            &ClientAuth::public("cid"),
            &RefreshToken::new("AQ r&t"),
        );
        assert_eq!(
            r.body.as_str(),
            "grant_type=refresh_token&refresh_token=AQ+r%26t&client_id=cid"
        );
        assert!(r.authorization.is_none());
        assert!(!format!("{r:?}").contains("AQ"));
        let conf = ClientAuth {
            client_id: "cid".into(),
            client_secret: Some(ClientSecret::new("s:x")),
        };
        let r = refresh_request(&url, &conf, &RefreshToken::new("rt"));
        assert!(!r.body.contains("client_id"));
        let header = r.authorization.expect("basic");
        let decoded = STANDARD
            .decode(header.trim_start_matches("Basic "))
            .expect("b64");
        assert_eq!(decoded, b"cid:s%3Ax");
    }

    #[test]
    fn authorize_url_has_every_parameter() {
        let scopes = Scopes::parse("user-read-private playlist-read-private");
        let u = authorize_url(
            &Url::parse("https://accounts.spotify.com/authorize").expect("url"),
            &AuthorizeParams {
                client_id: "cid",
                redirect_uri: "http://127.0.0.1:8888/callback",
                scopes: &scopes,
                state: "st",
                code_challenge: "ch",
                show_dialog: true,
            },
        );
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["scope"], "playlist-read-private user-read-private");
        assert_eq!(q["show_dialog"], "true");
        assert_eq!(q["state"], "st");
    }

    proptest! {
        #[test]
        fn parser_never_panics(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_token_answer(HttpAnswer { status, retry_after: None, body: &body }, "a");
        }

        #[test]
        fn any_valid_response_round_trips(at in "[A-Za-z0-9_-]{1,100}", exp in 1u64..100_000, rt in proptest::option::of("[A-Za-z0-9_-]{1,100}")) {
            let mut v = serde_json::json!({"access_token": at, "token_type": "Bearer", "expires_in": exp});
            if let Some(rt) = &rt { v["refresh_token"] = serde_json::json!(rt); }
            let t = parse_token_answer(HttpAnswer { status: 200, retry_after: None, body: v.to_string().as_bytes() }, "a").expect("valid");
            prop_assert_eq!(t.access_token.expose(), at.as_str());
            prop_assert_eq!(t.expires_in, Duration::from_secs(exp.min(MAX_EXPIRES_IN.as_secs())));
            prop_assert_eq!(t.refresh_token.map(|r| r.expose().to_owned()), rt);
        }

        #[test]
        fn error_bodies_never_panic_and_never_echo_long_tokens(code in "[a-z_]{0,20}", desc in "[A-Za-z0-9 ]{0,60}", status in 400u16..600) {
            let body = serde_json::json!({"error": code, "error_description": desc}).to_string();
            let e = classify_token_error(HttpAnswer { status, retry_after: None, body: body.as_bytes() }, "a");
            let _ = e.to_string();
        }
    }
}
