//! The redirect back from the authorization server: parse it, check `state`,
//! and get the code or the error.
//!
//! Input may be a full URL (pasted by a user from the browser's address bar), a
//! path with a query (from the loopback listener), or a bare query string.

use std::collections::HashMap;

use crate::error::{Error, ReauthReason};
use crate::secret::AuthorizationCode;

/// Parses a callback and returns the authorization code if `state` matches.
pub fn parse_callback(
    input: &str,
    expected_state: &str,
    account: &str,
) -> Result<AuthorizationCode, Error> {
    let input = input.trim();
    let query = match input.split_once('?') {
        Some((_, q)) => q,
        None if input.contains('=') => input,
        None => {
            return Err(Error::Configuration(
                "that is not the redirect URL: paste the whole address the browser was sent to (it contains ?code=...&state=...)".into(),
            ));
        }
    };
    let query = query.split('#').next().unwrap_or(query);
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
        // RFC 6749 3.1: no parameter more than once; which of two codes or
        // states would be meant is not ours to guess.
        if params.contains_key(&k) && matches!(k.as_str(), "code" | "state" | "error") {
            return Err(Error::protocol(
                None,
                format!(
                    "the callback repeats its '{k}' parameter (a tampered callback); nothing was stored, start the login again"
                ),
                b"",
            ));
        }
        params.insert(k, v);
    }
    let state_ok = params
        .get("state")
        .is_some_and(|s| constant_time_eq(s.as_bytes(), expected_state.as_bytes()));
    if !state_ok {
        return Err(Error::protocol(
            None,
            "the callback's state does not match the login we started (a stale or forged callback); nothing was stored, start the login again",
            b"",
        ));
    }
    if let Some(err) = params.get("error") {
        if err == "access_denied" {
            return Err(Error::AuthorizationNeeded {
                account: account.to_owned(),
                reason: ReauthReason::AccessDenied,
            });
        }
        let desc = params
            .get("error_description")
            .map(String::as_str)
            .unwrap_or("");
        return Err(Error::protocol(
            None,
            format!("the authorization server answered {err}: {desc}"),
            b"",
        ));
    }
    match params.get("code") {
        Some(c) if !c.is_empty() => Ok(AuthorizationCode::new(c.clone())),
        _ => Err(Error::protocol(None, "the callback has no code", b"")),
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn accepts_url_path_or_query() {
        for input in [
            "http://127.0.0.1:8888/callback?code=abc&state=s1",
            "/callback?code=abc&state=s1",
            "code=abc&state=s1",
            "  http://127.0.0.1:8888/callback?state=s1&code=abc#frag \n",
        ] {
            assert_eq!(
                parse_callback(input, "s1", "a").expect(input).expose(),
                "abc"
            );
        }
    }

    #[test]
    fn repeated_parameters_are_refused() {
        for q in [
            "/callback?code=abc&state=s1&code=evil",
            "/callback?code=abc&state=s1&state=s1",
            "/callback?state=s1&error=access_denied&code=abc&error=x",
        ] {
            let e = parse_callback(q, "s1", "a").unwrap_err();
            assert!(e.to_string().contains("repeats"), "{q}: {e}");
        }
    }

    #[test]
    fn wrong_or_missing_state_is_refused() {
        assert!(parse_callback("/callback?code=abc&state=s2", "s1", "a").is_err());
        assert!(parse_callback("/callback?code=abc", "s1", "a").is_err());
    }

    #[test]
    fn denial_means_authorization_needed() {
        let e = parse_callback("/callback?error=access_denied&state=s1", "s1", "a").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthorizationNeeded);
        let e = parse_callback("/callback?error=invalid_scope&state=s1", "s1", "a").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_accepts_a_wrong_state(input in ".{0,200}", state in "[a-z]{8}") {
            if parse_callback(&input, &state, "a").is_ok() {
                prop_assert!(input.contains(&state));
            }
        }
    }
}
