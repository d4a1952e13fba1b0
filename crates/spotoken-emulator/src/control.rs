//! The control plane under `/_emulator/`: JSON endpoints that change behaviour at
//! run time and read the counters. Anything a test does through the in-process
//! [`Emulator`](crate::Emulator) handle can be done here with curl.
//!
//! | method and path | body | does |
//! |---|---|---|
//! | `GET /_emulator/settings` | | current [`Settings`] |
//! | `PATCH /_emulator/settings` | partial settings | merges the given fields |
//! | `POST /_emulator/failures` | a [`Failure`] or a list | queues injected failures |
//! | `GET`/`DELETE /_emulator/failures` | | lists / clears the queue |
//! | `POST /_emulator/expire-access-tokens` | | every access token expires now |
//! | `POST /_emulator/revoke` | `{"user": "alice"}` or `{}` | revokes one user's or all grants |
//! | `POST /_emulator/advance` | `{"seconds": 61}` | moves the emulator's clock |
//! | `POST /_emulator/reset` | | a new world (registered clients stay) |
//! | `GET`/`DELETE /_emulator/counters` | | reads / zeroes the [`Counters`] |
//! | `GET`/`POST /_emulator/clients` | a [`Client`] | lists / registers clients |
//! | `GET /_emulator/users` | | the emulated users |
//! | `GET /_emulator/devices` | | the devices, and each user's active one |
//! | `POST /_emulator/devices` | `{"user": "alice", "active": "id"}` | switches a user's active device (`null`: none) |

use axum::body::Body;
use axum::extract::State;
use axum::http::{Response, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{Client, Counters, Failure, Settings, World};
use crate::{Shared, json_response};

/// The control-plane routes (nested under `/_emulator`).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/settings", get(get_settings).patch(patch_settings))
        .route(
            "/failures",
            post(add_failures).get(list_failures).delete(clear_failures),
        )
        .route("/expire-access-tokens", post(expire))
        .route("/revoke", post(revoke))
        .route("/advance", post(advance))
        .route("/reset", post(reset))
        .route("/counters", get(counters).delete(clear_counters))
        .route("/clients", get(list_clients).post(add_client))
        .route("/users", get(users))
        .route("/devices", get(devices).post(switch_device))
}

/// Replaces the world with a new one, keeping the registered clients.
pub fn reset_world(shared: &Shared) {
    let mut w = shared.lock();
    let clients = std::mem::take(&mut w.clients);
    *w = World::new(None);
    w.clients = clients;
}

fn bad_request(msg: impl std::fmt::Display) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": msg.to_string()}))
}

async fn get_settings(State(s): State<Shared>) -> Json<Settings> {
    Json(s.lock().settings.clone())
}

async fn patch_settings(State(s): State<Shared>, Json(patch): Json<Value>) -> Response<Body> {
    let mut w = s.lock();
    let Ok(mut current) = serde_json::to_value(&w.settings) else {
        return bad_request("settings could not be serialized");
    };
    let (Value::Object(cur), Value::Object(p)) = (&mut current, patch) else {
        return bad_request("expected a JSON object");
    };
    for (k, v) in p {
        cur.insert(k, v);
    }
    match serde_json::from_value::<Settings>(current) {
        Ok(new) => {
            w.set_settings(new);
            json_response(StatusCode::OK, &json!(w.settings))
        }
        Err(e) => bad_request(e),
    }
}

async fn add_failures(State(s): State<Shared>, Json(v): Json<Value>) -> Response<Body> {
    let list: Result<Vec<Failure>, _> = match v {
        Value::Array(_) => serde_json::from_value(v),
        other => serde_json::from_value(other).map(|f| vec![f]),
    };
    match list {
        Ok(list) => {
            let mut w = s.lock();
            let n = list.len();
            w.failures.extend(list);
            json_response(
                StatusCode::OK,
                &json!({"queued": n, "pending": w.failures.len()}),
            )
        }
        Err(e) => bad_request(e),
    }
}

async fn list_failures(State(s): State<Shared>) -> Json<Vec<Failure>> {
    Json(s.lock().failures.iter().cloned().collect())
}

async fn clear_failures(State(s): State<Shared>) -> Json<Value> {
    s.lock().failures.clear();
    Json(json!({"pending": 0}))
}

async fn expire(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"expired": s.lock().expire_access_tokens()}))
}

#[derive(Deserialize, Default)]
struct RevokeBody {
    user: Option<String>,
}

async fn revoke(State(s): State<Shared>, body: Option<Json<RevokeBody>>) -> Json<Value> {
    let user = body.and_then(|Json(b)| b.user);
    Json(json!({"revoked": s.lock().revoke(user.as_deref())}))
}

#[derive(Deserialize)]
struct AdvanceBody {
    seconds: u64,
}

async fn advance(State(s): State<Shared>, Json(b): Json<AdvanceBody>) -> Json<Value> {
    let mut w = s.lock();
    w.offset_ms += (b.seconds as i64) * 1000;
    Json(json!({"offset_secs": w.offset_ms / 1000}))
}

async fn reset(State(s): State<Shared>) -> Json<Value> {
    reset_world(&s);
    Json(json!({"reset": true}))
}

async fn counters(State(s): State<Shared>) -> Json<Counters> {
    Json(s.lock().counters.clone())
}

async fn clear_counters(State(s): State<Shared>) -> Json<Value> {
    s.lock().counters = Counters::default();
    Json(json!({"cleared": true}))
}

async fn list_clients(State(s): State<Shared>) -> Json<Vec<Client>> {
    Json(s.lock().clients.clone())
}

async fn add_client(State(s): State<Shared>, Json(c): Json<Client>) -> Response<Body> {
    for uri in &c.redirect_uris {
        let parsed = match url::Url::parse(uri) {
            Ok(u) => u,
            Err(e) => return bad_request(format!("{uri}: {e}")),
        };
        if let Err(e) = crate::authorize::secure_redirect(&parsed) {
            return bad_request(format!("{uri}: {e}"));
        }
    }
    let mut w = s.lock();
    w.clients.retain(|k| k.id != c.id);
    w.clients.push(c.clone());
    json_response(StatusCode::OK, &json!({"id": c.id, "secret": c.secret}))
}

async fn devices(State(s): State<Shared>) -> Json<Value> {
    let w = s.lock();
    let active: serde_json::Map<String, Value> = w
        .players
        .iter()
        .map(|(user, p)| (user.clone(), json!(p.active)))
        .collect();
    Json(json!({
        "active_device": w.settings.active_device,
        "devices": w.devices,
        "active": active,
    }))
}

#[derive(Deserialize)]
struct SwitchDevice {
    user: Option<String>,
    active: Option<String>,
}

/// Makes a device the user's active one, or leaves the user with none (as if
/// every Spotify client were closed): `{"user": "alice", "active": null}`.
async fn switch_device(State(s): State<Shared>, Json(b): Json<SwitchDevice>) -> Response<Body> {
    let mut w = s.lock();
    let user = b.user.unwrap_or_else(|| w.settings.default_user.clone());
    match w.set_active_device(&user, b.active.as_deref()) {
        Ok(()) => json_response(StatusCode::OK, &json!({"user": user, "active": b.active})),
        Err(e) => bad_request(e),
    }
}

async fn users(State(s): State<Shared>) -> Json<Vec<crate::model::User>> {
    Json(s.lock().users.clone())
}
