//! Playback: devices, what is playing, the queue, and the commands that move
//! them, per user, as `/v1/me/player` shows them.
//!
//! Player commands are where apps meet Spotify's least obvious answers: 204
//! with no body on success, 404 `NO_ACTIVE_DEVICE` when no Spotify client is
//! running, 403 `PREMIUM_REQUIRED` for a free user. Progress follows the
//! emulator's clock, so `/_emulator/advance` moves a playing track along.

use std::collections::VecDeque;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::catalogue::{ALBUMS, Track, album_by_id};
use crate::webapi::{Ctx, api_error, no_content, ok, reasoned};

/// A device on the user's account (a Spotify client that could play).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Device {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub volume_percent: u8,
}

/// The devices every user has.
pub(crate) fn default_devices() -> Vec<Device> {
    let d = |id: &str, name: &str, kind: &str, volume_percent| Device {
        id: id.into(),
        name: name.into(),
        kind: kind.into(),
        volume_percent,
    };
    vec![
        d(
            "5emuDeviceLaptop00000000000000000000001",
            "Emulated Laptop",
            "Computer",
            70,
        ),
        d(
            "5emuDevicePhone000000000000000000000002",
            "Emulated Phone",
            "Smartphone",
            50,
        ),
        d(
            "5emuDeviceSpeaker0000000000000000000003",
            "Kitchen Speaker",
            "Speaker",
            30,
        ),
    ]
}

/// One user's playback.
#[derive(Debug, Clone)]
pub(crate) struct Player {
    /// The active device's id (None: no Spotify client is active).
    pub active: Option<String>,
    pub is_playing: bool,
    /// What plays after the current track when the queue is empty.
    pub context: Vec<Track>,
    pub context_uri: Option<String>,
    /// Where in `context` playback is.
    pub position: usize,
    pub current: Track,
    /// Tracks added with `POST /v1/me/player/queue`, played first.
    pub queue: VecDeque<Track>,
    /// Tracks played before, for `previous`.
    pub history: Vec<Track>,
    /// Progress at `anchor_ms` (emulator clock).
    pub progress_ms: i64,
    pub anchor_ms: i64,
}

impl Player {
    /// The first device active, the catalogue's first track playing.
    pub(crate) fn new(devices: &[Device], now_ms: i64) -> Self {
        Self {
            active: devices.first().map(|d| d.id.clone()),
            is_playing: true,
            context: Track::all().collect(),
            context_uri: None,
            position: 0,
            current: Track(0),
            queue: VecDeque::new(),
            history: Vec::new(),
            progress_ms: 42_000,
            anchor_ms: now_ms,
        }
    }

    /// Progress now: playing tracks move with the clock, up to their end.
    pub(crate) fn progress(&self, now_ms: i64) -> i64 {
        if self.is_playing {
            (self.progress_ms + (now_ms - self.anchor_ms).max(0)).min(self.current.duration_ms())
        } else {
            self.progress_ms
        }
    }

    fn freeze(&mut self, now_ms: i64) {
        self.progress_ms = self.progress(now_ms);
        self.anchor_ms = now_ms;
    }

    fn start(&mut self, t: Track, now_ms: i64) {
        self.history.push(self.current);
        self.current = t;
        self.progress_ms = 0;
        self.anchor_ms = now_ms;
        self.is_playing = true;
    }

    fn next(&mut self, now_ms: i64) {
        let t = match self.queue.pop_front() {
            Some(t) => t,
            None => {
                self.position = (self.position + 1) % self.context.len().max(1);
                self.context.get(self.position).copied().unwrap_or(Track(0))
            }
        };
        self.start(t, now_ms);
    }

    fn previous(&mut self, now_ms: i64) {
        // Like Spotify's clients: a few seconds in, "previous" restarts the track.
        if self.progress(now_ms) > 3_000 {
            self.progress_ms = 0;
            self.anchor_ms = now_ms;
            return;
        }
        if let Some(t) = self.history.pop() {
            self.current = t;
            self.position = self
                .context
                .iter()
                .position(|c| *c == t)
                .unwrap_or(self.position);
        }
        self.progress_ms = 0;
        self.anchor_ms = now_ms;
        self.is_playing = true;
    }
}

fn player_error(status: StatusCode, what: &str, reason: &str) -> Response<Body> {
    reasoned(status, &format!("Player command failed: {what}"), reason)
}

/// How many tracks `GET /v1/me/player/queue` lists at most, as Spotify.
const QUEUE_LEN: usize = 20;
/// How many coming tracks of the playing context the queue shows after the
/// user's queued ones: enough to fill a page, without walking the whole context.
const QUEUE_CONTEXT_AHEAD: usize = 10;

/// What one player request sees of the world besides its player.
struct View<'a> {
    now: i64,
    /// Whether the user has devices at all (`settings.active_device`).
    enabled: bool,
    devices: &'a [Device],
    /// The active device, if devices are enabled.
    active: Option<String>,
    shapes: crate::catalogue::Shapes<'a>,
}

impl View<'_> {
    fn device_json(&self, d: &Device) -> Value {
        json!({
            "id": d.id, "is_active": Some(&d.id) == self.active.as_ref(),
            "is_private_session": false, "is_restricted": false, "name": d.name,
            "type": d.kind, "volume_percent": d.volume_percent, "supports_volume": true,
        })
    }

    fn playing(&self, p: &Player) -> Value {
        let context = match &p.context_uri {
            Some(uri) => json!({"type": uri.split(':').nth(1), "uri": uri, "href": null,
                                "external_urls": {}}),
            None => Value::Null,
        };
        json!({
            "timestamp": self.now, "context": context, "progress_ms": p.progress(self.now),
            "item": self.shapes.track(p.current), "currently_playing_type": "track",
            "actions": {"disallows": if p.is_playing { json!({"resuming": true}) } else { json!({"pausing": true}) }},
            "is_playing": p.is_playing,
        })
    }

    fn has_device(&self, id: &str) -> bool {
        self.enabled && self.devices.iter().any(|d| d.id == id)
    }
}

/// Answers `/v1/me/player...`, or `None` when the path is not a player path.
pub(crate) fn handle(c: &mut Ctx<'_>) -> Option<Response<Body>> {
    let path = c.path.strip_prefix("/v1/me/player")?;
    let user = c.user.as_ref()?.clone();
    let now = c.w.now_ms();
    let enabled = c.w.settings.active_device;
    let devices = c.w.devices.clone();
    let premium = user.product == "premium";
    let p =
        c.w.players
            .entry(user.id.clone())
            .or_insert_with(|| Player::new(&devices, now));
    let view = View {
        now,
        enabled,
        devices: &devices,
        active: if enabled { p.active.clone() } else { None },
        shapes: crate::catalogue::Shapes {
            base: &c.base,
            mode: c.w.settings.app_mode,
        },
    };
    let r = match (c.method, path) {
        ("GET", _) => read(path, p, &view)?,
        (m, cmd) if !is_command(m, cmd) => return None,
        _ if !premium => player_error(
            StatusCode::FORBIDDEN,
            "Premium required",
            "PREMIUM_REQUIRED",
        ),
        ("PUT", "" | "/") => transfer(p, c.body, &view),
        (m, cmd) => {
            let target = match c.query.get("device_id") {
                Some(id) if view.has_device(id) => Some(id.clone()),
                Some(_) => return Some(api_error(StatusCode::NOT_FOUND, "Device not found")),
                None => view.active.clone(),
            };
            let Some(target) = target else {
                return Some(player_error(
                    StatusCode::NOT_FOUND,
                    "No active device found",
                    "NO_ACTIVE_DEVICE",
                ));
            };
            p.active = Some(target);
            command(m, cmd, p, &c.query, c.body, now)
        }
    };
    Some(r)
}

/// The `GET` paths: playback state, devices, what is playing, the queue;
/// `None` for any other path.
fn read(path: &str, p: &Player, view: &View<'_>) -> Option<Response<Body>> {
    let r = match path {
        "" | "/" => match view
            .active
            .as_ref()
            .and_then(|a| view.devices.iter().find(|d| d.id == *a))
        {
            None => no_content(),
            Some(d) => {
                let mut v = view.playing(p);
                v["device"] = view.device_json(d);
                v["shuffle_state"] = json!(false);
                v["smart_shuffle"] = json!(false);
                v["repeat_state"] = json!("off");
                ok(v)
            }
        },
        "/devices" => {
            let list: Vec<Value> = if view.enabled {
                view.devices.iter().map(|d| view.device_json(d)).collect()
            } else {
                Vec::new()
            };
            ok(json!({ "devices": list }))
        }
        "/currently-playing" => {
            if view.active.is_none() {
                no_content()
            } else {
                ok(view.playing(p))
            }
        }
        "/queue" => {
            let queue: Vec<Value> = p
                .queue
                .iter()
                .copied()
                .chain(
                    p.context
                        .iter()
                        .copied()
                        .cycle()
                        .skip(p.position + 1)
                        .take(QUEUE_CONTEXT_AHEAD),
                )
                .take(QUEUE_LEN)
                .map(|t| view.shapes.track(t))
                .collect();
            let current = view.active.as_ref().map(|_| view.shapes.track(p.current));
            ok(json!({"currently_playing": current, "queue": queue}))
        }
        _ => return None,
    };
    Some(r)
}

/// `PUT /v1/me/player`: transfer playback to `device_ids[0]`.
fn transfer(p: &mut Player, body: &[u8], view: &View<'_>) -> Response<Body> {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(id) = body["device_ids"].get(0).and_then(Value::as_str) else {
        return api_error(StatusCode::BAD_REQUEST, "Required field device_ids missing");
    };
    if !view.has_device(id) {
        return api_error(StatusCode::NOT_FOUND, "Device not found");
    }
    p.freeze(view.now);
    p.active = Some(id.to_owned());
    if body["play"].as_bool() == Some(true) {
        p.is_playing = true;
    }
    no_content()
}

/// A playback command on the target device (already made active).
fn command(
    m: &str,
    cmd: &str,
    p: &mut Player,
    query: &std::collections::HashMap<String, String>,
    body: &[u8],
    now: i64,
) -> Response<Body> {
    match (m, cmd) {
        ("PUT", "/play") => match play(p, body, now) {
            Ok(()) => no_content(),
            Err(r) => *r,
        },
        ("PUT", "/pause") if !p.is_playing => {
            player_error(StatusCode::FORBIDDEN, "Restriction violated", "UNKNOWN")
        }
        ("PUT", "/pause") => {
            p.freeze(now);
            p.is_playing = false;
            no_content()
        }
        ("POST", "/next") => {
            p.next(now);
            no_content()
        }
        ("POST", "/previous") => {
            p.previous(now);
            no_content()
        }
        // POST /queue, the last command `is_command` lets through.
        _ => match query.get("uri").and_then(|u| Track::by_uri(u)) {
            Some(t) => {
                p.queue.push_back(t);
                no_content()
            }
            None => api_error(StatusCode::BAD_REQUEST, "Invalid track uri"),
        },
    }
}

/// The player commands the emulator knows (transfer is `PUT` on the root).
fn is_command(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("PUT", "" | "/" | "/play" | "/pause") | ("POST", "/next" | "/previous" | "/queue")
    )
}

/// `PUT /v1/me/player/play`: resume, or start `uris` or a `context_uri`
/// (an album or one of the user's playlists) at `offset`.
fn play(p: &mut Player, body: &[u8], now: i64) -> Result<(), Box<Response<Body>>> {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let bad = |m: &str| Err(Box::new(api_error(StatusCode::BAD_REQUEST, m)));
    let (list, uri) = if let Some(uris) = body["uris"].as_array() {
        let tracks: Option<Vec<Track>> = uris
            .iter()
            .map(|u| u.as_str().and_then(Track::by_uri))
            .collect();
        match tracks {
            Some(t) if !t.is_empty() => (t, None),
            _ => return bad("Invalid track uri"),
        }
    } else if let Some(ctx) = body["context_uri"].as_str() {
        match ctx.strip_prefix("spotify:album:").and_then(album_by_id) {
            Some(i) => (
                (i * 4..i * 4 + ALBUMS[i].tracks.len()).map(Track).collect(),
                Some(ctx),
            ),
            None => return bad("Invalid context uri"),
        }
    } else {
        // Resume where it was.
        if !p.is_playing {
            p.anchor_ms = now;
            p.is_playing = true;
        }
        return Ok(());
    };
    let start = match (&body["offset"]["position"], body["offset"]["uri"].as_str()) {
        (Value::Number(n), _) => n.as_u64().unwrap_or(0) as usize,
        (_, Some(u)) => list
            .iter()
            .position(|t| Some(*t) == Track::by_uri(u))
            .unwrap_or(0),
        _ => 0,
    };
    let Some(first) = list.get(start).copied() else {
        return bad("Offset out of range");
    };
    p.context = list;
    p.context_uri = uri.map(str::to_owned);
    p.position = start;
    p.start(first, now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_the_clock_while_playing_and_stops_at_the_end() {
        let mut p = Player::new(&default_devices(), 1_000);
        assert_eq!(p.progress(11_000), 52_000);
        p.freeze(11_000);
        p.is_playing = false;
        assert_eq!(p.progress(99_000), 52_000, "paused");
        p.is_playing = true;
        assert_eq!(p.progress(10_000_000), p.current.duration_ms());
    }

    #[test]
    fn next_takes_the_queue_first_and_previous_goes_back() {
        let mut p = Player::new(&default_devices(), 0);
        p.queue.push_back(Track(9));
        p.next(0);
        assert_eq!(p.current, Track(9));
        p.next(0);
        assert_eq!(p.current, Track(1), "then the context, after where it was");
        p.previous(0);
        assert_eq!(p.current, Track(9));
        p.start(Track(3), 0);
        p.previous(10_000);
        assert_eq!(p.current, Track(3), "ten seconds in: restart");
        assert_eq!(p.progress_ms, 0);
    }
}
