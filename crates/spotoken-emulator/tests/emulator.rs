//! The emulator's behaviours, each driven over plain HTTP as an app would.

use std::collections::HashMap;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spotoken_emulator::{
    AppMode, Consent, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Emulator, Endpoint, Failure,
    OWNER_PREMIUM_REQUIRED, RateLimit, Rotation, UNAUTHORIZED_MESSAGE, USER_NOT_REGISTERED,
};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-and-some-more";
const REDIRECT: &str = "http://127.0.0.1:45678/callback";

fn challenge(v: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()))
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .expect("location is a URL")
        .query_pairs()
        .into_owned()
        .collect()
}

/// GET /authorize with PKCE; returns the redirect's query parameters.
async fn authorize(emu: &Emulator, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let c = challenge(VERIFIER);
    let mut params = vec![
        ("client_id", DEFAULT_CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("state", "st-123"),
        ("scope", "user-read-private user-read-email"),
        ("code_challenge_method", "S256"),
        ("code_challenge", c.as_str()),
    ];
    for (k, v) in extra {
        params.retain(|(pk, _)| pk != k);
        params.push((k, v));
    }
    let r = http()
        .get(format!("{}/authorize", emu.url()))
        .query(&params)
        .send()
        .await
        .expect("authorize");
    assert_eq!(r.status(), StatusCode::FOUND, "authorize should redirect");
    let loc = r.headers()["location"].to_str().expect("ascii").to_owned();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    query_of(&loc)
}

async fn token(emu: &Emulator, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = http()
        .post(format!("{}/api/token", emu.url()))
        .form(form)
        .send()
        .await
        .expect("token");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn exchange(emu: &Emulator, code: &str) -> (StatusCode, Value) {
    token(
        emu,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", DEFAULT_CLIENT_ID),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

async fn refresh(emu: &Emulator, rt: &str) -> (StatusCode, Value) {
    token(
        emu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", DEFAULT_CLIENT_ID),
        ],
    )
    .await
}

/// A complete login; returns (access token, refresh token).
async fn login(emu: &Emulator) -> (String, String) {
    let q = authorize(emu, &[]).await;
    let (s, body) = exchange(emu, &q["code"]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    (
        body["access_token"].as_str().expect("access").to_owned(),
        body["refresh_token"].as_str().expect("refresh").to_owned(),
    )
}

async fn api(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> (StatusCode, Value) {
    let r = http()
        .request(method, format!("{}{path}", emu.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("api");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET path` with a bearer token.
async fn get(emu: &Emulator, path: &str, token: &str) -> (StatusCode, Value) {
    api(emu, reqwest::Method::GET, path, token).await
}

/// Status, body text and content type of a Web API call (`token` None: no
/// `Authorization` header).
async fn raw(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String, String) {
    let mut b = http().request(method, format!("{}{path}", emu.url()));
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    let r = b.send().await.expect("send");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = r.status();
    (status, r.text().await.expect("text"), ct)
}

/// Logs in with these scopes (as `user`); returns the access token.
async fn login_with(emu: &Emulator, scopes: &str, user: &str) -> String {
    let q = authorize(emu, &[("scope", scopes), ("emulator_user", user)]).await;
    let (s, body) = exchange(emu, &q["code"]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["access_token"].as_str().expect("access").to_owned()
}

/// A Web API call with a JSON body.
async fn send_json(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = http()
        .request(method, format!("{}{path}", emu.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"].as_str().unwrap_or_default(),
        v["error_description"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn counters_never_hold_a_refresh_token() {
    let emu = Emulator::start().await.expect("start");
    let (_, rt) = login(&emu).await;
    let (s, _) = refresh(&emu, &rt).await;
    assert_eq!(s, StatusCode::OK);
    let served = http()
        .get(format!("{}/_emulator/counters", emu.url()))
        .send()
        .await
        .expect("counters")
        .text()
        .await
        .expect("body");
    assert!(!served.contains(&rt), "{served}");
    assert_eq!(emu.counters().refresh_token_uses_of(&rt), 1);
    assert!(emu.issued_refresh_tokens().contains(&rt));
}

#[tokio::test]
async fn a_failure_for_zero_times_never_fires_and_clear_drops_the_rest() {
    let emu = Emulator::start().await.expect("start");
    let (_, rt) = login(&emu).await;
    emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 503,
        times: 0,
        ..Failure::default()
    });
    let (s, body) = refresh(&emu, &rt).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let rt = body["refresh_token"].as_str().unwrap_or(&rt).to_owned();
    emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 503,
        times: 5,
        ..Failure::default()
    });
    assert_eq!(refresh(&emu, &rt).await.0, StatusCode::SERVICE_UNAVAILABLE);
    emu.clear_failures();
    assert_eq!(refresh(&emu, &rt).await.0, StatusCode::OK);
}

#[tokio::test]
async fn full_pkce_flow_then_me_then_refresh() {
    let emu = Emulator::start().await.expect("start");
    let q = authorize(&emu, &[]).await;
    assert_eq!(q["state"], "st-123", "state is echoed exactly");
    let (s, body) = exchange(&emu, &q["code"]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "user-read-email user-read-private");
    let at = body["access_token"].as_str().expect("at");
    let rt = body["refresh_token"].as_str().expect("rt");

    let (s, me) = get(&emu, "/v1/me", at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["id"], "alice");
    assert_eq!(me["display_name"], "Alice Emulated");

    let (s, body) = refresh(&emu, rt).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        body.get("refresh_token").is_none(),
        "rotation none: no new refresh token"
    );
    assert_ne!(body["access_token"], at);
    let c = emu.counters();
    assert_eq!(c.token_outcome("authorization_code", "ok"), 1);
    assert_eq!(c.token_outcome("refresh_token", "ok"), 1);
    assert_eq!(c.refresh_token_uses_of(rt), 1);
    assert_eq!(c.api_status(200), 1);
}

#[tokio::test]
async fn authorization_codes_are_single_use_checked_and_expire() {
    let emu = Emulator::start().await.expect("start");
    let q = authorize(&emu, &[]).await;
    let code = q["code"].as_str();
    let (s, body) = token(
        &emu,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", DEFAULT_CLIENT_ID),
            (
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier-123",
            ),
        ],
    )
    .await;
    assert_eq!(
        (s, error_of(&body)),
        (
            StatusCode::BAD_REQUEST,
            ("invalid_grant", "code_verifier was incorrect")
        )
    );
    let (s, body) = token(
        &emu,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "http://127.0.0.1:1/callback"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(
        (s, error_of(&body).0),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    let (s, body) = token(
        &emu,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", DEFAULT_CLIENT_ID),
        ],
    )
    .await;
    assert_eq!(
        error_of(&body),
        ("invalid_request", "code_verifier required"),
        "{s}"
    );
    assert_eq!(exchange(&emu, code).await.0, StatusCode::OK);
    let (_, body) = exchange(&emu, code).await;
    assert_eq!(
        error_of(&body),
        ("invalid_grant", "Invalid authorization code")
    );

    let q = authorize(&emu, &[]).await;
    emu.advance(std::time::Duration::from_secs(61));
    let (_, body) = exchange(&emu, &q["code"]).await;
    assert_eq!(
        error_of(&body),
        ("invalid_grant", "Authorization code expired")
    );
    let (_, body) = exchange(&emu, "AQnotacode").await;
    assert_eq!(
        error_of(&body),
        ("invalid_grant", "Invalid authorization code")
    );
}

#[tokio::test]
async fn token_endpoint_client_and_grant_errors() {
    let emu = Emulator::start().await.expect("start");
    let (_, body) = token(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "nope"),
        ],
    )
    .await;
    assert_eq!(error_of(&body), ("invalid_client", "Invalid client"));
    let (_, body) = token(
        &emu,
        &[("grant_type", "password"), ("client_id", DEFAULT_CLIENT_ID)],
    )
    .await;
    assert_eq!(error_of(&body).0, "unsupported_grant_type");
    let (_, body) = token(&emu, &[("client_id", DEFAULT_CLIENT_ID)]).await;
    assert_eq!(
        error_of(&body),
        ("unsupported_grant_type", "grant_type parameter is missing")
    );
    let (_, body) = token(
        &emu,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", DEFAULT_CLIENT_ID),
        ],
    )
    .await;
    assert_eq!(error_of(&body).0, "invalid_request");
    let (_, body) = refresh(&emu, "AQunknown").await;
    assert_eq!(error_of(&body), ("invalid_grant", "Invalid refresh token"));
    // Wrong secret over HTTP Basic.
    let r = http()
        .post(format!("{}/api/token", emu.url()))
        .basic_auth(DEFAULT_CLIENT_ID, Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("send");
    let body: Value = r.json().await.expect("json");
    assert_eq!(error_of(&body), ("invalid_client", "Invalid client secret"));
    let c = emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "invalid_client"), 2);
}

/// Every app has a secret, accepted as HTTP Basic or in the body; a code
/// obtained without PKCE needs it, and no credentials at all is a bare
/// `invalid_client`.
#[tokio::test]
async fn without_pkce_the_secret_is_needed_by_basic_auth_or_in_the_body() {
    let emu = Emulator::start().await.expect("start");
    let code = || async {
        let r = http()
            .get(format!("{}/authorize", emu.url()))
            .query(&[
                ("client_id", DEFAULT_CLIENT_ID),
                ("response_type", "code"),
                ("redirect_uri", REDIRECT),
                ("state", "s"),
            ])
            .send()
            .await
            .expect("authorize");
        query_of(r.headers()["location"].to_str().expect("ascii"))["code"].clone()
    };
    let send = |code: String, basic: Option<&'static str>, body_secret: Option<&'static str>| {
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", REDIRECT.to_owned()),
        ];
        if basic.is_none() {
            form.push(("client_id", DEFAULT_CLIENT_ID.to_owned()));
        }
        if let Some(secret) = body_secret {
            form.push(("client_secret", secret.to_owned()));
        }
        let mut b = http().post(format!("{}/api/token", emu.url())).form(&form);
        if let Some(secret) = basic {
            b = b.basic_auth(DEFAULT_CLIENT_ID, Some(secret));
        }
        async move {
            let r = b.send().await.expect("send");
            (r.status(), r.json::<Value>().await.expect("json"))
        }
    };
    let (s, body) = send(code().await, None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "invalid_client"}),
        "no PKCE and no secret"
    );
    let (_, body) = send(code().await, None, Some("wrong")).await;
    assert_eq!(error_of(&body), ("invalid_client", "Invalid client secret"));
    let (_, body) = send(code().await, Some(DEFAULT_CLIENT_SECRET), None).await;
    assert!(body["refresh_token"].is_string(), "HTTP Basic: {body}");
    let (_, body) = send(code().await, None, Some(DEFAULT_CLIENT_SECRET)).await;
    assert!(
        body["refresh_token"].is_string(),
        "secret in the body: {body}"
    );
    // Refreshing that grant needs the secret too.
    let rt = body["refresh_token"].as_str().expect("rt");
    let (_, body) = refresh(&emu, rt).await;
    assert_eq!(body, json!({"error": "invalid_client"}));
    let (s, _) = token(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // No client at all.
    let (s, body) = token(&emu, &[("grant_type", "client_credentials")]).await;
    assert_eq!(
        (s, body),
        (StatusCode::BAD_REQUEST, json!({"error": "invalid_client"}))
    );
}

#[tokio::test]
async fn authorize_rejects_bad_clients_redirects_and_requests() {
    let emu = Emulator::start().await.expect("start");
    let page = |params: Vec<(&'static str, String)>| {
        let url = emu.url();
        async move {
            let r = http()
                .get(format!("{url}/authorize"))
                .query(&params)
                .send()
                .await
                .expect("send");
            (r.status(), r.text().await.expect("text"))
        }
    };
    let base = |redirect: &str| {
        vec![
            ("client_id", DEFAULT_CLIENT_ID.to_owned()),
            ("response_type", "code".to_owned()),
            ("redirect_uri", redirect.to_owned()),
            ("code_challenge_method", "S256".to_owned()),
            ("code_challenge", challenge(VERIFIER)),
        ]
    };
    let mut p = base(REDIRECT);
    p[0].1 = "unknown".into();
    let (s, text) = page(p).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(text.contains("INVALID_CLIENT: Invalid client"));
    let (_, text) = page(base("http://localhost:45678/callback")).await;
    assert!(text.contains("Insecure redirect URI"), "{text}");
    let (_, text) = page(base("http://example.com/callback")).await;
    assert!(text.contains("Insecure redirect URI"), "{text}");
    let (_, text) = page(base("http://127.0.0.1:45678/elsewhere")).await;
    assert!(text.contains("Invalid redirect URI"), "{text}");

    let q = authorize(&emu, &[("scope", "user-read-private not-a-scope")]).await;
    assert_eq!(q["error"], "invalid_scope");
    assert_eq!(q["state"], "st-123");
    let q = authorize(&emu, &[("code_challenge_method", "plain")]).await;
    assert_eq!(q["error"], "invalid_request");
    let q = authorize(&emu, &[("response_type", "token")]).await;
    assert_eq!(q["error"], "unsupported_response_type");
    // A challenge without its method, or a method without a challenge.
    let r = http()
        .get(format!("{}/authorize", emu.url()))
        .query(&[
            ("client_id", DEFAULT_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(
        query_of(r.headers()["location"].to_str().expect("ascii"))["error"],
        "invalid_request"
    );
}

#[tokio::test]
async fn consent_can_deny_grant_partially_pick_users_and_show_a_page() {
    let emu = Emulator::start().await.expect("start");
    emu.update(|s| s.deny = true);
    assert_eq!(authorize(&emu, &[]).await["error"], "access_denied");

    emu.update(|s| {
        s.deny = false;
        s.grant_only = Some(vec!["user-read-private".into()]);
    });
    let q = authorize(&emu, &[("emulator_user", "bob")]).await;
    let (_, body) = exchange(&emu, &q["code"]).await;
    assert_eq!(
        body["scope"], "user-read-private",
        "only part of the scopes granted"
    );
    let (_, me) = api(
        &emu,
        reqwest::Method::GET,
        "/v1/me",
        body["access_token"].as_str().expect("at"),
    )
    .await;
    assert_eq!(me["id"], "bob");
    assert!(
        me.get("email").is_none(),
        "no email without user-read-email"
    );

    emu.update(|s| s.consent = Consent::Page);
    let c = challenge(VERIFIER);
    let r = http()
        .get(format!("{}/authorize", emu.url()))
        .query(&[
            ("client_id", DEFAULT_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("state", "page"),
            ("code_challenge_method", "S256"),
            ("code_challenge", c.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(html.contains("id=\"approve\"") && html.contains("id=\"deny\""));
    let request_id = html
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("request id");
    let r = http()
        .post(format!("{}/authorize/decide", emu.url()))
        .form(&[("request", request_id), ("decision", "approve")])
        .send()
        .await
        .expect("send");
    let q = query_of(r.headers()["location"].to_str().expect("ascii"));
    assert_eq!(q["state"], "page");
    assert_eq!(exchange(&emu, &q["code"]).await.0, StatusCode::OK);
    // The same consent request cannot be answered twice.
    let r = http()
        .post(format!("{}/authorize/decide", emu.url()))
        .form(&[("request", request_id), ("decision", "approve")])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rotate_mode_issues_new_refresh_tokens_and_kills_old_ones() {
    let emu = Emulator::start().await.expect("start");
    emu.update(|s| s.rotation = Rotation::Rotate);
    let (_, rt1) = login(&emu).await;
    let (_, body) = refresh(&emu, &rt1).await;
    let rt2 = body["refresh_token"].as_str().expect("rotated").to_owned();
    assert_ne!(rt1, rt2);
    let (_, body) = refresh(&emu, &rt1).await;
    assert_eq!(error_of(&body), ("invalid_grant", "Invalid refresh token"));
    let (s, _) = refresh(&emu, &rt2).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "plain rotate: reuse does not revoke the family"
    );
}

#[tokio::test]
async fn reuse_detection_revokes_the_family_after_grace() {
    let emu = Emulator::start().await.expect("start");
    emu.update(|s| {
        s.rotation = Rotation::RotateReuseDetection;
        s.grace_secs = 10;
    });
    let (_, rt1) = login(&emu).await;
    let (_, body) = refresh(&emu, &rt1).await;
    let rt2 = body["refresh_token"].as_str().expect("rotated").to_owned();
    // Within grace the old token still works and hands back the same successor.
    let (s, body) = refresh(&emu, &rt1).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["refresh_token"], rt2.as_str());
    emu.advance(std::time::Duration::from_secs(11));
    let (_, body) = refresh(&emu, &rt1).await;
    assert_eq!(error_of(&body), ("invalid_grant", "Refresh token revoked"));
    let (_, body) = refresh(&emu, &rt2).await;
    assert_eq!(
        error_of(&body),
        ("invalid_grant", "Refresh token revoked"),
        "the whole family is dead"
    );
    assert_eq!(emu.counters().refresh_token_uses_of(&rt1), 3);
}

#[tokio::test]
async fn refresh_tokens_expire_from_the_original_authorization() {
    let emu = Emulator::start().await.expect("start");
    emu.update(|s| s.refresh_token_lifetime_secs = 100);
    let (_, rt) = login(&emu).await;
    emu.advance(std::time::Duration::from_secs(60));
    assert_eq!(refresh(&emu, &rt).await.0, StatusCode::OK);
    emu.advance(std::time::Duration::from_secs(60));
    let (_, body) = refresh(&emu, &rt).await;
    assert_eq!(
        error_of(&body),
        ("invalid_grant", "Refresh token expired"),
        "refreshing did not extend it"
    );
}

#[tokio::test]
async fn revoke_kills_one_user_or_everyone() {
    let emu = Emulator::start().await.expect("start");
    let (at_alice, rt_alice) = login(&emu).await;
    emu.update(|s| s.default_user = "bob".into());
    let (_, rt_bob) = login(&emu).await;
    assert_eq!(emu.revoke(Some("alice")), 1);
    let (_, body) = refresh(&emu, &rt_alice).await;
    assert_eq!(error_of(&body), ("invalid_grant", "Refresh token revoked"));
    assert_eq!(
        get(&emu, "/v1/me", &at_alice).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(refresh(&emu, &rt_bob).await.0, StatusCode::OK);
    let r = http()
        .post(format!("{}/_emulator/revoke", emu.url()))
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.json::<Value>().await.expect("json")["revoked"], 1);
    assert_eq!(refresh(&emu, &rt_bob).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn web_api_403_for_a_missing_scope() {
    let emu = Emulator::start().await.expect("start");
    let (at, _) = login(&emu).await;
    let (s, body) = get(&emu, "/v1/me/playlists", &at).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": {"status": 403, "message": "Insufficient client scope"}})
    );
    let (s, _) = get(&emu, "/v1/me/player/currently-playing", &at).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let c = emu.counters();
    assert_eq!((c.api_status(403), c.api_status(200)), (2, 0));
}

#[tokio::test]
async fn scoped_endpoints_answer_with_the_right_scopes() {
    let emu = Emulator::start().await.expect("start");
    let q = authorize(
        &emu,
        &[("scope", "playlist-read-private user-read-currently-playing")],
    )
    .await;
    let (_, body) = exchange(&emu, &q["code"]).await;
    let at = body["access_token"].as_str().expect("at");
    let (s, pl) = get(&emu, "/v1/me/playlists", at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(pl["items"][0]["owner"]["id"], "alice");
    let (s, cp) = get(&emu, "/v1/me/player/currently-playing", at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cp["is_playing"], true);
}

#[tokio::test]
async fn unregistered_development_mode_user_gets_403() {
    let emu = Emulator::start().await.expect("start");
    let q = authorize(&emu, &[("emulator_user", "dave")]).await;
    let (_, body) = exchange(&emu, &q["code"]).await;
    let at = body["access_token"].as_str().expect("at");
    let (status, text, ct) = raw(&emu, reqwest::Method::GET, "/v1/me", Some(at)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(text, USER_NOT_REGISTERED);
    assert!(ct.starts_with("text/plain"), "{ct}");
    // Extended quota mode has no allowlist.
    emu.update(|s| s.app_mode = AppMode::Extended);
    assert_eq!(get(&emu, "/v1/me", at).await.0, StatusCode::OK);
    emu.update(|s| s.app_mode = AppMode::Development);
    let (s, body) = get(&emu, "/v1/me", at).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body, Value::Null, "a plain-text body, not JSON");
}

#[tokio::test]
async fn injected_failures_match_filters_and_count_down() {
    let emu = Emulator::start().await.expect("start");
    let (at, rt) = login(&emu).await;
    emu.inject(Failure {
        endpoint: Endpoint::Token,
        grant: Some("refresh_token".into()),
        status: 429,
        headers: [("Retry-After".to_owned(), "2".to_owned())].into(),
        body: Some(json!({"error": {"status": 429, "message": "Too many requests", "reason": "QUOTA_EXCEEDED"}})),
        times: 2,
        ..Failure::default()
    });
    emu.inject(Failure {
        endpoint: Endpoint::Api,
        path: Some("/v1/me".into()),
        status: 502,
        text: Some("<html><body><h1>502 Bad Gateway</h1></body></html>".into()),
        ..Failure::default()
    });
    for _ in 0..2 {
        let r = http()
            .post(format!("{}/api/token", emu.url()))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("client_id", DEFAULT_CLIENT_ID),
            ])
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(
            r.json::<Value>().await.expect("json")["error"]["reason"],
            "QUOTA_EXCEEDED"
        );
    }
    assert_eq!(refresh(&emu, &rt).await.0, StatusCode::OK);
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(&at)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    assert!(r.text().await.expect("text").contains("502 Bad Gateway"));
    assert_eq!(get(&emu, "/v1/me", &at).await.0, StatusCode::OK);
    let c = emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "injected"), 2);
    assert_eq!(c.token_requests_for("refresh_token"), 3);
}

#[tokio::test]
async fn injected_drop_closes_the_connection_without_an_answer() {
    let emu = Emulator::start().await.expect("start");
    let (_, rt) = login(&emu).await;
    emu.inject(Failure {
        endpoint: Endpoint::Token,
        drop_connection: true,
        ..Failure::default()
    });
    let err = http()
        .post(format!("{}/api/token", emu.url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", DEFAULT_CLIENT_ID),
        ])
        .send()
        .await
        .expect_err("the connection is dropped");
    assert!(!err.is_status());
    assert_eq!(refresh(&emu, &rt).await.0, StatusCode::OK, "one drop only");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let emu = Emulator::start().await.expect("start");
    let (at, _) = login(&emu).await;
    emu.update(|s| {
        s.rate_limits = vec![RateLimit {
            requests: 3,
            window_secs: 30,
            applies_to: Endpoint::Api,
            quota_exceeded: false,
        }]
    });
    for _ in 0..3 {
        assert_eq!(get(&emu, "/v1/me", &at).await.0, StatusCode::OK);
    }
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(&at)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers()["retry-after"],
        "30",
        "the emulator's clock stood still"
    );
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"error": {"status": 429, "message": "API rate limit exceeded"}})
    );
    // The window follows the emulator's clock, not the wall clock.
    emu.advance(std::time::Duration::from_secs(12));
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(&at)
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["retry-after"], "18");
    emu.advance(std::time::Duration::from_secs(18));
    assert_eq!(get(&emu, "/v1/me", &at).await.0, StatusCode::OK);
    // The token endpoint has a window of its own: not limited by the API's.
    let (_, rt) = login(&emu).await;
    assert_eq!(refresh(&emu, &rt).await.0, StatusCode::OK);
    // The development-mode quota variant.
    emu.update(|s| {
        s.rate_limits = vec![RateLimit {
            requests: 0,
            window_secs: 86_400,
            applies_to: Endpoint::Any,
            quota_exceeded: true,
        }]
    });
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(&at)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "86400");
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["reason"],
        "QUOTA_EXCEEDED"
    );
    let (s, body) = refresh(&emu, &rt).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test]
async fn peak_concurrent_refreshes_are_counted_per_user() {
    let emu = Emulator::start().await.expect("start");
    let (_, rt) = login(&emu).await;
    emu.update(|s| s.token_latency_ms = 200);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, rt) = (emu.url(), rt.clone());
        tasks.push(tokio::spawn(async move {
            http()
                .post(format!("{url}/api/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", DEFAULT_CLIENT_ID),
                ])
                .send()
                .await
                .expect("send")
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::OK);
    }
    let c = emu.counters();
    assert!(c.peak_concurrent_refreshes["alice"] >= 2, "{c:?}");
    assert_eq!(c.refresh_token_uses_of(&rt), 4);
}

#[tokio::test]
async fn control_plane_over_http() {
    let emu = Emulator::start().await.expect("start");
    let url = emu.url();
    let r = http()
        .patch(format!("{url}/_emulator/settings"))
        .json(&json!({"rotation": "rotate", "access_token_lifetime_secs": 5}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(emu.settings().rotation, Rotation::Rotate);
    assert_eq!(emu.settings().access_token_lifetime_secs, 5);
    let r = http()
        .patch(format!("{url}/_emulator/settings"))
        .json(&json!({"rotaton": "rotate"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "typos are refused, not ignored"
    );

    let r = http()
        .post(format!("{url}/_emulator/failures"))
        .json(&json!([{"endpoint": "api", "status": 503, "times": 2}, {"endpoint": "token", "status": 500}]))
        .send()
        .await
        .expect("send");
    assert_eq!(r.json::<Value>().await.expect("json")["pending"], 2);
    http()
        .delete(format!("{url}/_emulator/failures"))
        .send()
        .await
        .expect("send");

    let r = http()
        .post(format!("{url}/_emulator/clients"))
        .json(&json!({"id": "mine", "redirect_uris": ["http://localhost:8888/cb"]}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "localhost redirect URIs are refused"
    );

    let (_, _) = login(&emu).await;
    let counters: Value = http()
        .get(format!("{url}/_emulator/counters"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(counters["token_requests"]["authorization_code"]["ok"], 1);
    http()
        .post(format!("{url}/_emulator/reset"))
        .send()
        .await
        .expect("send");
    assert_eq!(emu.counters().token_requests_for("authorization_code"), 0);
    assert_eq!(emu.settings().rotation, Rotation::None);
    let users: Value = http()
        .get(format!("{url}/_emulator/users"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(users.as_array().is_some_and(|u| u.len() >= 3));
}

#[tokio::test]
async fn authorize_in_process_answers_like_the_browser_flow() {
    let emu = Emulator::start().await.expect("start");
    let c = challenge(VERIFIER);
    let url = format!(
        "{}/authorize?client_id={DEFAULT_CLIENT_ID}&response_type=code&redirect_uri={}&state=s&code_challenge_method=S256&code_challenge={c}",
        emu.url(),
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    let loc = emu.authorize(&url).await.expect("redirects");
    let q = query_of(&loc);
    assert_eq!(q["state"], "s");
    assert_eq!(exchange(&emu, &q["code"]).await.0, StatusCode::OK);
    emu.update(|s| s.deny = true);
    assert_eq!(
        query_of(&emu.authorize(&url).await.expect("redirects"))["error"],
        "access_denied"
    );
    let page = emu
        .authorize(&url.replace(DEFAULT_CLIENT_ID, "nobody"))
        .await
        .expect_err("an error page, not a redirect");
    assert_eq!(page.status, 400, "{page}");
    assert!(page.body.contains("INVALID_CLIENT"), "{page}");
    assert!(page.to_string().contains("HTTP 400"), "{page}");
}

// ---- Spotify's 2026 answers, one test per row of docs/EMULATOR.md ----

/// Row "401": one body whatever the cause (Spotify, July 2026), the cause in
/// `WWW-Authenticate`; a non-Bearer `Authorization` is a 400.
#[tokio::test]
async fn every_401_has_one_body_and_the_cause_in_www_authenticate() {
    let emu = Emulator::start().await.expect("start");
    let (at, _) = login(&emu).await;
    let one_body = json!({"error": {"status": 401, "message": UNAUTHORIZED_MESSAGE}});
    let challenge = |r: &reqwest::Response| {
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let get = |token: Option<String>| {
        let mut b = http().get(format!("{}/v1/me", emu.url()));
        if let Some(t) = token {
            b = b.bearer_auth(t);
        }
        b.send()
    };
    let r = get(None).await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&r).contains(r#"error="missing_token""#),
        "{}",
        challenge(&r)
    );
    assert_eq!(r.json::<Value>().await.expect("json"), one_body);

    let r = get(Some("BQnot-a-token".into())).await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert!(
        c.starts_with(r#"Bearer realm="spotify", error="invalid_token""#),
        "{c}"
    );
    assert_eq!(r.json::<Value>().await.expect("json"), one_body);

    emu.expire_access_tokens();
    let r = get(Some(at.clone())).await.expect("send");
    assert!(challenge(&r).contains("expired"), "{}", challenge(&r));
    assert_eq!(r.json::<Value>().await.expect("json"), one_body);

    let (at, _) = login(&emu).await;
    emu.revoke(None);
    let r = get(Some(at)).await.expect("send");
    assert!(challenge(&r).contains("revoked"), "{}", challenge(&r));
    assert_eq!(r.json::<Value>().await.expect("json"), one_body);

    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .basic_auth("id", Some("secret"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["message"],
        "Only valid bearer authentication supported"
    );
}

/// Row "unknown path": a 404 in the error shape; the echo only under `/_echo`.
#[tokio::test]
async fn unknown_paths_are_404_and_the_echo_is_under_its_own_prefix() {
    let emu = Emulator::start().await.expect("start");
    let (at, _) = login(&emu).await;
    let not_found = json!({"error": {"status": 404, "message": "Service not found"}});
    for path in ["/v1/some/thing?x=1", "/v1/me/nothing-here", "/elsewhere"] {
        let (s, body) = api(&emu, reqwest::Method::PUT, path, &at).await;
        assert_eq!((s, &body), (StatusCode::NOT_FOUND, &not_found), "{path}");
    }
    let (s, echo) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/_echo/v1/some/thing?x=1",
        &at,
        json!({"a": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        echo,
        json!({"method": "PUT", "path": "/v1/some/thing", "query": "x=1",
               "body": {"a": 1}, "user": "alice"})
    );
    // The echo checks the token and the scopes as the Web API does.
    let (s, _, _) = raw(&emu, reqwest::Method::GET, "/_echo/v1/me", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = get(&emu, "/_echo/v1/me/playlists", &at).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// Row "development mode": withdrawn endpoints, fewer fields, `items`, search
/// pages of at most 10 (default 5).
#[tokio::test]
async fn development_mode_withdraws_endpoints_fields_and_page_sizes() {
    let emu = Emulator::start().await.expect("start");
    assert_eq!(emu.settings().app_mode, AppMode::Development, "the default");
    let at = login_with(
        &emu,
        "user-read-private user-read-email playlist-read-private",
        "alice",
    )
    .await;
    let forbidden = json!({"error": {"status": 403, "message": "Forbidden"}});
    let (_, playlists) = get(&emu, "/v1/me/playlists", &at).await;
    let first = &playlists["items"][0];
    let id = first["id"].as_str().expect("playlist id").to_owned();
    assert!(first.get("tracks").is_none(), "{first}");
    assert_eq!(first["items"]["total"], 12);
    for path in [
        format!("/v1/playlists/{id}/tracks"),
        "/v1/artists/0EmuArtistEmulators001/top-tracks".into(),
        "/v1/artists/0EmuArtistEmulators001/related-artists".into(),
        "/v1/tracks?ids=2EmuTrack0000000000001".into(),
        "/v1/users/alice".into(),
        "/v1/audio-features/2EmuTrack0000000000001".into(),
    ] {
        let (s, body) = get(&emu, &path, &at).await;
        assert_eq!((s, &body), (StatusCode::FORBIDDEN, &forbidden), "{path}");
    }
    let (s, _) = get(&emu, "/v1/recommendations?seed_genres=pop", &at).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, items) = get(&emu, &format!("/v1/playlists/{id}/items"), &at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(items["total"], 12);
    assert!(
        items["items"][0]["track"]["popularity"].is_null(),
        "no popularity"
    );
    let (_, me) = get(&emu, "/v1/me", &at).await;
    for gone in [
        "email",
        "country",
        "product",
        "explicit_content",
        "followers",
    ] {
        assert!(me.get(gone).is_none(), "{gone} in {me}");
    }
    let (_, found) = get(&emu, "/v1/search?q=e&type=track", &at).await;
    assert_eq!(found["tracks"]["limit"], 5, "default page");
    let (s, _) = get(&emu, "/v1/search?q=e&type=track&limit=10", &at).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = get(&emu, "/v1/search?q=e&type=track&limit=11", &at).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": {"status": 400, "message": "Invalid limit"}})
        )
    );
}

/// Extended quota mode keeps what development mode took away.
#[tokio::test]
async fn extended_mode_keeps_the_old_endpoints_and_shapes() {
    let emu = Emulator::start().await.expect("start");
    emu.update(|s| s.app_mode = AppMode::Extended);
    let at = login_with(
        &emu,
        "user-read-private user-read-email playlist-read-private",
        "alice",
    )
    .await;
    let (_, me) = get(&emu, "/v1/me", &at).await;
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["product"], "premium");
    assert_eq!(me["country"], "SE");
    let (_, playlists) = get(&emu, "/v1/me/playlists", &at).await;
    let id = playlists["items"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(playlists["items"][0]["tracks"]["total"], 12);
    let (s, tracks) = get(&emu, &format!("/v1/playlists/{id}/tracks"), &at).await;
    assert_eq!((s, &tracks["total"]), (StatusCode::OK, &json!(12)));
    let (s, top) = get(&emu, "/v1/artists/0EmuArtistEmulators001/top-tracks", &at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(top["tracks"].as_array().map(Vec::len), Some(8));
    let (_, found) = get(&emu, "/v1/search?q=e&type=track&limit=50", &at).await;
    assert_eq!(found["tracks"]["limit"], 50);
    assert!(found["tracks"]["items"][0]["popularity"].is_number());
    let (_, found) = get(&emu, "/v1/search?q=e&type=track", &at).await;
    assert_eq!(found["tracks"]["limit"], 20, "default page");
}

/// Row "app owner without Premium": a plain-text 403 on every call, in
/// development mode only.
#[tokio::test]
async fn an_owner_without_premium_gets_a_plain_text_403() {
    let emu = Emulator::start().await.expect("start");
    let (at, _) = login(&emu).await;
    emu.update(|s| s.owner_premium = false);
    let (s, text, ct) = raw(&emu, reqwest::Method::GET, "/v1/me", Some(&at)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(text, OWNER_PREMIUM_REQUIRED);
    assert!(ct.starts_with("text/plain"), "{ct}");
    emu.update(|s| s.app_mode = AppMode::Extended);
    let (s, _, _) = raw(&emu, reqwest::Method::GET, "/v1/me", Some(&at)).await;
    assert_eq!(s, StatusCode::OK, "extended quota mode has no such rule");
}

const PLAYER_SCOPES: &str =
    "user-read-playback-state user-modify-playback-state user-read-currently-playing";

/// Row "player": commands answer 204 and the state reflects them.
#[tokio::test]
async fn player_commands_answer_204_and_the_state_follows() {
    let emu = Emulator::start().await.expect("start");
    let at = login_with(&emu, PLAYER_SCOPES, "alice").await;
    let call = |method: reqwest::Method, path: &str| {
        let (url, at) = (format!("{}{path}", emu.url()), at.clone());
        async move {
            let r = http()
                .request(method, url)
                .bearer_auth(at)
                .header("content-length", "0")
                .send()
                .await
                .expect("send");
            let s = r.status();
            (s, r.text().await.expect("text"))
        }
    };
    let state = || async {
        let (s, v) = get(&emu, "/v1/me/player", &at).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    };
    let v = state().await;
    assert_eq!(v["is_playing"], true);
    assert_eq!(v["device"]["name"], "Emulated Laptop");
    let first = v["item"]["id"].as_str().expect("id").to_owned();

    assert_eq!(
        call(reqwest::Method::PUT, "/v1/me/player/pause").await,
        (StatusCode::NO_CONTENT, String::new())
    );
    assert_eq!(state().await["is_playing"], false);
    let (s, body) = call(reqwest::Method::PUT, "/v1/me/player/pause").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "already paused: {body}");
    assert_eq!(
        call(reqwest::Method::PUT, "/v1/me/player/play").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(state().await["is_playing"], true);

    assert_eq!(
        call(reqwest::Method::POST, "/v1/me/player/next").await.0,
        StatusCode::NO_CONTENT
    );
    let second = state().await["item"]["id"].clone();
    assert_ne!(second, json!(first));
    assert_eq!(
        call(reqwest::Method::POST, "/v1/me/player/previous")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(state().await["item"]["id"], json!(first));

    let queued = "spotify:track:2EmuTrack0000000000020";
    let (s, _) = call(
        reqwest::Method::POST,
        &format!("/v1/me/player/queue?uri={queued}"),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, q) = get(&emu, "/v1/me/player/queue", &at).await;
    assert_eq!(q["queue"][0]["uri"], queued);
    call(reqwest::Method::POST, "/v1/me/player/next").await;
    let (s, now) = get(&emu, "/v1/me/player/currently-playing", &at).await;
    assert_eq!((s, &now["item"]["uri"]), (StatusCode::OK, &json!(queued)));

    // Progress follows the emulator's clock while playing, not while paused.
    let before = state().await["progress_ms"].as_i64().expect("progress");
    emu.advance(std::time::Duration::from_secs(10));
    let after = state().await["progress_ms"].as_i64().expect("progress");
    assert!(after - before >= 10_000, "{before} -> {after}");
    call(reqwest::Method::PUT, "/v1/me/player/pause").await;
    let paused = state().await["progress_ms"].clone();
    emu.advance(std::time::Duration::from_secs(10));
    assert_eq!(state().await["progress_ms"], paused);

    let (s, _) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/player/play",
        &at,
        json!({"context_uri": "spotify:album:1EmuAlbumAtomics000008", "offset": {"position": 2}}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let v = state().await;
    assert_eq!(v["item"]["name"], "Acquire");
    assert_eq!(v["context"]["uri"], "spotify:album:1EmuAlbumAtomics000008");

    let (_, devices) = get(&emu, "/v1/me/player/devices", &at).await;
    let phone = devices["devices"][1]["id"].as_str().expect("id").to_owned();
    let (s, _) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/player",
        &at,
        json!({"device_ids": [phone]}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(state().await["device"]["id"], json!(phone));
    let (_, devices) = get(&emu, "/v1/me/player/devices", &at).await;
    assert_eq!(devices["devices"][1]["is_active"], true);
    assert_eq!(devices["devices"][0]["is_active"], false);
    let (s, _) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/player",
        &at,
        json!({"device_ids": ["nope"]}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Row "player": 404 `NO_ACTIVE_DEVICE` without an active device, 403
/// `PREMIUM_REQUIRED` for a free user.
#[tokio::test]
async fn player_needs_an_active_device_and_premium() {
    let emu = Emulator::start().await.expect("start");
    let bob = login_with(&emu, PLAYER_SCOPES, "bob").await;
    let (s, body) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/player/play",
        &bob,
        json!({}),
    )
    .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::FORBIDDEN,
            json!({"error": {"status": 403, "message": "Player command failed: Premium required", "reason": "PREMIUM_REQUIRED"}})
        )
    );
    assert_eq!(
        get(&emu, "/v1/me/player", &bob).await.0,
        StatusCode::OK,
        "a free user can read the state"
    );

    let alice = login_with(&emu, PLAYER_SCOPES, "alice").await;
    emu.update(|s| s.active_device = false);
    let no_device = json!({"error": {"status": 404,
        "message": "Player command failed: No active device found", "reason": "NO_ACTIVE_DEVICE"}});
    for (m, path) in [
        (reqwest::Method::PUT, "/v1/me/player/play"),
        (reqwest::Method::PUT, "/v1/me/player/pause"),
        (reqwest::Method::POST, "/v1/me/player/next"),
        (
            reqwest::Method::POST,
            "/v1/me/player/queue?uri=spotify:track:2EmuTrack0000000000002",
        ),
    ] {
        let (s, body) = send_json(&emu, m, path, &alice, json!({})).await;
        assert_eq!((s, &body), (StatusCode::NOT_FOUND, &no_device), "{path}");
    }
    let (s, _, _) = raw(&emu, reqwest::Method::GET, "/v1/me/player", Some(&alice)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = raw(
        &emu,
        reqwest::Method::GET,
        "/v1/me/player/currently-playing",
        Some(&alice),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, devices) = get(&emu, "/v1/me/player/devices", &alice).await;
    assert_eq!(devices, json!({"devices": []}));

    // Per user, through the control plane.
    emu.update(|s| s.active_device = true);
    let r = http()
        .post(format!("{}/_emulator/devices", emu.url()))
        .json(&json!({"user": "alice", "active": null}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let (s, body) = send_json(
        &emu,
        reqwest::Method::POST,
        "/v1/me/player/next",
        &alice,
        json!({}),
    )
    .await;
    assert_eq!((s, body), (StatusCode::NOT_FOUND, no_device));
    // And through the Rust handle.
    assert!(
        emu.set_active_device("alice", Some("no-such-device"))
            .is_err()
    );
    emu.set_active_device("alice", Some(&emu.device_ids()[1]))
        .expect("a known device");
    let (_, v) = get(&emu, "/v1/me/player", &alice).await;
    assert_eq!(v["device"]["name"], "Emulated Phone");
    emu.set_active_device("alice", None).expect("none");
    let listed: Value = http()
        .get(format!("{}/_emulator/devices", emu.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let speaker = listed["devices"][2]["id"].as_str().expect("id").to_owned();
    assert_eq!(listed["active"]["alice"], Value::Null);
    http()
        .post(format!("{}/_emulator/devices", emu.url()))
        .json(&json!({"user": "alice", "active": speaker}))
        .send()
        .await
        .expect("send");
    let (s, v) = get(&emu, "/v1/me/player", &alice).await;
    assert_eq!(
        (s, &v["device"]["name"]),
        (StatusCode::OK, &json!("Kitchen Speaker"))
    );
}

/// Row "2026 endpoints and scopes": `/v1/playlists/{id}/items`,
/// `/v1/me/library` and `POST /v1/me/playlists` check scopes as the endpoints
/// they replaced.
#[tokio::test]
async fn new_2026_endpoints_are_scope_checked() {
    let emu = Emulator::start().await.expect("start");
    let insufficient = json!({"error": {"status": 403, "message": "Insufficient client scope"}});
    let reader = login_with(&emu, "playlist-read-private", "alice").await;
    let (s, body) = send_json(
        &emu,
        reqwest::Method::POST,
        "/v1/me/playlists",
        &reader,
        json!({"name": "x"}),
    )
    .await;
    assert_eq!((s, &body), (StatusCode::FORBIDDEN, &insufficient));
    let own = "/v1/playlists/3Plalice00000000000001/items";
    let (s, body) = send_json(
        &emu,
        reqwest::Method::POST,
        own,
        &reader,
        json!({"uris": ["spotify:track:2EmuTrack0000000000003"]}),
    )
    .await;
    assert_eq!((s, &body), (StatusCode::FORBIDDEN, &insufficient));
    let (s, body) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/library?uris=spotify:track:2EmuTrack0000000000003",
        &reader,
        Value::Null,
    )
    .await;
    assert_eq!((s, &body), (StatusCode::FORBIDDEN, &insufficient));

    let writer = login_with(
        &emu,
        "playlist-read-private playlist-modify-private user-library-modify user-library-read",
        "alice",
    )
    .await;
    let (s, created) = send_json(
        &emu,
        reqwest::Method::POST,
        "/v1/me/playlists",
        &writer,
        json!({"name": "Made in a test", "public": false}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id");
    assert_eq!(created["items"]["total"], 0);
    let (s, _) = send_json(&emu, reqwest::Method::POST, &format!("/v1/playlists/{id}/items"), &writer,
        json!({"uris": ["spotify:track:2EmuTrack0000000000003", "spotify:track:2EmuTrack0000000000004"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, items) = get(&emu, &format!("/v1/playlists/{id}/items"), &writer).await;
    assert_eq!(items["total"], 2);
    assert_eq!(items["items"][1]["track"]["name"], "Ephemeral Port");
    // Following an artist through the library needs the follow scope.
    let (s, _) = send_json(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/library?uris=spotify:artist:0EmuArtistEmulators001",
        &writer,
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = raw(
        &emu,
        reqwest::Method::PUT,
        "/v1/me/library?uris=spotify:track:2EmuTrack0000000000003",
        Some(&writer),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, contains) = api(&emu, reqwest::Method::GET,
        "/v1/me/library/contains?uris=spotify:track:2EmuTrack0000000000003,spotify:track:2EmuTrack0000000000005",
        &writer).await;
    assert_eq!(contains, json!([true, false]));
    // Someone else's playlist: not yours to read in development mode.
    let (s, _) = get(&emu, "/v1/playlists/3Plcarol00000000000002/items", &writer).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// Row "CORS": browsers may call the Web API and the token endpoint.
#[tokio::test]
async fn the_web_api_and_token_endpoint_answer_browsers() {
    let emu = Emulator::start().await.expect("start");
    for path in ["/v1/me", "/api/token", "/v1/me/player/play"] {
        let r = http()
            .request(reqwest::Method::OPTIONS, format!("{}{path}", emu.url()))
            .header("origin", "http://127.0.0.1:9999")
            .header("access-control-request-method", "PUT")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .expect("send");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let methods = r.headers()["access-control-allow-methods"]
            .to_str()
            .expect("ascii");
        assert!(methods.contains("PUT"), "{methods}");
        let allowed = r.headers()["access-control-allow-headers"]
            .to_str()
            .expect("ascii");
        assert!(allowed.contains("Authorization"), "{allowed}");
    }
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .header("origin", "http://127.0.0.1:9999")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "*",
        "errors too"
    );
    let r = http()
        .post(format!("{}/api/token", emu.url()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // Not the control plane: a web page must not reconfigure the emulator.
    let r = http()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/_emulator/reset", emu.url()),
        )
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("send");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// Row "client credentials": an app token, with the secret by Basic or in the
/// body; it can search but has no user.
#[tokio::test]
async fn client_credentials_give_an_app_token_without_a_user() {
    let emu = Emulator::start().await.expect("start");
    let r = http()
        .post(format!("{}/api/token", emu.url()))
        .basic_auth(DEFAULT_CLIENT_ID, Some(DEFAULT_CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body.get("refresh_token").is_none() && body.get("scope").is_none(),
        "{body}"
    );
    let (s, body) = token(
        &emu,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "secret in the body");
    let app = body["access_token"].as_str().expect("token");
    let (s, found) = get(&emu, "/v1/search?q=loopback&type=album", app).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(found["albums"]["items"][0]["name"], "Loopback");
    let (s, body) = get(&emu, "/v1/me", app).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": {"status": 404, "message": "Invalid username"}})
        )
    );
    // Without the secret: no credentials.
    let (_, body) = token(
        &emu,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", DEFAULT_CLIENT_ID),
        ],
    )
    .await;
    assert_eq!(body, json!({"error": "invalid_client"}));
    assert_eq!(emu.counters().token_outcome("client_credentials", "ok"), 2);
}

/// Row "PKCE": the verifier is 43 to 128 characters of the unreserved set.
#[tokio::test]
async fn pkce_verifiers_outside_the_rfc_are_refused() {
    let emu = Emulator::start().await.expect("start");
    for verifier in ["abc", &"a".repeat(129), &format!("{}!", "a".repeat(50))] {
        let c = challenge(verifier);
        let q = authorize(&emu, &[("code_challenge", c.as_str())]).await;
        let (s, body) = token(
            &emu,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", REDIRECT),
                ("client_id", DEFAULT_CLIENT_ID),
                ("code_verifier", verifier),
            ],
        )
        .await;
        assert_eq!(
            (s, error_of(&body).0),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{verifier}: {body}"
        );
    }
    let v = "a".repeat(128);
    let c = challenge(&v);
    let q = authorize(&emu, &[("code_challenge", c.as_str())]).await;
    let (s, _) = token(
        &emu,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("client_id", DEFAULT_CLIENT_ID),
            ("code_verifier", &v),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "128 characters is the limit");
}

/// Search over the catalogue, paged by following `next` as an app would.
#[tokio::test]
async fn search_pages_by_following_next() {
    let emu = Emulator::start().await.expect("start");
    let at = login_with(&emu, "user-read-private", "alice").await;
    let mut next = Some(format!("{}/v1/search?q=o&type=track&limit=4", emu.url()));
    let (mut seen, mut pages, mut total) = (Vec::new(), 0, 0);
    while let Some(url) = next {
        let page: Value = http()
            .get(&url)
            .bearer_auth(&at)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let tracks = &page["tracks"];
        total = tracks["total"].as_u64().expect("total");
        for t in tracks["items"].as_array().expect("items") {
            seen.push(t["id"].as_str().expect("id").to_owned());
        }
        pages += 1;
        next = tracks["next"].as_str().map(str::to_owned);
    }
    assert!(total > 8, "{total}");
    assert_eq!(seen.len() as u64, total);
    assert_eq!(pages as u64, total.div_ceil(4));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len() as u64, total, "no track twice");
    let (_, all) = api(
        &emu,
        reqwest::Method::GET,
        "/v1/search?q=race%20condition&type=artist,album,track,playlist",
        &at,
    )
    .await;
    assert_eq!(all["artists"]["items"][0]["name"], "Race Condition");
    assert_eq!(all["albums"]["total"], 2);
    assert_eq!(all["tracks"]["total"], 8);
    assert_eq!(all["playlists"]["total"], 0);
    let (s, body) = get(&emu, "/v1/search?type=track", &at).await;
    assert_eq!(
        (s, &body["error"]["message"]),
        (StatusCode::BAD_REQUEST, &json!("No search query"))
    );
    let (_, lists) = get(&emu, "/v1/search?q=loopback%20sessions&type=playlist", &at).await;
    assert_eq!(lists["playlists"]["total"], 4, "every user's public one");
}

/// A client that trusts only the emulator's test CA.
fn tls_client(emu: &Emulator, http1_only: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = emu.tls_ca().expect("started with TLS").ca_pem();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("PEM")]);
    if http1_only {
        b = b.http1_only();
    }
    b.build().expect("client")
}

#[tokio::test]
async fn tls_port_serves_the_same_world_over_http1_and_http2_and_counts_handshakes() {
    let emu = Emulator::builder()
        .tls_port(0)
        .http2(true)
        .api_latency(std::time::Duration::from_millis(1))
        .start()
        .await
        .expect("start");
    assert_eq!(emu.settings().api_latency_ms, 1);
    let base = emu.tls_url().expect("TLS URL");
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    for (http1_only, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let client = tls_client(&emu, http1_only);
        for _ in 0..3 {
            let r = client
                .get(format!("{base}/v1/me"))
                .send()
                .await
                .expect("request over TLS");
            assert_eq!(r.version(), version);
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }
    let c = emu.counters();
    assert_eq!(c.api_status(401), 6, "the same world answers on both ports");
    assert_eq!(c.tls_full_handshakes + c.tls_resumed_handshakes, 2, "{c:?}");
    assert_eq!(c.http2_connections, 1, "{c:?}");
    assert_eq!(c.tls_failed_handshakes, 0);
}

#[tokio::test]
async fn tls_port_refuses_a_client_that_does_not_trust_the_test_ca() {
    let emu = Emulator::builder()
        .tls_port(0)
        .start()
        .await
        .expect("start");
    let r = http()
        .get(format!("{}/v1/me", emu.tls_url().expect("TLS URL")))
        .send()
        .await;
    assert!(r.is_err(), "the system roots do not hold the test CA");
}

#[tokio::test]
async fn an_issued_grant_refreshes_like_a_logged_in_one() {
    let emu = Emulator::start().await.expect("start");
    let (access, refresh) = emu.issue_grant("alice", "user-read-private");
    let me = http()
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(&access)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
    let r = http()
        .post(format!("{}/api/token", emu.url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", DEFAULT_CLIENT_ID),
        ])
        .send()
        .await
        .expect("refresh");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(emu.counters().refresh_token_uses_of(&refresh), 1);
}
