//! The one cookie factory: no cookie leaves this server without `__Host-`,
//! `Secure`, `HttpOnly`, a `SameSite` (`Lax`, or `Strict` for the session
//! with `--same-site strict`) and `Path=/`. (Browsers treat
//! `http://127.0.0.1` as a secure context, so this works in development too.)

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HeaderValue};

/// The session cookie.
pub(crate) const SESSION: &str = "__Host-spotoken_session";
/// The short-lived cookie binding a started login to the browser that started it.
pub(crate) const LOGIN: &str = "__Host-spotoken_login";

/// The `SameSite` attribute of a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites (a link to the app
    /// opens logged in), not on their subrequests or cross-site POSTs.
    #[default]
    Lax,
    /// Never sent on requests another site starts, navigations included.
    Strict,
}

impl SameSite {
    fn attribute(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

impl std::str::FromStr for SameSite {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lax" => Ok(SameSite::Lax),
            "strict" => Ok(SameSite::Strict),
            _ => Err(format!("SameSite must be lax or strict, not {s:?}")),
        }
    }
}

/// A `Set-Cookie` value; `max_age` 0 deletes the cookie. The login binding
/// is always `Lax`: it must come back on the provider's redirect, a
/// navigation another site starts.
pub(crate) fn set(name: &str, value: &str, max_age_secs: u64, same_site: SameSite) -> HeaderValue {
    let same_site = if name == LOGIN {
        SameSite::Lax
    } else {
        same_site
    };
    let v = format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={}; Max-Age={max_age_secs}",
        same_site.attribute()
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "__Host-spotoken_invalid=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        )
    })
}

/// Deletes a cookie.
pub(crate) fn clear(name: &str) -> HeaderValue {
    set(name, "", 0, SameSite::Lax)
}

/// The value of a request cookie (the first of that name; values that are
/// not UTF-8 are skipped). Read as bytes: only the value found is checked.
pub(crate) fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let name = name.as_bytes();
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii_start();
            let value = pair.strip_prefix(name)?.strip_prefix(b"=")?;
            std::str::from_utf8(value.trim_ascii_end()).ok()
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cookie_has_its_flags() {
        let c = set(SESSION, "abc", 60, SameSite::Lax);
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
        let strict = set(SESSION, "abc", 60, SameSite::Strict);
        assert!(strict.to_str().expect("ascii").contains("SameSite=Strict"));
        let login = set(LOGIN, "abc", 60, SameSite::Strict);
        assert!(
            login.to_str().expect("ascii").contains("SameSite=Lax"),
            "the login binding must survive the provider's redirect"
        );
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
        assert_eq!(get(&h, "a"), Some("1"));
        assert_eq!(get(&h, "b"), Some("2"), "last pair, no trailing separator");
        h.insert(
            COOKIE,
            HeaderValue::from_static("x__Host-spotoken_session=no;__Host-spotoken_session_2=no"),
        );
        assert_eq!(get(&h, SESSION), None, "a name is matched whole");
        h.append(
            COOKIE,
            HeaderValue::from_static("__Host-spotoken_session=second"),
        );
        assert_eq!(
            get(&h, SESSION),
            Some("second"),
            "every Cookie header is read"
        );
    }

    proptest::proptest! {
        /// Any header bytes: no panic, and a value found is one of the pairs
        /// the header holds under exactly that name.
        #[test]
        fn any_cookie_header_is_read_safely(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                h.insert(COOKIE, v);
            }
            if let Some(v) = get(&h, SESSION) {
                let text = String::from_utf8_lossy(&raw);
                let pair = format!("{}={}", SESSION, v);
                proptest::prop_assert!(text.contains(&pair));
            }
        }

        /// Well-formed headers: the first pair of the name wins, wherever it is.
        #[test]
        fn the_first_pair_of_a_name_is_found(
            pairs in proptest::collection::vec(("[a-z_]{1,8}", "[A-Za-z0-9_-]{0,12}"), 0..8),
            at in 0usize..8,
            value in "[A-Za-z0-9_-]{1,43}",
        ) {
            let mut pairs: Vec<(String, String)> =
                pairs.into_iter().filter(|(k, _)| k != SESSION).collect();
            let at = at.min(pairs.len());
            pairs.insert(at, (SESSION.to_owned(), value.clone()));
            pairs.push((SESSION.to_owned(), "later".to_owned()));
            let header = pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(&header).expect("ascii"));
            proptest::prop_assert_eq!(get(&h, SESSION), Some(value.as_str()));
        }
    }
}
