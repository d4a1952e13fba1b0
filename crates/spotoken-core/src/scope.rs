//! Spotify's scopes: the list of valid names, parsing of scope strings, and the
//! table of which scopes each Web API endpoint needs.
//!
//! Spotify answers a missing scope with a bare `403 Insufficient client scope`; it
//! never says which one. This table is how spotoken names it.

use std::collections::BTreeSet;

/// Every scope Spotify's authorization server accepts (Web API reference, 2026).
pub const SPOTIFY_SCOPES: &[&str] = &[
    "ugc-image-upload",
    "user-read-playback-state",
    "user-modify-playback-state",
    "user-read-currently-playing",
    "app-remote-control",
    "streaming",
    "playlist-read-private",
    "playlist-read-collaborative",
    "playlist-modify-private",
    "playlist-modify-public",
    "user-follow-modify",
    "user-follow-read",
    "user-read-playback-position",
    "user-top-read",
    "user-read-recently-played",
    "user-library-modify",
    "user-library-read",
    "user-read-email",
    "user-read-private",
    "user-personalized",
    "user-soa-link",
    "user-soa-unlink",
    "soa-manage-entitlements",
    "soa-manage-partner",
    "soa-create-partner",
];

/// What a login asks for when nobody says: the least that identifies the user
/// (`/v1/me`), so an app asks for more only when it needs more.
pub const DEFAULT_SCOPES: &str = "user-read-private";

/// Whether Spotify knows this scope name.
pub fn is_spotify_scope(s: &str) -> bool {
    SPOTIFY_SCOPES.contains(&s)
}

/// A set of scope names, ordered so that it prints the same way every time.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Scopes(pub BTreeSet<String>);

impl Scopes {
    /// Parses a list separated by spaces and/or commas (the form users type and
    /// the form servers send). Empty items are ignored; duplicates collapse.
    pub fn parse(s: &str) -> Self {
        Self(
            s.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Builds a set from names.
    pub fn of<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Self {
        Self(it.into_iter().map(Into::into).collect())
    }

    /// The space-separated form OAuth puts on the wire.
    pub fn to_wire(&self) -> String {
        self.0
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Names in this set that Spotify does not know.
    pub fn unknown(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(String::as_str)
            .filter(|s| !is_spotify_scope(s))
            .collect()
    }

    /// Whether the scope is in the set.
    pub fn contains(&self, s: &str) -> bool {
        self.0.contains(s)
    }

    /// The members of `self` that `other` lacks.
    pub fn missing_from(&self, other: &Scopes) -> Vec<String> {
        self.0.difference(&other.0).cloned().collect()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the names.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// What an endpoint needs: every scope in `all`, and at least one of `any` when
/// `any` is not empty (Spotify accepts either of two scopes on a few endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// Scopes that are all required.
    pub all: &'static [&'static str],
    /// Alternatives: one of them suffices.
    pub any: &'static [&'static str],
}

/// `/v1/me/library` saves or follows any kind of URI: one of the scopes the
/// per-kind endpoints needed (the emulator checks each URI's own).
const SAVE_ANYTHING: &[&str] = &[
    "user-library-modify",
    "user-follow-modify",
    "playlist-modify-public",
    "playlist-modify-private",
];

/// `(method, path pattern, requirement)`; `*` matches one path segment.
const ENDPOINT_SCOPES: &[(&str, &str, Requirement)] = &[
    (
        "GET",
        "/v1/me/player/currently-playing",
        req(
            &[],
            &["user-read-currently-playing", "user-read-playback-state"],
        ),
    ),
    (
        "GET",
        "/v1/me/player/recently-played",
        req(&["user-read-recently-played"], &[]),
    ),
    (
        "GET",
        "/v1/me/player/queue",
        req(
            &[],
            &["user-read-currently-playing", "user-read-playback-state"],
        ),
    ),
    (
        "POST",
        "/v1/me/player/queue",
        req(&["user-modify-playback-state"], &[]),
    ),
    (
        "GET",
        "/v1/me/player/devices",
        req(&["user-read-playback-state"], &[]),
    ),
    (
        "GET",
        "/v1/me/player",
        req(&["user-read-playback-state"], &[]),
    ),
    (
        "PUT",
        "/v1/me/player",
        req(&["user-modify-playback-state"], &[]),
    ),
    (
        "PUT",
        "/v1/me/player/*",
        req(&["user-modify-playback-state"], &[]),
    ),
    (
        "POST",
        "/v1/me/player/*",
        req(&["user-modify-playback-state"], &[]),
    ),
    (
        "GET",
        "/v1/me/playlists",
        req(&["playlist-read-private"], &[]),
    ),
    ("GET", "/v1/me/top/*", req(&["user-top-read"], &[])),
    ("GET", "/v1/me/tracks", req(&["user-library-read"], &[])),
    (
        "GET",
        "/v1/me/tracks/contains",
        req(&["user-library-read"], &[]),
    ),
    ("PUT", "/v1/me/tracks", req(&["user-library-modify"], &[])),
    (
        "DELETE",
        "/v1/me/tracks",
        req(&["user-library-modify"], &[]),
    ),
    ("GET", "/v1/me/albums", req(&["user-library-read"], &[])),
    (
        "GET",
        "/v1/me/albums/contains",
        req(&["user-library-read"], &[]),
    ),
    ("PUT", "/v1/me/albums", req(&["user-library-modify"], &[])),
    (
        "DELETE",
        "/v1/me/albums",
        req(&["user-library-modify"], &[]),
    ),
    ("GET", "/v1/me/shows", req(&["user-library-read"], &[])),
    (
        "GET",
        "/v1/me/episodes",
        req(&["user-library-read", "user-read-playback-position"], &[]),
    ),
    ("GET", "/v1/me/audiobooks", req(&["user-library-read"], &[])),
    ("GET", "/v1/me/following", req(&["user-follow-read"], &[])),
    (
        "GET",
        "/v1/me/following/contains",
        req(&["user-follow-read"], &[]),
    ),
    ("PUT", "/v1/me/following", req(&["user-follow-modify"], &[])),
    (
        "DELETE",
        "/v1/me/following",
        req(&["user-follow-modify"], &[]),
    ),
    (
        "POST",
        "/v1/users/*/playlists",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    // The 2026 endpoints, checked as those they replace.
    (
        "POST",
        "/v1/me/playlists",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "POST",
        "/v1/playlists/*/items",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "PUT",
        "/v1/playlists/*/items",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "DELETE",
        "/v1/playlists/*/items",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "GET",
        "/v1/me/library/contains",
        req(&[], &["user-library-read", "user-follow-read"]),
    ),
    ("PUT", "/v1/me/library", req(&[], SAVE_ANYTHING)),
    ("DELETE", "/v1/me/library", req(&[], SAVE_ANYTHING)),
    (
        "POST",
        "/v1/playlists/*/tracks",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "PUT",
        "/v1/playlists/*/tracks",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "DELETE",
        "/v1/playlists/*/tracks",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "PUT",
        "/v1/playlists/*",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "PUT",
        "/v1/playlists/*/images",
        req(&["ugc-image-upload"], &[]),
    ),
    (
        "PUT",
        "/v1/playlists/*/followers",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
    (
        "DELETE",
        "/v1/playlists/*/followers",
        req(&[], &["playlist-modify-public", "playlist-modify-private"]),
    ),
];

const fn req(all: &'static [&'static str], any: &'static [&'static str]) -> Requirement {
    Requirement { all, any }
}

/// The scopes `method path` needs, if the table knows the endpoint. The query
/// string, if any, is ignored.
pub fn required_for(method: &str, path: &str) -> Option<Requirement> {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    ENDPOINT_SCOPES
        .iter()
        .find(|(m, pattern, _)| m.eq_ignore_ascii_case(method) && path_matches(pattern, path))
        .map(|(_, _, r)| *r)
}

/// The scopes that `granted` lacks for `method path`: empty when the endpoint is
/// satisfied or unknown. For an "any of" requirement the first alternative is
/// named, as the one to add.
pub fn missing_for(method: &str, path: &str, granted: &Scopes) -> Vec<String> {
    let Some(r) = required_for(method, path) else {
        return Vec::new();
    };
    let mut missing: Vec<String> = r
        .all
        .iter()
        .filter(|s| !granted.contains(s))
        .map(|s| (*s).to_owned())
        .collect();
    if !r.any.is_empty() && !r.any.iter().any(|s| granted.contains(s)) {
        missing.push(r.any[0].to_owned());
    }
    missing
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut q = path.split('/');
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_commas_and_spaces() {
        let s = Scopes::parse("user-read-private, playlist-read-private  user-read-private");
        assert_eq!(s.to_wire(), "playlist-read-private user-read-private");
        assert!(s.unknown().is_empty());
        assert_eq!(
            Scopes::parse("bogus user-top-read").unknown(),
            vec!["bogus"]
        );
    }

    #[test]
    fn names_the_missing_scope_for_playlists() {
        let granted = Scopes::parse("user-read-private");
        assert_eq!(
            missing_for("GET", "/v1/me/playlists?limit=5", &granted),
            vec!["playlist-read-private"]
        );
        assert!(missing_for("GET", "/v1/me", &granted).is_empty());
        assert_eq!(
            missing_for("POST", "/v1/playlists/abc/items", &granted),
            vec!["playlist-modify-public"],
            "the 2026 path, as /tracks"
        );
        assert_eq!(
            missing_for("POST", "/v1/me/playlists", &granted),
            vec!["playlist-modify-public"]
        );
        assert_eq!(
            missing_for("PUT", "/v1/me/library", &granted),
            vec!["user-library-modify"]
        );
        let playing = Scopes::parse("user-read-playback-state");
        assert!(missing_for("GET", "/v1/me/player/currently-playing", &playing).is_empty());
        assert_eq!(
            missing_for("POST", "/v1/playlists/abc/tracks", &granted),
            vec!["playlist-modify-public"]
        );
    }

    proptest! {
        #[test]
        fn parse_round_trips_through_wire_form(items in proptest::collection::vec("[a-z-]{1,20}", 0..8)) {
            let s = Scopes::parse(&items.join(","));
            prop_assert_eq!(Scopes::parse(&s.to_wire()), s.clone());
            for i in &items { prop_assert!(s.contains(i)); }
        }

        #[test]
        fn parse_never_panics(input in ".*") {
            let s = Scopes::parse(&input);
            for item in s.iter() {
                prop_assert!(!item.is_empty());
                prop_assert!(!item.contains(',') && !item.chars().any(char::is_whitespace));
            }
        }
    }
}
