//! The one error taxonomy.
//!
//! Every failure a user can meet ends up as one of six kinds, each of which says
//! what to do next and maps to exactly one exit code and one HTTP status
//! (the README's exit codes): authorization needed (log in again), temporary (wait, with how
//! long if known), configuration (fix a setting), insufficient scope (log in with
//! a named scope added), protocol (the server said something we do not
//! understand; a redacted snippet is kept), internal (a bug or a broken machine).

use std::time::Duration;

use crate::wait::human_duration;

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The user must authorize again (`spotoken login`).
    AuthorizationNeeded,
    /// Try again later; the error may say when ([`Error::Temporary`] and
    /// [`Error::RateLimited`]).
    Temporary,
    /// A setting is wrong (client id, URL, key); no login fixes it.
    Configuration,
    /// Log in again with the named scopes added.
    InsufficientScope,
    /// The server answered something we do not understand.
    Protocol,
    /// A bug or a broken environment.
    Internal,
}

impl ErrorKind {
    /// The exit code the README documents: 1 unexpected, 2 configuration,
    /// 3 authorization needed, 4 temporary, 5 insufficient scope.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::AuthorizationNeeded => 3,
            ErrorKind::Temporary => 4,
            ErrorKind::Configuration => 2,
            ErrorKind::InsufficientScope => 5,
            ErrorKind::Protocol | ErrorKind::Internal => 1,
        }
    }

    /// The HTTP status the server answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::AuthorizationNeeded => 401,
            ErrorKind::Temporary => 503,
            ErrorKind::Configuration | ErrorKind::Internal => 500,
            ErrorKind::InsufficientScope => 403,
            ErrorKind::Protocol => 502,
        }
    }
}

/// Why the user has to authorize again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReauthReason {
    /// No tokens stored for this account.
    NotLoggedIn,
    /// The provider answered `invalid_grant` (revoked, expired, reused: a
    /// provider that detects reuse of a rotated refresh token revokes the
    /// whole grant, and every later refresh gets this too).
    InvalidGrant {
        /// The provider's `error_description`, if any.
        description: String,
    },
    /// The refresh token is past its lifetime (Spotify: six months after the
    /// original authorization).
    RefreshTokenExpired,
    /// A refresh reached the provider but its answer was lost (a timeout, a
    /// connection that broke after the request was sent); the provider rotated
    /// the refresh token, so the old one, presented again, was refused.
    LostRotation {
        /// The provider's `error_description` for the retry, if any.
        description: String,
    },
    /// The provider refused the authorization code of a login
    /// (`invalid_grant` to the code exchange: used already, expired, or
    /// issued for another client or redirect).
    CodeRejected {
        /// The provider's `error_description`, if any.
        description: String,
    },
    /// The user refused consent (`error=access_denied`).
    AccessDenied,
    /// The device code expired before the user approved (RFC 8628 `expired_token`).
    DeviceCodeExpired,
    /// The account was already flagged for a reason this version cannot
    /// name (the stored text), or the Web API rejected a freshly refreshed token.
    Flagged(String),
}

impl ReauthReason {
    /// The reason an account was flagged with, read back from its stored
    /// text (the store keeps [`Display`](std::fmt::Display)'s output): the
    /// typed reason when the text is one this version writes, else
    /// [`Flagged`](Self::Flagged) with the text.
    pub fn from_stored(text: &str) -> Self {
        const GRANT_EMPTY: &str = "the refresh token was rejected (invalid_grant)";
        const GRANT: &str = "the refresh token was rejected: invalid_grant (";
        const LOST: &str = "the answer to a refresh was lost after the provider had it";
        const LOST_END: &str = "and the old one was refused (invalid_grant";
        let typed = [
            ReauthReason::NotLoggedIn,
            ReauthReason::RefreshTokenExpired,
            ReauthReason::AccessDenied,
            ReauthReason::DeviceCodeExpired,
        ];
        if let Some(r) = typed.into_iter().find(|r| r.to_string() == text) {
            return r;
        }
        if text == GRANT_EMPTY {
            return ReauthReason::InvalidGrant {
                description: String::new(),
            };
        }
        if let Some(d) = text.strip_prefix(GRANT).and_then(|t| t.strip_suffix(')')) {
            return ReauthReason::InvalidGrant {
                description: d.to_owned(),
            };
        }
        if text.starts_with(LOST)
            && let Some((_, tail)) = text.split_once(LOST_END)
            && let Some(tail) = tail.strip_suffix(')')
        {
            return ReauthReason::LostRotation {
                description: tail.strip_prefix(": ").unwrap_or(tail).to_owned(),
            };
        }
        ReauthReason::Flagged(text.to_owned())
    }
}

/// Who limited the rate of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimiter {
    /// The provider's token endpoint (a refresh or a code exchange).
    TokenEndpoint,
    /// The Web API.
    WebApi,
}

impl std::fmt::Display for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateLimiter::TokenEndpoint => "the token endpoint",
            RateLimiter::WebApi => "the Web API",
        })
    }
}

impl std::fmt::Display for ReauthReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReauthReason::NotLoggedIn => f.write_str("not logged in"),
            ReauthReason::InvalidGrant { description } if description.is_empty() => {
                f.write_str("the refresh token was rejected (invalid_grant)")
            }
            ReauthReason::InvalidGrant { description } => {
                write!(
                    f,
                    "the refresh token was rejected: invalid_grant ({description})"
                )
            }
            ReauthReason::RefreshTokenExpired => f.write_str(
                "the refresh token is past its lifetime (six months after authorization)",
            ),
            ReauthReason::LostRotation { description } => write!(
                f,
                "the answer to a refresh was lost after the provider had it (lost rotation): the \
                 refresh token it rotated to never arrived, and the old one was refused \
                 (invalid_grant{}{description})",
                if description.is_empty() { "" } else { ": " }
            ),
            ReauthReason::CodeRejected { description } => write!(
                f,
                "the authorization code was refused (used already or expired; invalid_grant{}{description})",
                if description.is_empty() { "" } else { ": " }
            ),
            ReauthReason::AccessDenied => f.write_str("access was denied on the consent screen"),
            ReauthReason::DeviceCodeExpired => {
                f.write_str("the device code expired before the user approved it (expired_token)")
            }
            ReauthReason::Flagged(r) => f.write_str(r),
        }
    }
}

/// spotoken's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user must authorize again.
    #[error(
        "authorization needed for account '{account}': {reason}; the account must log in again"
    )]
    AuthorizationNeeded {
        /// The account.
        account: String,
        /// Why.
        reason: ReauthReason,
    },
    /// A failure that may pass: network, 5xx, rate limit.
    #[error("temporary failure: {reason}{}", wait_suffix(*.retry_after))]
    Temporary {
        /// What happened.
        reason: String,
        /// How long the server asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// HTTP 429: too many requests; of kind [`ErrorKind::Temporary`].
    #[error("temporary failure: rate limited by {by}: {reason}{}", wait_suffix(*.retry_after))]
    RateLimited {
        /// Which server limited us.
        by: RateLimiter,
        /// What it said (the HTTP status and its reason, if any).
        reason: String,
        /// How long the server asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// A setting is wrong.
    #[error("configuration error: {0}")]
    Configuration(String),
    /// The token lacks a scope the endpoint needs.
    #[error("{}", insufficient_scope_message(.endpoint, .missing))]
    InsufficientScope {
        /// `METHOD /path`.
        endpoint: String,
        /// The scopes to add at the next login (empty if unknown).
        missing: Vec<String>,
    },
    /// The server answered something we do not understand.
    #[error("protocol error{}: {message}{}", status_part(*.status), snippet_part(.snippet))]
    Protocol {
        /// HTTP status, if there was a response.
        status: Option<u16>,
        /// What was wrong with it.
        message: String,
        /// A redacted, truncated snippet of the body.
        snippet: String,
    },
    /// A bug or a broken environment.
    #[error("internal error: {0}")]
    Internal(String),
}

fn wait_suffix(d: Option<Duration>) -> String {
    d.map(|d| format!("; try again in {}", human_duration(d)))
        .unwrap_or_default()
}

fn status_part(s: Option<u16>) -> String {
    s.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

fn snippet_part(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; server sent: {s}")
    }
}

fn insufficient_scope_message(endpoint: &str, missing: &[String]) -> String {
    if missing.is_empty() {
        format!(
            "insufficient scope for {endpoint}; log in again with the scopes this endpoint needs"
        )
    } else {
        let list = missing.join(", ");
        format!(
            "insufficient scope for {endpoint}: missing {list}; log in again with the granted scopes and these added"
        )
    }
}

impl Error {
    /// The kind, for matching and for exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::AuthorizationNeeded { .. } => ErrorKind::AuthorizationNeeded,
            Error::Temporary { .. } | Error::RateLimited { .. } => ErrorKind::Temporary,
            Error::Configuration(_) => ErrorKind::Configuration,
            Error::InsufficientScope { .. } => ErrorKind::InsufficientScope,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Shorthand for a temporary error.
    pub fn temporary(reason: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Error::Temporary {
            reason: reason.into(),
            retry_after,
        }
    }

    /// Shorthand for a protocol error with a body snippet (both redacted here:
    /// messages quote provider text).
    pub fn protocol(status: Option<u16>, message: impl Into<String>, body: &[u8]) -> Self {
        Error::Protocol {
            status,
            message: crate::redact::redact(&message.into()),
            snippet: redact_snippet(body),
        }
    }

    /// The wait the server asked for, if this is a temporary error that has one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Temporary { retry_after, .. } | Error::RateLimited { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The same temporary error with its reason rewritten (other kinds unchanged).
    pub(crate) fn map_reason(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            Error::Temporary {
                reason,
                retry_after,
            } => Error::Temporary {
                reason: f(&reason),
                retry_after,
            },
            Error::RateLimited {
                by,
                reason,
                retry_after,
            } => Error::RateLimited {
                by,
                reason: f(&reason),
                retry_after,
            },
            e => e,
        }
    }
}

/// Keys whose values are secrets wherever they appear in a body.
const SECRET_KEYS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "client_secret",
    "code_verifier",
];

/// A short, printable snippet of a body with token-like values removed: JSON
/// values under secret keys are replaced, and token-shaped runs are cut
/// ([`redact`](crate::redact::redact)), so that even a server echoing a token
/// does not leak it into a log line.
pub fn redact_snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let redacted = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut v) => {
            redact_json(&mut v);
            v.to_string()
        }
        Err(_) => text.into_owned(),
    };
    let out: String = crate::redact::redact(&redacted)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let collapsed: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > MAX {
        let cut: String = collapsed.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        collapsed
    }
}

fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) {
                    *val = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_json(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_map_to_documented_exit_codes_and_statuses() {
        let cases = [
            (ErrorKind::AuthorizationNeeded, 3, 401),
            (ErrorKind::Temporary, 4, 503),
            (ErrorKind::Configuration, 2, 500),
            (ErrorKind::InsufficientScope, 5, 403),
            (ErrorKind::Protocol, 1, 502),
            (ErrorKind::Internal, 1, 500),
        ];
        for (k, code, status) in cases {
            assert_eq!((k.exit_code(), k.http_status()), (code, status), "{k:?}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::AuthorizationNeeded {
            account: "default".into(),
            reason: ReauthReason::InvalidGrant {
                description: "Refresh token revoked".into(),
            },
        };
        let s = e.to_string();
        assert!(
            s.contains("Refresh token revoked") && s.contains("must log in again"),
            "{s}"
        );
        let e = Error::temporary("rate limited by Spotify", Some(Duration::from_secs(7980)));
        assert!(e.to_string().contains("2 h 13 min"), "{e}");
        let e = Error::InsufficientScope {
            endpoint: "GET /v1/me/playlists".into(),
            missing: vec!["playlist-read-private".into()],
        };
        assert!(e.to_string().contains("playlist-read-private"));
    }

    #[test]
    fn library_messages_never_name_a_command_of_ours() {
        // Inside someone else's app there is no `spotoken` command to run;
        // the CLI adds its own hints (issue 13).
        let errors = [
            Error::AuthorizationNeeded {
                account: "victim".into(),
                reason: ReauthReason::NotLoggedIn,
            },
            Error::InsufficientScope {
                endpoint: "GET /v1/me/playlists".into(),
                missing: vec!["playlist-read-private".into(), "user-top-read".into()],
            },
            Error::InsufficientScope {
                endpoint: "GET /v1/me/playlists".into(),
                missing: vec![],
            },
            Error::temporary("network: timed out", Some(Duration::from_secs(3))),
            Error::RateLimited {
                by: RateLimiter::TokenEndpoint,
                reason: "HTTP 429".into(),
                retry_after: None,
            },
            Error::Configuration("no client id configured".into()),
            Error::protocol(Some(500), "bad answer", b"{}"),
            Error::Internal("broken".into()),
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.contains("spotoken ") && !s.contains("--"), "{s}");
        }
    }

    #[test]
    fn a_stored_reason_reads_back_as_the_typed_reason() {
        let reasons = [
            ReauthReason::NotLoggedIn,
            ReauthReason::InvalidGrant {
                description: String::new(),
            },
            ReauthReason::InvalidGrant {
                description: "Refresh token revoked (by the user)".into(),
            },
            ReauthReason::RefreshTokenExpired,
            ReauthReason::LostRotation {
                description: String::new(),
            },
            ReauthReason::LostRotation {
                description: "Invalid refresh token".into(),
            },
            ReauthReason::AccessDenied,
            ReauthReason::DeviceCodeExpired,
            ReauthReason::Flagged("the Web API rejected a freshly refreshed token".into()),
        ];
        for r in reasons {
            assert_eq!(ReauthReason::from_stored(&r.to_string()), r);
        }
    }

    #[test]
    fn rate_limits_read_like_other_temporary_failures() {
        let e = Error::RateLimited {
            by: RateLimiter::WebApi,
            reason: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(7980)),
        };
        assert_eq!(e.kind(), ErrorKind::Temporary);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7980)));
        assert_eq!(
            e.to_string(),
            "temporary failure: rate limited by the Web API: HTTP 429; try again in 2 h 13 min"
        );
    }

    #[test]
    fn snippets_never_carry_tokens() {
        let body = br#"{"access_token":"BQabc","refresh_token":"AQxyz","error":"x"}"#;
        let s = redact_snippet(body);
        assert!(!s.contains("BQabc") && !s.contains("AQxyz"), "{s}");
        assert!(s.contains("\"error\":\"x\""));
        let s = redact_snippet(b"<html>token AQxyzAQxyzAQxyzAQxyzAQxyzAQxyz leaked</html>");
        assert!(!s.contains("AQxyzAQxyz"), "{s}");
        assert!(s.contains("leaked"));
    }

    proptest! {
        #[test]
        fn redaction_hides_any_long_token(prefix in "[ a-z<>]{0,40}", token in "[A-Za-z0-9_-]{24,80}", suffix in "[ a-z<>]{0,40}") {
            let body = format!("{prefix} {token} {suffix}");
            let s = redact_snippet(body.as_bytes());
            prop_assert!(!s.contains(&token));
            prop_assert!(s.chars().count() <= 201);
        }
    }
}
