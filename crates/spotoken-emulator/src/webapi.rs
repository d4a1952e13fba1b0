//! The Web API under `/v1/`: a few real endpoints and an echo for the rest.
//!
//! Authentication and authorization follow Spotify: `401 {"error":{"status":401,
//! "message":...}}` for a missing, unknown, expired or revoked token (message text
//! configurable, because Spotify's changes), `403 Insufficient client scope` when
//! a scope from spotoken-core's endpoint table is missing, `403 User not
//! registered in the Developer Dashboard` for a user off the allowlist, and 429
//! with `Retry-After` under the rate limit.

use axum::Extension;
use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, Response, StatusCode, header};
use serde_json::json;
use spotoken_core::scope;

use crate::model::{Endpoint, User};
use crate::serve::DropConnection;
use crate::{Shared, json_response};

fn api_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"status": status.as_u16(), "message": message}}),
    )
}

/// Every request under `/v1/`.
pub async fn api(
    State(shared): State<Shared>,
    hangup: Option<Extension<DropConnection>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let path = uri.path().to_owned();
    let (failure, latency) = {
        let mut w = shared.lock();
        (
            w.take_failure(Endpoint::Api, None, &path),
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
    let mut w = shared.lock();
    let r = answer(&mut w, &method, &uri, &headers, &body);
    w.count_api(r.status().as_u16());
    r
}

fn answer(
    w: &mut crate::model::World,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    let path = uri.path();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return api_error(StatusCode::UNAUTHORIZED, "No token provided");
    };
    let Some(rec) = w.access.get(token).cloned() else {
        return api_error(StatusCode::UNAUTHORIZED, "Invalid access token");
    };
    let Some(grant) = w.grants.get(&rec.grant).cloned() else {
        return api_error(StatusCode::UNAUTHORIZED, "Invalid access token");
    };
    if grant.revoked {
        return api_error(StatusCode::UNAUTHORIZED, "Invalid access token");
    }
    if w.now_ms() >= rec.expires_at_ms {
        let msg = w.settings.unauthorized_message.clone();
        return api_error(StatusCode::UNAUTHORIZED, &msg);
    }
    if let Some(wait) = w.rate_limited(Endpoint::Api, &grant.client_id) {
        let mut r = api_error(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded");
        r.headers_mut().insert(header::RETRY_AFTER, wait.into());
        return r;
    }
    let Some(user) = w.user(&grant.user).cloned() else {
        return api_error(StatusCode::UNAUTHORIZED, "Invalid access token");
    };
    if !user.registered {
        return api_error(
            StatusCode::FORBIDDEN,
            "User not registered in the Developer Dashboard",
        );
    }
    if !scope::missing_for(method.as_str(), path, &grant.scopes).is_empty() {
        return api_error(StatusCode::FORBIDDEN, "Insufficient client scope");
    }
    let ok = |v: serde_json::Value| json_response(StatusCode::OK, &v);
    match (method.as_str(), path.trim_end_matches('/')) {
        ("GET", "/v1/me") => ok(me(&user, &grant.scopes)),
        ("GET", "/v1/me/player/currently-playing") => ok(currently_playing()),
        ("GET", "/v1/me/playlists") => ok(playlists(&user)),
        _ => {
            let body_text = String::from_utf8_lossy(body).into_owned();
            let body_json: serde_json::Value =
                serde_json::from_slice(body).unwrap_or(serde_json::Value::String(body_text));
            ok(json!({
                "method": method.as_str(),
                "path": path,
                "query": uri.query().unwrap_or(""),
                "body": body_json,
                "user": user.id,
            }))
        }
    }
}

fn me(user: &User, scopes: &spotoken_core::scope::Scopes) -> serde_json::Value {
    let mut v = json!({
        "display_name": user.display_name,
        "external_urls": {"spotify": format!("https://open.spotify.com/user/{}", user.id)},
        "followers": {"href": null, "total": 0},
        "href": format!("https://api.spotify.com/v1/users/{}", user.id),
        "id": user.id,
        "images": [],
        "type": "user",
        "uri": format!("spotify:user:{}", user.id),
    });
    if scopes.contains("user-read-email") {
        v["email"] = json!(user.email);
    }
    if scopes.contains("user-read-private") {
        v["country"] = json!(user.country);
        v["product"] = json!(user.product);
        v["explicit_content"] = json!({"filter_enabled": false, "filter_locked": false});
    }
    v
}

fn currently_playing() -> serde_json::Value {
    json!({
        "timestamp": 1_764_000_000_000_i64,
        "progress_ms": 42_000,
        "is_playing": true,
        "currently_playing_type": "track",
        "item": {
            "type": "track",
            "id": "4uLU6hMCjMI75M1A2tKUQC",
            "name": "Emulated Song",
            "duration_ms": 213_000,
            "uri": "spotify:track:4uLU6hMCjMI75M1A2tKUQC",
            "artists": [{"name": "The Emulators", "id": "0OdUWJ0sBjDrqHygGUXeCF", "type": "artist"}],
            "album": {"name": "Loopback", "id": "6akEvsycLGftJxYudPjmqK", "type": "album"}
        },
        "actions": {"disallows": {"resuming": true}}
    })
}

fn playlists(user: &User) -> serde_json::Value {
    let item = |id: &str, name: &str, n: u32| {
        json!({
            "id": id, "name": name, "public": false, "collaborative": false,
            "owner": {"id": user.id, "display_name": user.display_name, "type": "user"},
            "tracks": {"href": format!("https://api.spotify.com/v1/playlists/{id}/tracks"), "total": n},
            "type": "playlist", "uri": format!("spotify:playlist:{id}")
        })
    };
    json!({
        "href": "https://api.spotify.com/v1/me/playlists?offset=0&limit=20",
        "limit": 20, "next": null, "offset": 0, "previous": null, "total": 2,
        "items": [item("37i9dQZF1DXcBWIGoYBM5M", "Emulated Hits", 50), item("1A2GTWGtFfWp7KSQTwWOyo", "Loopback Sessions", 12)]
    })
}
