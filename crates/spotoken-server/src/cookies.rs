//! The one cookie factory: no cookie leaves this server without `__Host-`,
//! `Secure`, `HttpOnly`, `SameSite=Lax` and `Path=/`. (Browsers treat
//! `http://127.0.0.1` as a secure context, so this works in development too.)

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HeaderValue};

/// The session cookie.
pub const SESSION: &str = "__Host-spotoken_session";
/// The short-lived cookie binding a started login to the browser that started it.
pub const LOGIN: &str = "__Host-spotoken_login";

/// A `Set-Cookie` value; `max_age` 0 deletes the cookie.
pub fn set(name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    let v =
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "__Host-spotoken_invalid=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        )
    })
}

/// Deletes a cookie.
pub fn clear(name: &str) -> HeaderValue {
    set(name, "", 0)
}

/// The value of a request cookie.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cookie_has_its_flags() {
        let c = set(SESSION, "abc", 60);
        let s = c.to_str().expect("ascii");
        for flag in [
            "__Host-",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(s.contains(flag), "{s} lacks {flag}");
        }
        assert!(!s.contains("Domain"), "__Host- cookies carry no Domain");
    }

    #[test]
    fn reads_cookies_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-spotoken_session=xyz; b=2"),
        );
        assert_eq!(get(&h, SESSION), Some("xyz"));
        assert_eq!(get(&h, LOGIN), None);
    }
}
