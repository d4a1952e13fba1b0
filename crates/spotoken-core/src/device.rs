//! The device authorization grant (RFC 8628) as pure functions and a small
//! state machine.
//!
//! A device without a usable browser asks the provider for a user code, shows
//! it with a verification URI, and polls the token endpoint until the user
//! approves on another device. How often to poll is the part that goes wrong:
//! `authorization_pending` keeps the interval, `slow_down` adds five seconds to
//! it for good, and a network failure backs off without ever polling faster
//! than the interval. [`DevicePoll`] makes those decisions from the outcome of
//! each poll and the current time (passed in), so every branch is tested
//! without a socket or a sleep; the library does the I/O and the waiting.

use std::time::Duration;

use url::Url;

use crate::error::{Error, ErrorKind, ReauthReason};
use crate::protocol::{
    ClientAuth, FormRequest, HttpAnswer, TokenSet, classify_token_error, form_request,
    parse_token_answer,
};
use crate::scope::Scopes;
use crate::secret::DeviceCode;

/// The grant type of the device flow's token requests.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The polling interval when the provider does not say (RFC 8628 §3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// What `slow_down` adds to the interval, for this and every later poll (§3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The longest wait after network failures (the interval itself may be longer).
pub const MAX_NETWORK_BACKOFF: Duration = Duration::from_secs(60);
/// Device codes are not trusted to live longer than this, whatever `expires_in` says.
pub const MAX_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(3600);

/// What the device authorization endpoint answered.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// The secret the device polls with.
    pub device_code: DeviceCode,
    /// What the user types at the verification URI.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: Url,
    /// The verification URI with the user code in it, if the provider gave one
    /// (what a QR code should hold).
    pub verification_uri_complete: Option<Url>,
    /// How long the codes live.
    pub expires_in: Duration,
    /// The polling interval the provider asked for.
    pub interval: Duration,
}

/// The request to the device authorization endpoint.
pub fn device_authorization_request(
    url: &Url,
    client: &ClientAuth,
    scopes: &Scopes,
) -> FormRequest {
    let wire = scopes.to_wire();
    let pairs: &[(&str, &str)] = if wire.is_empty() {
        &[]
    } else {
        &[("scope", &wire)]
    };
    form_request(url, client, pairs)
}

/// A poll of the token endpoint with the device code.
pub fn device_token_request(
    token_url: &Url,
    client: &ClientAuth,
    device_code: &DeviceCode,
) -> FormRequest {
    form_request(
        token_url,
        client,
        &[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code.expose()),
        ],
    )
}

/// Parses the device authorization answer. `verification_url` (Google's
/// pre-standard name) is accepted for `verification_uri`.
pub fn parse_device_authorization(answer: HttpAnswer<'_>) -> Result<DeviceAuthorization, Error> {
    if !(200..300).contains(&answer.status) {
        return Err(classify_token_error(answer, "(device login)"));
    }
    let bad = |m: &str| {
        Error::protocol(
            Some(answer.status),
            format!("device authorization response: {m}"),
            answer.body,
        )
    };
    let v: serde_json::Value = serde_json::from_slice(answer.body).map_err(|_| bad("not JSON"))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let text = |k: &str| {
        obj.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let device_code = text("device_code").ok_or_else(|| bad("no device_code"))?;
    let user_code = text("user_code").ok_or_else(|| bad("no user_code"))?;
    let uri = |s: &str| {
        Url::parse(s)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
    };
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .and_then(uri)
        .ok_or_else(|| bad("no usable verification_uri"))?;
    let verification_uri_complete = text("verification_uri_complete").and_then(uri);
    let seconds = |k: &str| -> Result<Option<u64>, Error> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .map(Some)
                .ok_or_else(|| bad(&format!("{k} is not a whole number of seconds"))),
        }
    };
    let expires_in = seconds("expires_in")?
        .filter(|s| *s > 0)
        .ok_or_else(|| bad("expires_in is missing or zero"))?;
    let interval = seconds("interval")?
        .map_or(DEFAULT_INTERVAL, Duration::from_secs)
        .max(Duration::from_secs(1));
    Ok(DeviceAuthorization {
        device_code: DeviceCode::new(device_code),
        user_code: user_code.to_owned(),
        verification_uri,
        verification_uri_complete,
        expires_in: Duration::from_secs(expires_in).min(MAX_DEVICE_CODE_LIFETIME),
        interval,
    })
}

/// What one poll of the token endpoint came to.
#[derive(Debug)]
pub enum PollAnswer {
    /// The user approved: the tokens.
    Tokens(TokenSet),
    /// `authorization_pending`: the user has not finished yet.
    Pending,
    /// `slow_down`: poll less often from now on.
    SlowDown,
    /// `access_denied`: the user refused.
    Denied,
    /// `expired_token`: the device code is no longer valid.
    Expired,
    /// A temporary failure (5xx, 429, a network error): try again later.
    Temporary(Error),
    /// Anything else: stop with this error.
    Failed(Error),
}

/// Classifies a token endpoint answer to a device code poll.
pub fn classify_poll(answer: HttpAnswer<'_>, account: &str) -> PollAnswer {
    if (200..300).contains(&answer.status) {
        return match parse_token_answer(answer, account) {
            Ok(set) => PollAnswer::Tokens(set),
            Err(e) => PollAnswer::Failed(e),
        };
    }
    let code = serde_json::from_slice::<serde_json::Value>(answer.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    match code.as_deref() {
        Some("authorization_pending") => PollAnswer::Pending,
        Some("slow_down") => PollAnswer::SlowDown,
        Some("access_denied") => PollAnswer::Denied,
        Some("expired_token") => PollAnswer::Expired,
        _ => {
            // By kind, not variant: a 429 is `RateLimited`, as temporary as a 503.
            let e = classify_token_error(answer, account);
            if e.kind() == ErrorKind::Temporary {
                PollAnswer::Temporary(e)
            } else {
                PollAnswer::Failed(e)
            }
        }
    }
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait this long, then poll again.
    PollIn(Duration),
    /// Stop with this error.
    Stop(Error),
}

/// The polling schedule of one device login.
#[derive(Debug, Clone)]
pub struct DevicePoll {
    interval: Duration,
    expires_at: i64,
    failures: u32,
    account: String,
}

impl DevicePoll {
    /// Starts polling for `auth`, received at `now` (unix seconds), for `account`.
    pub fn new(auth: &DeviceAuthorization, now: i64, account: &str) -> Self {
        Self {
            interval: auth.interval,
            expires_at: now.saturating_add(i64::try_from(auth.expires_in.as_secs()).unwrap_or(0)),
            failures: 0,
            account: account.to_owned(),
        }
    }

    /// The current polling interval (never shorter than the provider asked).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The wait before the first poll.
    pub fn first(&self, now: i64) -> Next {
        self.wait(self.interval, now)
    }

    /// Decides after a poll that did not return tokens.
    pub fn after(&mut self, answer: PollAnswer, now: i64) -> Next {
        match answer {
            PollAnswer::Pending => {
                self.failures = 0;
                self.wait(self.interval, now)
            }
            PollAnswer::SlowDown => {
                self.failures = 0;
                self.interval = self.interval.saturating_add(SLOW_DOWN_STEP);
                self.wait(self.interval, now)
            }
            PollAnswer::Temporary(e) => {
                self.failures = self.failures.saturating_add(1);
                // Double per failure, up to a minute, never below the interval;
                // a Retry-After longer than that is honoured too.
                let doubled = self
                    .interval
                    .saturating_mul(1u32 << self.failures.min(6))
                    .min(MAX_NETWORK_BACKOFF)
                    .max(self.interval);
                let wait = e.retry_after().map_or(doubled, |r| r.max(doubled));
                report_the_cause(self.wait(wait, now), e)
            }
            PollAnswer::Denied => Next::Stop(Error::AuthorizationNeeded {
                account: self.account.clone(),
                reason: ReauthReason::AccessDenied,
            }),
            PollAnswer::Expired => Next::Stop(self.expired()),
            PollAnswer::Failed(e) => Next::Stop(e),
            PollAnswer::Tokens(_) => Next::Stop(Error::Internal(
                "the device poll succeeded; there is nothing left to decide".into(),
            )),
        }
    }

    fn expired(&self) -> Error {
        Error::AuthorizationNeeded {
            account: self.account.clone(),
            reason: ReauthReason::DeviceCodeExpired,
        }
    }

    fn wait(&self, wait: Duration, now: i64) -> Next {
        let at = now.saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX));
        if at >= self.expires_at {
            Next::Stop(self.expired())
        } else {
            Next::PollIn(wait)
        }
    }
}

/// A temporary failure that outlives the device code is reported as what it
/// was, not as an expiry the user did not cause.
fn report_the_cause(next: Next, cause: Error) -> Next {
    match next {
        Next::Stop(Error::AuthorizationNeeded { .. }) => Next::Stop(cause),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auth(interval: u64, expires_in: u64) -> DeviceAuthorization {
        DeviceAuthorization {
            device_code: DeviceCode::new("dc"),
            user_code: "ABCD-EFGH".into(),
            verification_uri: Url::parse("https://id.example/device").expect("url"),
            verification_uri_complete: None,
            expires_in: Duration::from_secs(expires_in),
            interval: Duration::from_secs(interval),
        }
    }

    fn answer(status: u16, body: &str) -> PollAnswer {
        classify_poll(
            HttpAnswer {
                status,
                retry_after: None,
                body: body.as_bytes(),
            },
            "a",
        )
    }

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn pending_keeps_the_interval() {
        let mut p = DevicePoll::new(&auth(5, 600), 1000, "a");
        assert_eq!(p.first(1000), Next::PollIn(SECS(5)));
        assert_eq!(p.after(PollAnswer::Pending, 1005), Next::PollIn(SECS(5)));
        assert_eq!(p.after(PollAnswer::Pending, 1010), Next::PollIn(SECS(5)));
    }

    #[test]
    fn slow_down_adds_five_seconds_to_this_and_every_later_interval() {
        let mut p = DevicePoll::new(&auth(5, 600), 1000, "a");
        assert_eq!(p.after(PollAnswer::SlowDown, 1005), Next::PollIn(SECS(10)));
        assert_eq!(p.after(PollAnswer::Pending, 1015), Next::PollIn(SECS(10)));
        assert_eq!(p.after(PollAnswer::SlowDown, 1025), Next::PollIn(SECS(15)));
        assert_eq!(p.after(PollAnswer::Pending, 1040), Next::PollIn(SECS(15)));
        assert_eq!(p.interval(), SECS(15));
    }

    #[test]
    fn network_errors_back_off_and_never_shorten_the_interval() {
        let mut p = DevicePoll::new(&auth(5, 3600), 0, "a");
        let net = || PollAnswer::Temporary(Error::temporary("connection refused", None));
        assert_eq!(p.after(net(), 5), Next::PollIn(SECS(10)));
        assert_eq!(p.after(net(), 15), Next::PollIn(SECS(20)));
        assert_eq!(p.after(net(), 35), Next::PollIn(SECS(40)));
        assert_eq!(p.after(net(), 75), Next::PollIn(SECS(60)));
        assert_eq!(p.after(net(), 135), Next::PollIn(SECS(60)));
        // Back to the interval once the provider answers, not below it.
        assert_eq!(p.after(PollAnswer::Pending, 200), Next::PollIn(SECS(5)));
        // An interval already past the cap is kept.
        let mut slow = DevicePoll::new(&auth(90, 3600), 0, "a");
        assert_eq!(slow.after(net(), 90), Next::PollIn(SECS(90)));
        // Retry-After longer than the backoff is honoured.
        let e = Error::temporary("503", Some(SECS(30)));
        assert_eq!(
            p.after(PollAnswer::Temporary(e), 210),
            Next::PollIn(SECS(30))
        );
    }

    #[test]
    fn denied_and_expired_stop_with_clear_reasons() {
        let mut p = DevicePoll::new(&auth(5, 600), 0, "a");
        let Next::Stop(e) = p.after(answer(400, r#"{"error":"access_denied"}"#), 5) else {
            panic!("must stop")
        };
        assert!(e.to_string().contains("denied"), "{e}");
        let Next::Stop(e) = p.after(answer(400, r#"{"error":"expired_token"}"#), 5) else {
            panic!("must stop")
        };
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn polling_stops_when_the_code_would_expire_before_the_next_poll() {
        let mut p = DevicePoll::new(&auth(5, 12), 0, "a");
        assert_eq!(p.after(PollAnswer::Pending, 5), Next::PollIn(SECS(5)));
        let Next::Stop(e) = p.after(PollAnswer::Pending, 10) else {
            panic!("must stop")
        };
        assert!(matches!(
            e,
            Error::AuthorizationNeeded {
                reason: ReauthReason::DeviceCodeExpired,
                ..
            }
        ));
    }

    #[test]
    fn poll_answers_are_classified() {
        assert!(matches!(
            answer(400, r#"{"error":"authorization_pending"}"#),
            PollAnswer::Pending
        ));
        assert!(matches!(
            answer(400, r#"{"error":"slow_down"}"#),
            PollAnswer::SlowDown
        ));
        assert!(matches!(answer(503, "<html>"), PollAnswer::Temporary(_)));
        assert!(matches!(
            answer(400, r#"{"error":"invalid_client"}"#),
            PollAnswer::Failed(_)
        ));
        assert!(matches!(
            answer(
                200,
                r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt"}"#
            ),
            PollAnswer::Tokens(_)
        ));
    }

    #[test]
    fn a_429_while_polling_backs_off_instead_of_ending_the_login() {
        // A rate limit is `Error::RateLimited`, which the poll took for a
        // final failure (fuzz/fuzz_targets/error_body.rs now checks this).
        let limited = classify_poll(
            HttpAnswer {
                status: 429,
                retry_after: Some(SECS(30)),
                body: br#"{"error":{"status":429,"message":"API rate limit exceeded"}}"#,
            },
            "a",
        );
        let PollAnswer::Temporary(e) = limited else {
            panic!("a 429 is temporary: {limited:?}")
        };
        let mut p = DevicePoll::new(&auth(5, 600), 0, "a");
        assert_eq!(p.after(PollAnswer::Temporary(e), 5), Next::PollIn(SECS(30)));
    }

    #[test]
    fn device_authorization_answers_are_parsed() {
        let ok = |body: &str| {
            parse_device_authorization(HttpAnswer {
                status: 200,
                retry_after: None,
                body: body.as_bytes(),
            })
        };
        let a = ok(r#"{"device_code":"dc","user_code":"WDJB-MJHT","verification_uri":"https://id.example/device","verification_uri_complete":"https://id.example/device?user_code=WDJB-MJHT","expires_in":1800}"#)
            .expect("ok");
        assert_eq!(a.user_code, "WDJB-MJHT");
        assert_eq!(a.interval, DEFAULT_INTERVAL, "interval defaults to 5 s");
        assert_eq!(a.expires_in, SECS(1800));
        assert!(a.verification_uri_complete.is_some());
        assert!(!format!("{a:?}").contains("\"dc\""), "device code redacted");
        assert!(ok(r#"{"user_code":"x","verification_uri":"https://x","expires_in":5}"#).is_err());
        assert!(
            ok(r#"{"device_code":"d","user_code":"x","verification_uri":"javascript:alert(1)","expires_in":5}"#)
                .is_err()
        );
    }

    #[test]
    fn device_token_request_names_the_grant() {
        let url = Url::parse("https://id.example/token").expect("url");
        let r = device_token_request(&url, &ClientAuth::public("cid"), &DeviceCode::new("d c"));
        assert_eq!(
            r.body.as_str(),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=d+c&client_id=cid"
        );
    }

    proptest! {
        #[test]
        fn the_interval_never_shrinks(events in proptest::collection::vec(0u8..3, 0..40), start in 1u64..30) {
            let mut p = DevicePoll::new(&auth(start, 1_000_000), 0, "a");
            let mut now = 0i64;
            let mut last = p.interval();
            for e in events {
                let answer = match e {
                    0 => PollAnswer::Pending,
                    1 => PollAnswer::SlowDown,
                    _ => PollAnswer::Temporary(Error::temporary("net", None)),
                };
                match p.after(answer, now) {
                    Next::PollIn(d) => {
                        prop_assert!(d >= p.interval());
                        now += i64::try_from(d.as_secs()).unwrap_or(0);
                    }
                    Next::Stop(_) => break,
                }
                prop_assert!(p.interval() >= last);
                last = p.interval();
            }
        }

        #[test]
        fn device_authorization_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), status in 100u16..600) {
            let _ = parse_device_authorization(HttpAnswer { status, retry_after: None, body: &body });
        }
    }
}
