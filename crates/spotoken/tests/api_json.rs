//! The Web API client's JSON helpers as an app calls them: typed GETs, JSON
//! bodies from any `Serialize`, and a non-2xx GET as an error naming its status.

mod common;

use spotoken::Error;
use spotoken_emulator::Emulator;

#[derive(serde::Deserialize)]
struct Me {
    id: String,
}

#[tokio::test]
async fn json_helpers_send_and_read_json() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = common::builder(&emu, dir.path()).build().expect("tokens");
    common::login(
        &tokens,
        &emu,
        "default",
        "user-read-private playlist-modify-private",
    )
    .await;
    let api = tokens.api("default");

    let me: Me = api.get_json("/v1/me").await.expect("me");
    assert_eq!(me.id, "alice");

    let created = api
        .post_json(
            "/v1/me/playlists",
            &serde_json::json!({"name": "from spotoken", "public": false}),
        )
        .await
        .expect("create");
    assert_eq!(created.status, 201);
    let playlist: serde_json::Value = created.json().expect("json");
    assert_eq!(playlist["name"], "from spotoken");
    assert_eq!(playlist["public"], false);

    let e = api
        .get_json::<serde_json::Value>("/v1/no-such-endpoint")
        .await
        .expect_err("404");
    assert!(
        matches!(
            e,
            Error::Protocol {
                status: Some(404),
                ..
            }
        ),
        "{e:?}"
    );
}
