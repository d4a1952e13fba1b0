//! A small built-in music catalogue and the JSON shapes the Web API gives it.
//!
//! Apps need something to search, play and put in playlists, and their tests
//! need it to be the same every time: four artists, eight albums and 32 tracks
//! with fixed ids, and two playlists per user. The shapes follow Spotify's
//! objects, with the fields a development-mode app no longer gets (February
//! 2026: `popularity`, `available_markets`, artists' `followers`, playlists'
//! `tracks` renamed `items`) present only in extended quota mode.

use serde_json::{Value, json};

use crate::model::{AppMode, User};

/// An artist of the catalogue.
pub(crate) struct Artist {
    pub id: &'static str,
    pub name: &'static str,
    pub genres: &'static [&'static str],
}

/// An album: its artist and its four track names.
pub(crate) struct Album {
    pub id: &'static str,
    pub name: &'static str,
    pub artist: usize,
    pub release_date: &'static str,
    pub tracks: [&'static str; 4],
}

/// The artists.
pub(crate) const ARTISTS: &[Artist] = &[
    Artist {
        id: "0EmuArtistEmulators001",
        name: "The Emulators",
        genres: &["synthpop"],
    },
    Artist {
        id: "0EmuArtistLoopback0002",
        name: "Loopback Orchestra",
        genres: &["chamber pop"],
    },
    Artist {
        id: "0EmuArtistNullPtr00003",
        name: "Null Pointer",
        genres: &["post-punk"],
    },
    Artist {
        id: "0EmuArtistRaceCond0004",
        name: "Race Condition",
        genres: &["drum and bass"],
    },
];

/// The albums, two per artist.
pub(crate) const ALBUMS: &[Album] = &[
    Album {
        id: "1EmuAlbumLoopback00001",
        name: "Loopback",
        artist: 0,
        release_date: "2024-03-01",
        tracks: [
            "Emulated Song",
            "Port Zero",
            "Localhost Lullaby",
            "Ephemeral Port",
        ],
    },
    Album {
        id: "1EmuAlbumFaultInject02",
        name: "Fault Injection",
        artist: 0,
        release_date: "2025-06-13",
        tracks: [
            "Retry After",
            "Dropped Connection",
            "Bad Gateway Blues",
            "Five Hundred",
        ],
    },
    Album {
        id: "1EmuAlbumOrchestral003",
        name: "Overture in 127.0.0.1",
        artist: 1,
        release_date: "2023-11-20",
        tracks: ["Prelude", "Handshake", "Keep-Alive", "Coda"],
    },
    Album {
        id: "1EmuAlbumStrings000004",
        name: "Strings Attached",
        artist: 1,
        release_date: "2025-01-31",
        tracks: [
            "Pizzicato Packets",
            "Nagle's Waltz",
            "Slow Start",
            "Congestion Window",
        ],
    },
    Album {
        id: "1EmuAlbumSegfault00005",
        name: "Segmentation Fault",
        artist: 2,
        release_date: "2022-08-08",
        tracks: ["Dangling", "Use After Free", "Core Dumped", "Undefined"],
    },
    Album {
        id: "1EmuAlbumNullable00006",
        name: "Nullable",
        artist: 2,
        release_date: "2026-02-11",
        tracks: ["Option", "Unwrap", "Some Day", "None of This"],
    },
    Album {
        id: "1EmuAlbumDeadlock00007",
        name: "Deadlock",
        artist: 3,
        release_date: "2024-10-10",
        tracks: ["Mutex", "Poisoned", "Spin Loop", "Lock Order"],
    },
    Album {
        id: "1EmuAlbumAtomics000008",
        name: "Atomics",
        artist: 3,
        release_date: "2025-09-09",
        tracks: ["Compare and Swap", "Relaxed", "Acquire", "Release"],
    },
];

/// How many tracks the catalogue has.
pub(crate) const TRACK_COUNT: usize = 32;

/// A track, by its index in the catalogue (album-major order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Track(pub usize);

impl Track {
    pub(crate) fn album(self) -> &'static Album {
        &ALBUMS[self.0 / 4]
    }
    pub(crate) fn artist(self) -> &'static Artist {
        &ARTISTS[self.album().artist]
    }
    pub(crate) fn name(self) -> &'static str {
        self.album().tracks[self.0 % 4]
    }
    pub(crate) fn id(self) -> String {
        format!("2EmuTrack{:013}", self.0 + 1)
    }
    pub(crate) fn uri(self) -> String {
        format!("spotify:track:{}", self.id())
    }
    pub(crate) fn duration_ms(self) -> i64 {
        150_000 + (self.0 as i64 * 7_919) % 120_000
    }
    /// Every track, in catalogue order.
    pub(crate) fn all() -> impl Iterator<Item = Track> {
        (0..TRACK_COUNT).map(Track)
    }
    /// The track with this id.
    pub(crate) fn by_id(id: &str) -> Option<Track> {
        Track::all().find(|t| t.id() == id)
    }
    /// The track with this `spotify:track:` URI.
    pub(crate) fn by_uri(uri: &str) -> Option<Track> {
        uri.strip_prefix("spotify:track:").and_then(Track::by_id)
    }
}

/// An album's index by id.
pub(crate) fn album_by_id(id: &str) -> Option<usize> {
    ALBUMS.iter().position(|a| a.id == id)
}

/// An artist's index by id.
pub(crate) fn artist_by_id(id: &str) -> Option<usize> {
    ARTISTS.iter().position(|a| a.id == id)
}

/// A user's playlist.
#[derive(Debug, Clone)]
pub(crate) struct Playlist {
    pub id: String,
    pub name: String,
    pub description: String,
    pub owner: String,
    pub public: bool,
    pub tracks: Vec<Track>,
    pub snapshot: u32,
}

/// Two playlists per user: a private one and a public one.
pub(crate) fn default_playlists(users: &[User]) -> Vec<Playlist> {
    let mut out = Vec::new();
    for (n, u) in users.iter().enumerate() {
        let pick = |start: usize, len: usize| -> Vec<Track> {
            (0..len)
                .map(|i| Track((start + i * 3) % TRACK_COUNT))
                .collect()
        };
        out.push(Playlist {
            id: playlist_id(&u.id, 1),
            name: format!("{} Mix", u.display_name),
            description: String::new(),
            owner: u.id.clone(),
            public: false,
            tracks: pick(n, 12),
            snapshot: 1,
        });
        out.push(Playlist {
            id: playlist_id(&u.id, 2),
            name: format!("Loopback Sessions ({})", u.id),
            description: "Songs for testing against the emulator".into(),
            owner: u.id.clone(),
            public: true,
            tracks: pick(n + 1, 7),
            snapshot: 1,
        });
    }
    out
}

/// A 22-character base62 id for a user's `n`th playlist.
pub(crate) fn playlist_id(user: &str, n: usize) -> String {
    let stem: String = format!("3Pl{user}")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("{stem:0<16}{n:06}")
}

/// Renders objects for one request: where the API lives (for `href`s and
/// paging links) and which mode the app is in.
pub(crate) struct Shapes<'a> {
    /// The API's origin, such as `http://127.0.0.1:43123`.
    pub base: &'a str,
    pub mode: AppMode,
}

impl Shapes<'_> {
    fn extended(&self) -> bool {
        self.mode == AppMode::Extended
    }

    fn href(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    pub(crate) fn artist_simple(&self, i: usize) -> Value {
        let a = &ARTISTS[i];
        json!({
            "external_urls": {"spotify": format!("https://open.spotify.com/artist/{}", a.id)},
            "href": self.href(&format!("artists/{}", a.id)),
            "id": a.id, "name": a.name, "type": "artist",
            "uri": format!("spotify:artist:{}", a.id),
        })
    }

    pub(crate) fn artist(&self, i: usize) -> Value {
        let mut v = self.artist_simple(i);
        v["genres"] = json!(ARTISTS[i].genres);
        v["images"] = json!([]);
        if self.extended() {
            v["followers"] = json!({"href": null, "total": 1000 * (i + 1)});
            v["popularity"] = json!(40 + i * 10);
        }
        v
    }

    pub(crate) fn album_simple(&self, i: usize) -> Value {
        let a = &ALBUMS[i];
        let mut v = json!({
            "album_type": "album", "total_tracks": a.tracks.len(),
            "external_urls": {"spotify": format!("https://open.spotify.com/album/{}", a.id)},
            "href": self.href(&format!("albums/{}", a.id)),
            "id": a.id, "images": [], "name": a.name,
            "release_date": a.release_date, "release_date_precision": "day",
            "type": "album", "uri": format!("spotify:album:{}", a.id),
            "artists": [self.artist_simple(a.artist)],
        });
        if self.extended() {
            v["available_markets"] = json!(["DE", "GB", "SE", "US"]);
        }
        v
    }

    pub(crate) fn album(&self, i: usize) -> Value {
        let mut v = self.album_simple(i);
        let tracks: Vec<Track> = (i * 4..i * 4 + 4).map(Track).collect();
        v["tracks"] = self.page(
            &format!("albums/{}/tracks", ALBUMS[i].id),
            &tracks,
            0,
            50,
            |t| self.track(*t),
        );
        if self.extended() {
            v["popularity"] = json!(50);
        }
        v
    }

    pub(crate) fn track(&self, t: Track) -> Value {
        let mut v = json!({
            "album": self.album_simple(t.0 / 4),
            "artists": [self.artist_simple(t.album().artist)],
            "disc_number": 1, "duration_ms": t.duration_ms(), "explicit": false,
            "external_urls": {"spotify": format!("https://open.spotify.com/track/{}", t.id())},
            "href": self.href(&format!("tracks/{}", t.id())),
            "id": t.id(), "is_local": false, "name": t.name(), "preview_url": null,
            "track_number": t.0 % 4 + 1, "type": "track", "uri": t.uri(),
        });
        if self.extended() {
            v["available_markets"] = json!(["DE", "GB", "SE", "US"]);
            v["popularity"] = json!(30 + t.0 * 2);
        }
        v
    }

    fn owner(&self, user: &str, name: Option<&str>) -> Value {
        json!({
            "display_name": name, "id": user, "type": "user",
            "external_urls": {"spotify": format!("https://open.spotify.com/user/{user}")},
            "href": self.href(&format!("users/{user}")),
            "uri": format!("spotify:user:{user}"),
        })
    }

    /// The playlist's track list field: `items` in development mode,
    /// `tracks` in extended quota mode.
    fn list_field(&self) -> &'static str {
        if self.extended() { "tracks" } else { "items" }
    }

    pub(crate) fn playlist_simple(&self, p: &Playlist, owner_name: Option<&str>) -> Value {
        let mut v = json!({
            "collaborative": false, "description": p.description,
            "external_urls": {"spotify": format!("https://open.spotify.com/playlist/{}", p.id)},
            "href": self.href(&format!("playlists/{}", p.id)),
            "id": p.id, "images": [], "name": p.name,
            "owner": self.owner(&p.owner, owner_name),
            "public": p.public, "snapshot_id": format!("snap{}", p.snapshot),
            "type": "playlist", "uri": format!("spotify:playlist:{}", p.id),
        });
        let field = self.list_field();
        v[field] = json!({
            "href": self.href(&format!("playlists/{}/{field}", p.id)),
            "total": p.tracks.len(),
        });
        v
    }

    pub(crate) fn playlist(&self, p: &Playlist, owner_name: Option<&str>) -> Value {
        let mut v = self.playlist_simple(p, owner_name);
        let field = self.list_field();
        v["followers"] = json!({"href": null, "total": 0});
        v[field] = self.playlist_items(p, owner_name, field, 0, 100);
        v
    }

    /// A page of a playlist's entries.
    pub(crate) fn playlist_items(
        &self,
        p: &Playlist,
        owner_name: Option<&str>,
        field: &str,
        offset: usize,
        limit: usize,
    ) -> Value {
        self.page(
            &format!("playlists/{}/{field}", p.id),
            &p.tracks,
            offset,
            limit,
            |t| {
                json!({
                    "added_at": "2026-01-01T00:00:00Z",
                    "added_by": self.owner(&p.owner, owner_name),
                    "is_local": false,
                    "track": self.track(*t),
                })
            },
        )
    }

    /// A paging object over `all`, with `next`/`previous` links back here.
    pub(crate) fn page<T>(
        &self,
        path: &str,
        all: &[T],
        offset: usize,
        limit: usize,
        render: impl Fn(&T) -> Value,
    ) -> Value {
        self.page_with_query(path, "", all, offset, limit, render)
    }

    /// [`Shapes::page`] for a path whose links carry more query parameters
    /// (`query` is already encoded, without a leading `&`).
    pub(crate) fn page_with_query<T>(
        &self,
        path: &str,
        query: &str,
        all: &[T],
        offset: usize,
        limit: usize,
        render: impl Fn(&T) -> Value,
    ) -> Value {
        let link = |off: usize| {
            let sep = if query.is_empty() { "" } else { "&" };
            format!("{}?{query}{sep}offset={off}&limit={limit}", self.href(path))
        };
        let items: Vec<Value> = all.iter().skip(offset).take(limit).map(render).collect();
        let next = (offset + limit < all.len()).then(|| link(offset + limit));
        let previous = (offset > 0).then(|| link(offset.saturating_sub(limit)));
        json!({
            "href": link(offset), "items": items, "limit": limit, "next": next,
            "offset": offset, "previous": previous, "total": all.len(),
        })
    }
}

/// Whether every word of a search query appears in `text` (case-insensitive).
/// Field filters such as `artist:name` count as their value.
pub(crate) fn matches(query: &str, text: &str) -> bool {
    let text = text.to_lowercase();
    query
        .split_whitespace()
        .map(|w| w.split_once(':').map_or(w, |(_, v)| v).to_lowercase())
        .filter(|w| !w.is_empty())
        .all(|w| text.contains(&w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_22_base62_characters_and_unique() {
        let mut ids: Vec<String> = Track::all().map(Track::id).collect();
        ids.extend(ARTISTS.iter().map(|a| a.id.to_owned()));
        ids.extend(ALBUMS.iter().map(|a| a.id.to_owned()));
        ids.push(playlist_id("alice", 1));
        ids.push(playlist_id("a-very-long-user-name", 2));
        for id in &ids {
            assert_eq!(id.len(), 22, "{id}");
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn queries_match_every_word_and_field_filters() {
        assert!(matches(
            "emulated song",
            "Emulated Song The Emulators Loopback"
        ));
        assert!(matches("artist:emulators", "Emulated Song The Emulators"));
        assert!(!matches("emulated jazz", "Emulated Song The Emulators"));
    }

    #[test]
    fn pages_link_forward_and_back() {
        let s = Shapes {
            base: "http://h",
            mode: AppMode::Development,
        };
        let all: Vec<u32> = (0..7).collect();
        let p = s.page("x", &all, 3, 2, |n| json!(n));
        assert_eq!(p["items"], json!([3, 4]));
        assert_eq!(p["next"], "http://h/v1/x?offset=5&limit=2");
        assert_eq!(p["previous"], "http://h/v1/x?offset=1&limit=2");
        let last = s.page("x", &all, 6, 2, |n| json!(n));
        assert_eq!(last["next"], Value::Null);
    }
}
