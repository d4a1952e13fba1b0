//! The emulator's behaviours, each driven over plain HTTP as an app would.

use std::collections::HashMap;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spotoken_emulator::{
    Consent, DEFAULT_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_SECRET,
    Emulator, Endpoint, Failure, RateLimit, Rotation,
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

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"].as_str().unwrap_or_default(),
        v["error_description"].as_str().unwrap_or_default(),
    )
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

    let (s, me) = api(&emu, reqwest::Method::GET, "/v1/me", at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["id"], "alice");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["product"], "premium");

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
    assert_eq!(c.refresh_token_uses[rt], 1);
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
        .basic_auth(DEFAULT_CONFIDENTIAL_CLIENT_ID, Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("send");
    let body: Value = r.json().await.expect("json");
    assert_eq!(error_of(&body), ("invalid_client", "Invalid client secret"));
    let c = emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "invalid_client"), 2);
}

#[tokio::test]
async fn confidential_client_uses_basic_auth_without_pkce() {
    let emu = Emulator::start().await.expect("start");
    let r = http()
        .get(format!("{}/authorize", emu.url()))
        .query(&[
            ("client_id", DEFAULT_CONFIDENTIAL_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
        ])
        .send()
        .await
        .expect("authorize");
    let q = query_of(r.headers()["location"].to_str().expect("ascii"));
    let send = |auth: Option<&'static str>| {
        let mut b = http().post(format!("{}/api/token", emu.url())).form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", DEFAULT_CONFIDENTIAL_CLIENT_ID),
        ]);
        if let Some(secret) = auth {
            b = b.basic_auth(DEFAULT_CONFIDENTIAL_CLIENT_ID, Some(secret));
        }
        b.send()
    };
    let body: Value = send(None).await.expect("send").json().await.expect("json");
    assert_eq!(error_of(&body).0, "invalid_client", "no PKCE and no secret");
    let body: Value = send(Some(DEFAULT_CONFIDENTIAL_CLIENT_SECRET))
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(body["refresh_token"].is_string(), "{body}");
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
    // A public client without PKCE.
    let r = http()
        .get(format!("{}/authorize", emu.url()))
        .query(&[
            ("client_id", DEFAULT_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
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
    assert_eq!(emu.counters().refresh_token_uses[&rt1], 3);
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
        api(&emu, reqwest::Method::GET, "/v1/me", &at_alice).await.0,
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
async fn web_api_401_403_and_echo() {
    let emu = Emulator::start().await.expect("start");
    let (at, _) = login(&emu).await;
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["message"],
        "No token provided"
    );

    let (s, body) = api(&emu, reqwest::Method::GET, "/v1/me/playlists", &at).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": {"status": 403, "message": "Insufficient client scope"}})
    );
    let (s, _) = api(
        &emu,
        reqwest::Method::GET,
        "/v1/me/player/currently-playing",
        &at,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let r = http()
        .put(format!("{}/v1/some/thing?x=1", emu.url()))
        .bearer_auth(&at)
        .json(&json!({"a": 1}))
        .send()
        .await
        .expect("send");
    let echo: Value = r.json().await.expect("json");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/v1/some/thing");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body"], json!({"a": 1}));

    emu.update(|s| s.unauthorized_message = "Access token expired, friend".into());
    emu.expire_access_tokens();
    let (s, body) = api(&emu, reqwest::Method::GET, "/v1/me", &at).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["message"], "Access token expired, friend");
    let c = emu.counters();
    assert_eq!(
        (c.api_status(401), c.api_status(403), c.api_status(200)),
        (2, 2, 1)
    );
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
    let (s, pl) = api(&emu, reqwest::Method::GET, "/v1/me/playlists", at).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(pl["items"][0]["owner"]["id"], "alice");
    let (s, cp) = api(
        &emu,
        reqwest::Method::GET,
        "/v1/me/player/currently-playing",
        at,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cp["is_playing"], true);
}

#[tokio::test]
async fn unregistered_development_mode_user_gets_403() {
    let emu = Emulator::start().await.expect("start");
    let q = authorize(&emu, &[("emulator_user", "dave")]).await;
    let (_, body) = exchange(&emu, &q["code"]).await;
    let (s, body) = api(
        &emu,
        reqwest::Method::GET,
        "/v1/me",
        body["access_token"].as_str().expect("at"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"]["message"],
        "User not registered in the Developer Dashboard"
    );
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
    assert_eq!(
        api(&emu, reqwest::Method::GET, "/v1/me", &at).await.0,
        StatusCode::OK
    );
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
        s.rate_limit = Some(RateLimit {
            requests: 3,
            window_secs: 30,
            applies_to: Endpoint::Api,
        })
    });
    for _ in 0..3 {
        assert_eq!(
            api(&emu, reqwest::Method::GET, "/v1/me", &at).await.0,
            StatusCode::OK
        );
    }
    let r = http()
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(&at)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&wait));
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
    assert_eq!(c.refresh_token_uses[&rt], 4);
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
    assert!(page.contains("INVALID_CLIENT"), "{page}");
}
