//! The Web API under `/v1/`, and the request echo under `/_echo/`.
//!
//! Every request goes through the checks Spotify makes, in this order: the
//! `Authorization` header (400 for anything but `Bearer`), the token (401 with
//! one message whatever the cause, the cause in `WWW-Authenticate`), the rate
//! limit (429 + `Retry-After`), the app owner's Premium (development mode, a
//! plain-text 403), the user allowlist (development mode, a plain-text 403),
//! endpoints a development-mode app no longer has (403, or 404 for
//! recommendations), the scopes the endpoint needs (403 `Insufficient client
//! scope`), then the endpoint itself; an unknown path is a 404 in the same
//! error shape. `docs/EMULATOR.md` lists each answer with its public source.
//!
//! The echo (`/_echo/v1/...`) makes the same checks up to the scopes, then
//! answers with the method, path, query and body it received instead of the
//! resource: for testing proxies. It is never the answer to an unknown path.

use std::collections::HashMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use spotoken_core::scope::{self, Scopes};

use crate::catalogue::{
    ALBUMS, ARTISTS, Playlist, Shapes, Track, album_by_id, artist_by_id, matches, playlist_id,
};
use crate::model::{AppMode, Endpoint, Grant, User, World};
use crate::serve::DropConnection;
use crate::{Shared, json_response};

/// The path prefix of the request echo.
pub const ECHO_PREFIX: &str = "/_echo";

/// The plain-text 403 of a development-mode app whose owner has no Premium.
pub const OWNER_PREMIUM_REQUIRED: &str = "Active premium subscription required for the owner of the app. When the subscription status changes, it can take a few hours before requests are allowed again.";

/// The plain-text 403 for a user who is not on a development-mode app's allowlist.
pub const USER_NOT_REGISTERED: &str = "The user is not registered for this application. Please check your settings on https://developer.spotify.com/dashboard.";

/// Spotify's error shape: `{"error": {"status": N, "message": "..."}}`.
pub(crate) fn api_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"status": status.as_u16(), "message": message}}),
    )
}

/// The error shape with a `reason` (player errors, the quota).
pub(crate) fn reasoned(status: StatusCode, message: &str, reason: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"status": status.as_u16(), "message": message, "reason": reason}}),
    )
}

pub(crate) fn ok(v: Value) -> Response<Body> {
    json_response(StatusCode::OK, &v)
}

pub(crate) fn no_content() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 401 with the one body Spotify gives whatever the cause, and the cause in
/// `WWW-Authenticate` (RFC 6750).
fn unauthorized(w: &World, error: &str, description: &str) -> Response<Body> {
    let mut r = api_error(StatusCode::UNAUTHORIZED, &w.settings.unauthorized_message);
    let challenge =
        format!(r#"Bearer realm="spotify", error="{error}", error_description="{description}""#);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// One Web API request being answered.
pub(crate) struct Ctx<'a> {
    pub w: &'a mut World,
    pub method: &'a str,
    /// The path without a trailing slash, such as `/v1/me`.
    pub path: &'a str,
    pub query: HashMap<String, String>,
    pub body: &'a [u8],
    /// The API's origin as the client reached it (for links).
    pub base: String,
    /// The user, or None for an app token (client credentials).
    pub user: Option<User>,
    pub scopes: Scopes,
}

impl Ctx<'_> {
    pub(crate) fn shapes(&self) -> Shapes<'_> {
        Shapes {
            base: &self.base,
            mode: self.w.settings.app_mode,
        }
    }

    fn mode(&self) -> AppMode {
        self.w.settings.app_mode
    }

    fn display_name(&self, user: &str) -> Option<String> {
        self.w.user(user).map(|u| u.display_name.clone())
    }
}

/// Every request under `/v1/`.
pub(crate) async fn api(
    State(shared): State<Shared>,
    hangup: Option<Extension<DropConnection>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    serve(
        shared,
        hangup,
        method,
        uri.path(),
        uri.query(),
        headers,
        body,
        false,
    )
    .await
}

/// Every request under `/_echo/`: checked like the Web API, then echoed.
pub(crate) async fn echo(
    State(shared): State<Shared>,
    hangup: Option<Extension<DropConnection>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let inner = uri.path().strip_prefix(ECHO_PREFIX).unwrap_or("/");
    serve(
        shared,
        hangup,
        method,
        inner,
        uri.query(),
        headers,
        body,
        true,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: Shared,
    hangup: Option<Extension<DropConnection>>,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    echo: bool,
) -> Response<Body> {
    let (failure, latency) = {
        let mut w = shared.lock();
        (
            w.take_failure(Endpoint::Api, None, path)
                .or_else(|| w.chaos_failure(Endpoint::Api)),
            w.settings.api_latency_ms,
        )
    };
    if let Some(f) = failure {
        let status = f.status;
        let r = crate::injected(f, hangup.as_ref().map(|e| &e.0)).await;
        shared.lock().count_api(status);
        return r;
    }
    crate::latency(latency).await;
    let base = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(
            || "https://api.spotify.com".to_owned(),
            |h| format!("http://{h}"),
        );
    let mut w = shared.lock();
    let r = answer(&mut w, &method, path, query, &headers, &body, base, echo);
    w.count_api(r.status().as_u16());
    r
}

#[allow(clippy::too_many_arguments)]
fn answer(
    w: &mut World,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    base: String,
    echo: bool,
) -> Response<Body> {
    let grant = match authenticate(w, headers) {
        Ok(grant) => grant,
        Err(r) => return *r,
    };
    let development = w.settings.app_mode == AppMode::Development;
    if development && !w.settings.owner_premium {
        return plain(StatusCode::FORBIDDEN, OWNER_PREMIUM_REQUIRED);
    }
    let user = match &grant {
        Some(g) => match w.user(&g.user).cloned() {
            Some(u) => Some(u),
            None => return unauthorized(w, "invalid_token", "Invalid access token"),
        },
        None => None,
    };
    if development && user.as_ref().is_some_and(|u| !u.registered) {
        return plain(StatusCode::FORBIDDEN, USER_NOT_REGISTERED);
    }
    let scopes = grant.map(|g| g.scopes).unwrap_or_default();
    let path = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let query_map: HashMap<String, String> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    if echo {
        return echo_answer(method, path, query, body, user, &scopes);
    }
    if let Some(status) = withdrawn(method.as_str(), path, development) {
        let message = if status == StatusCode::NOT_FOUND {
            "Service not found"
        } else {
            "Forbidden"
        };
        return api_error(status, message);
    }
    if user.is_none() && (path == "/v1/me" || path.starts_with("/v1/me/")) {
        return api_error(StatusCode::NOT_FOUND, "Invalid username");
    }
    let mut missing = scope::missing_for(method.as_str(), path, &scopes);
    if path == "/v1/me/library" {
        missing.extend(library_scopes_missing(&query_map, body, &scopes));
    }
    if !missing.is_empty() {
        return api_error(StatusCode::FORBIDDEN, "Insufficient client scope");
    }
    let mut c = Ctx {
        w,
        method: method.as_str(),
        path,
        query: query_map,
        body,
        base,
        user,
        scopes,
    };
    route(&mut c).unwrap_or_else(|| api_error(StatusCode::NOT_FOUND, "Service not found"))
}

/// The `Authorization` scheme the Web API takes (compared ignoring case).
const BEARER: &str = "bearer ";

/// Checks the bearer token: present, known, not revoked, not expired, and
/// the app not rate limited. The token's grant, or None for an app token
/// (client credentials); the error answer otherwise.
fn authenticate(w: &mut World, headers: &HeaderMap) -> Result<Option<Grant>, Box<Response<Body>>> {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(Box::new(unauthorized(
            w,
            "missing_token",
            "No token provided",
        )));
    };
    let auth = auth.to_str().unwrap_or_default();
    let Some(token) = auth
        .get(..BEARER.len())
        .filter(|p| p.eq_ignore_ascii_case(BEARER))
        .and_then(|_| auth.get(BEARER.len()..))
        .map(str::trim)
    else {
        return Err(Box::new(api_error(
            StatusCode::BAD_REQUEST,
            "Only valid bearer authentication supported",
        )));
    };
    let Some(rec) = w.access.get(token).cloned() else {
        return Err(Box::new(unauthorized(
            w,
            "invalid_token",
            "Invalid access token",
        )));
    };
    let grant = match rec.grant {
        Some(id) => match w.grants.get(&id).cloned() {
            Some(g) if !g.revoked => Some(g),
            _ => {
                return Err(Box::new(unauthorized(
                    w,
                    "invalid_token",
                    "The access token was revoked",
                )));
            }
        },
        None => None,
    };
    if w.now_ms() >= rec.expires_at_ms {
        return Err(Box::new(unauthorized(
            w,
            "invalid_token",
            "The access token expired",
        )));
    }
    if let Some(hit) = w.rate_limited(Endpoint::Api, &rec.client_id) {
        let mut r = if hit.quota {
            reasoned(
                StatusCode::TOO_MANY_REQUESTS,
                "API rate limit exceeded",
                "QUOTA_EXCEEDED",
            )
        } else {
            api_error(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded")
        };
        r.headers_mut()
            .insert(header::RETRY_AFTER, hit.retry_after_secs.into());
        return Err(Box::new(r));
    }
    Ok(grant)
}

/// The echo endpoint's answer: the request as the emulator understood it,
/// after the scope check the real path would make.
fn echo_answer(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    user: Option<User>,
    scopes: &Scopes,
) -> Response<Body> {
    if !scope::missing_for(method.as_str(), path, scopes).is_empty() {
        return api_error(StatusCode::FORBIDDEN, "Insufficient client scope");
    }
    let text = String::from_utf8_lossy(body).into_owned();
    let body_json = serde_json::from_slice(body).unwrap_or(Value::String(text));
    ok(json!({
        "method": method.as_str(), "path": path, "query": query.unwrap_or(""),
        "body": body_json, "user": user.map(|u| u.id),
    }))
}

/// Endpoints an app may no longer call: recommendations, audio features and
/// related artists since November 2024 for new apps; in development mode
/// (February 2026) also the old playlist-tracks paths, artists' top tracks,
/// batch lookups, other users' profiles and playlists, browse, and the
/// per-type library endpoints that `/v1/me/library` replaced.
fn withdrawn(method: &str, path: &str, development: bool) -> Option<StatusCode> {
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match segs.as_slice() {
        ["recommendations", ..] => return Some(StatusCode::NOT_FOUND),
        ["audio-features", ..] | ["audio-analysis", ..] | ["artists", _, "related-artists"] => {
            return Some(StatusCode::FORBIDDEN);
        }
        _ => {}
    }
    if !development {
        return None;
    }
    let gone = matches!(
        (method, segs.as_slice()),
        (_, ["playlists", _, "tracks" | "followers"])
            | (_, ["artists", _, "top-tracks"])
            | (_, ["users", ..])
            | (_, ["browse", ..])
            | ("GET", ["tracks"] | ["albums"] | ["artists"])
            | (
                "PUT" | "DELETE",
                [
                    "me",
                    "tracks" | "albums" | "episodes" | "shows" | "audiobooks" | "following"
                ]
            )
    );
    gone.then_some(StatusCode::FORBIDDEN)
}

/// The URIs of a library request (`uris` in the query or the JSON body).
fn library_uris(query: &HashMap<String, String>, body: &[u8]) -> Vec<String> {
    if let Some(q) = query.get("uris") {
        return q.split(',').map(str::to_owned).collect();
    }
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v["uris"].as_array().map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// What saving these URIs needs, per kind, as the endpoints `/v1/me/library`
/// replaced: the library scope for tracks and albums, the follow scope for
/// artists and users, a playlist-modify scope for playlists.
fn library_scopes_missing(
    query: &HashMap<String, String>,
    body: &[u8],
    granted: &Scopes,
) -> Vec<String> {
    let mut missing = Vec::new();
    for uri in library_uris(query, body) {
        let need: &[&str] = match uri.split(':').nth(1) {
            Some("artist" | "user") => &["user-follow-modify"],
            Some("playlist") => &["playlist-modify-public", "playlist-modify-private"],
            _ => &["user-library-modify"],
        };
        if !need.iter().any(|s| granted.contains(s)) {
            missing.push(need[0].to_owned());
        }
    }
    missing
}

fn route(c: &mut Ctx<'_>) -> Option<Response<Body>> {
    if let Some(r) = crate::player::handle(c) {
        return Some(r);
    }
    let path = c.path.to_owned();
    let segs: Vec<&str> = path.strip_prefix("/v1/")?.split('/').collect();
    let shapes = c.shapes();
    let r = match (c.method, segs.as_slice()) {
        ("GET", ["me"]) => ok(me(c)),
        ("GET", ["search"]) => search(c),
        ("GET", ["me", "playlists"]) => my_playlists(c)?,
        ("POST", ["me", "playlists"]) => create_playlist(c),
        ("GET", ["playlists", id]) => {
            let p = c.w.playlists.iter().find(|p| p.id == *id)?;
            ok(shapes.playlist(p, c.display_name(&p.owner).as_deref()))
        }
        ("GET", ["playlists", id, field @ ("items" | "tracks")]) => playlist_items(c, id, field)?,
        ("POST", ["playlists", id, "items"]) => add_items(c, id),
        ("GET", ["me", "library", "contains"]) => library_contains(c),
        (m @ ("PUT" | "DELETE"), ["me", "library"]) => edit_library(c, m == "PUT")?,
        ("GET", ["tracks", id]) => ok(shapes.track(Track::by_id(id)?)),
        ("GET", ["albums", id]) => ok(shapes.album(album_by_id(id)?)),
        ("GET", ["albums", id, "tracks"]) => {
            let i = album_by_id(id)?;
            let tracks: Vec<Track> = (i * 4..i * 4 + 4).map(Track).collect();
            ok(
                shapes.page(&format!("albums/{id}/tracks"), &tracks, 0, 20, |t| {
                    shapes.track(*t)
                }),
            )
        }
        ("GET", ["artists", id]) => ok(shapes.artist(artist_by_id(id)?)),
        ("GET", ["artists", id, "albums"]) => {
            let a = artist_by_id(id)?;
            let albums: Vec<usize> = (0..ALBUMS.len())
                .filter(|i| ALBUMS[*i].artist == a)
                .collect();
            ok(
                shapes.page(&format!("artists/{id}/albums"), &albums, 0, 20, |i| {
                    shapes.album_simple(*i)
                }),
            )
        }
        // Extended quota mode only (`withdrawn` refused them in development mode).
        ("GET", ["artists", id, "top-tracks"]) => {
            let a = artist_by_id(id)?;
            let tracks: Vec<Value> = Track::all()
                .filter(|t| t.album().artist == a)
                .map(|t| shapes.track(t))
                .collect();
            ok(json!({ "tracks": tracks }))
        }
        ("GET", [kind @ ("tracks" | "albums" | "artists")]) => batch(c, kind),
        ("GET", ["users", id]) => {
            let u = c.w.user(id)?;
            ok(json!({
                "display_name": u.display_name, "id": u.id, "type": "user", "images": [],
                "followers": {"href": null, "total": 0},
                "uri": format!("spotify:user:{}", u.id),
            }))
        }
        _ => return None,
    };
    Some(r)
}

/// Spotify's default `limit` for pages of playlists and of playlist items.
const PLAYLIST_PAGE_DEFAULT: usize = 20;
/// The largest `limit` Spotify takes for those pages.
const PLAYLIST_PAGE_MAX: usize = 50;

/// `GET /v1/me/playlists`: the user's own playlists, one page.
fn my_playlists(c: &Ctx<'_>) -> Option<Response<Body>> {
    let user = c.user.as_ref()?;
    let shapes = c.shapes();
    let (offset, limit) = match paging(&c.query, PLAYLIST_PAGE_DEFAULT, PLAYLIST_PAGE_MAX) {
        Ok(p) => p,
        Err(r) => return Some(*r),
    };
    let own: Vec<&Playlist> =
        c.w.playlists
            .iter()
            .filter(|p| p.owner == user.id)
            .collect();
    Some(ok(shapes.page("me/playlists", &own, offset, limit, |p| {
        shapes.playlist_simple(p, Some(&user.display_name))
    })))
}

/// `GET /v1/playlists/{id}/items` (or the old `/tracks`): one page; only the
/// owner's in development mode.
fn playlist_items(c: &Ctx<'_>, id: &str, field: &str) -> Option<Response<Body>> {
    let p = c.w.playlists.iter().find(|p| p.id == id)?;
    let own = c.user.as_ref().is_some_and(|u| u.id == p.owner);
    if c.mode() == AppMode::Development && !own {
        return Some(api_error(StatusCode::FORBIDDEN, "Forbidden"));
    }
    let (offset, limit) = match paging(&c.query, PLAYLIST_PAGE_DEFAULT, PLAYLIST_PAGE_MAX) {
        Ok(p) => p,
        Err(r) => return Some(*r),
    };
    let name = c.display_name(&p.owner);
    Some(ok(c.shapes().playlist_items(
        p,
        name.as_deref(),
        field,
        offset,
        limit,
    )))
}

/// `GET /v1/me/library/contains`: whether each URI is saved.
fn library_contains(c: &Ctx<'_>) -> Response<Body> {
    let saved = c
        .user
        .as_ref()
        .and_then(|u| c.w.library.get(&u.id))
        .cloned()
        .unwrap_or_default();
    let list: Vec<bool> = library_uris(&c.query, &[])
        .iter()
        .map(|u| saved.contains(u))
        .collect();
    ok(json!(list))
}

/// `PUT` (save) or `DELETE` (remove) on `/v1/me/library`.
fn edit_library(c: &mut Ctx<'_>, save: bool) -> Option<Response<Body>> {
    let uris = library_uris(&c.query, c.body);
    if uris.is_empty() {
        return Some(api_error(StatusCode::BAD_REQUEST, "Missing uris"));
    }
    let user = c.user.as_ref()?.id.clone();
    let saved = c.w.library.entry(user).or_default();
    for u in uris {
        if save {
            saved.insert(u);
        } else {
            saved.remove(&u);
        }
    }
    // 200 with no body, as the per-type endpoints it replaced.
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::OK;
    Some(r)
}

/// `GET /v1/{tracks,albums,artists}?ids=`: a batch lookup, null for unknown ids.
fn batch(c: &Ctx<'_>, kind: &str) -> Response<Body> {
    let shapes = c.shapes();
    let ids = c.query.get("ids").cloned().unwrap_or_default();
    let items: Vec<Value> = ids
        .split(',')
        .map(|id| match kind {
            "tracks" => Track::by_id(id).map(|t| shapes.track(t)),
            "albums" => album_by_id(id).map(|i| shapes.album(i)),
            _ => artist_by_id(id).map(|i| shapes.artist(i)),
        })
        .map(|v| v.unwrap_or(Value::Null))
        .collect();
    ok(json!({ kind: items }))
}

/// `limit` and `offset` from the query, within `max` (400 `Invalid limit` /
/// `Invalid offset` outside it, as Spotify).
fn paging(
    q: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<(usize, usize), Box<Response<Body>>> {
    let limit = match q.get("limit") {
        None => default,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(Box::new(api_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid limit",
                )));
            }
        },
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n <= 1000 => n,
            _ => {
                return Err(Box::new(api_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid offset",
                )));
            }
        },
    };
    Ok((offset, limit))
}

fn me(c: &Ctx<'_>) -> Value {
    let Some(user) = &c.user else {
        return Value::Null;
    };
    let mut v = json!({
        "display_name": user.display_name,
        "external_urls": {"spotify": format!("https://open.spotify.com/user/{}", user.id)},
        "href": format!("{}/v1/users/{}", c.base, user.id),
        "id": user.id,
        "images": [],
        "type": "user",
        "uri": format!("spotify:user:{}", user.id),
    });
    // Development mode (2026) removed these fields whatever the scopes.
    if c.mode() == AppMode::Extended {
        v["followers"] = json!({"href": null, "total": 0});
        if c.scopes.contains("user-read-email") {
            v["email"] = json!(user.email);
        }
        if c.scopes.contains("user-read-private") {
            v["country"] = json!(user.country);
            v["product"] = json!(user.product);
            v["explicit_content"] = json!({"filter_enabled": false, "filter_locked": false});
        }
    }
    v
}

/// `GET /v1/search`: tracks, artists, albums and public playlists whose text
/// has every word of `q`; pages of at most 10 (default 5) in development
/// mode, 50 (default 20) in extended quota mode.
fn search(c: &Ctx<'_>) -> Response<Body> {
    let q = match c.query.get("q").map(|s| s.trim()) {
        Some(q) if !q.is_empty() => q.to_owned(),
        _ => return api_error(StatusCode::BAD_REQUEST, "No search query"),
    };
    let Some(types) = c.query.get("type") else {
        return api_error(StatusCode::BAD_REQUEST, "Missing parameter type");
    };
    let (default, max) = match c.mode() {
        AppMode::Development => (5, 10),
        AppMode::Extended => (20, 50),
    };
    let (offset, limit) = match paging(&c.query, default, max) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let shapes = c.shapes();
    let encoded: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
    let mut out = serde_json::Map::new();
    for t in types.split(',').map(str::trim) {
        let link_query = format!("q={encoded}&type={t}");
        let page = |all: &[Value]| {
            shapes.page_with_query("search", &link_query, all, offset, limit, Clone::clone)
        };
        let (key, found): (&str, Vec<Value>) = match t {
            "track" => (
                "tracks",
                Track::all()
                    .filter(|t| {
                        matches(
                            &q,
                            &format!("{} {} {}", t.name(), t.artist().name, t.album().name),
                        )
                    })
                    .map(|t| shapes.track(t))
                    .collect(),
            ),
            "artist" => (
                "artists",
                (0..ARTISTS.len())
                    .filter(|i| matches(&q, ARTISTS[*i].name))
                    .map(|i| shapes.artist(i))
                    .collect(),
            ),
            "album" => (
                "albums",
                (0..ALBUMS.len())
                    .filter(|i| {
                        matches(
                            &q,
                            &format!("{} {}", ALBUMS[*i].name, ARTISTS[ALBUMS[*i].artist].name),
                        )
                    })
                    .map(|i| shapes.album_simple(i))
                    .collect(),
            ),
            "playlist" => (
                "playlists",
                c.w.playlists
                    .iter()
                    .filter(|p| p.public && matches(&q, &p.name))
                    .map(|p| shapes.playlist_simple(p, c.display_name(&p.owner).as_deref()))
                    .collect(),
            ),
            "show" => ("shows", Vec::new()),
            "episode" => ("episodes", Vec::new()),
            "audiobook" => ("audiobooks", Vec::new()),
            _ => {
                return api_error(StatusCode::BAD_REQUEST, "Bad search type field");
            }
        };
        out.insert(key.to_owned(), page(&found));
    }
    ok(Value::Object(out))
}

/// `POST /v1/me/playlists`: a new playlist owned by the user (201).
fn create_playlist(c: &mut Ctx<'_>) -> Response<Body> {
    let Some(user) = c.user.clone() else {
        return api_error(StatusCode::NOT_FOUND, "Invalid username");
    };
    let body: Value = serde_json::from_slice(c.body).unwrap_or(Value::Null);
    let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
        return api_error(StatusCode::BAD_REQUEST, "Missing required field: name");
    };
    let n = c.w.playlists.iter().filter(|p| p.owner == user.id).count() + 1;
    let p = Playlist {
        id: playlist_id(&user.id, n),
        name: name.to_owned(),
        description: body["description"].as_str().unwrap_or_default().to_owned(),
        owner: user.id.clone(),
        public: body["public"].as_bool().unwrap_or(true),
        tracks: Vec::new(),
        snapshot: 1,
    };
    let v = c.shapes().playlist(&p, Some(&user.display_name));
    c.w.playlists.push(p);
    json_response(StatusCode::CREATED, &v)
}

/// `POST /v1/playlists/{id}/items`: adds tracks to one of the user's
/// playlists (201 with the new snapshot id).
fn add_items(c: &mut Ctx<'_>, id: &str) -> Response<Body> {
    let user = c.user.as_ref().map(|u| u.id.clone());
    let uris = library_uris(&c.query, c.body);
    let tracks: Option<Vec<Track>> = uris.iter().map(|u| Track::by_uri(u)).collect();
    let Some(p) = c.w.playlists.iter_mut().find(|p| p.id == id) else {
        return api_error(StatusCode::NOT_FOUND, "Resource not found");
    };
    if user.as_deref() != Some(p.owner.as_str()) {
        return api_error(StatusCode::FORBIDDEN, "Forbidden");
    }
    let Some(tracks) = tracks.filter(|t| !t.is_empty()) else {
        return api_error(StatusCode::BAD_REQUEST, "Invalid track uri");
    };
    p.tracks.extend(tracks);
    p.snapshot += 1;
    let snap = format!("snap{}", p.snapshot);
    json_response(StatusCode::CREATED, &json!({ "snapshot_id": snap }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawn_endpoints_depend_on_the_mode() {
        let dev = |m, p| withdrawn(m, p, true);
        let ext = |m, p| withdrawn(m, p, false);
        assert_eq!(
            dev("GET", "/v1/playlists/x/tracks"),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(ext("GET", "/v1/playlists/x/tracks"), None);
        assert_eq!(dev("GET", "/v1/playlists/x/items"), None);
        assert_eq!(dev("GET", "/v1/tracks"), Some(StatusCode::FORBIDDEN));
        assert_eq!(dev("GET", "/v1/tracks/x"), None);
        assert_eq!(dev("PUT", "/v1/me/tracks"), Some(StatusCode::FORBIDDEN));
        assert_eq!(dev("GET", "/v1/me/tracks"), None);
        assert_eq!(
            ext("GET", "/v1/recommendations"),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            ext("GET", "/v1/audio-features/x"),
            Some(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn library_scopes_follow_the_uri_kind() {
        let q: HashMap<String, String> = [(
            "uris".to_owned(),
            "spotify:track:a,spotify:artist:b".to_owned(),
        )]
        .into();
        let granted = Scopes::parse("user-library-modify");
        assert_eq!(
            library_scopes_missing(&q, b"", &granted),
            vec!["user-follow-modify".to_owned()]
        );
    }

    #[test]
    fn paging_refuses_limits_past_the_mode() {
        let q =
            |l: &str| -> HashMap<String, String> { [("limit".to_owned(), l.to_owned())].into() };
        assert_eq!(paging(&q("10"), 5, 10).ok(), Some((0, 10)));
        assert!(paging(&q("11"), 5, 10).is_err());
        assert!(paging(&q("x"), 5, 10).is_err());
        assert_eq!(paging(&HashMap::new(), 5, 10).ok(), Some((0, 5)));
    }
}
