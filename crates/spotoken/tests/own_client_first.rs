//! An app that builds its own `reqwest::Client` before touching spotoken must
//! not panic (issue 13): with reqwest's features unified across the program,
//! a TLS build without a crypto provider panics in `Client::new()`. This is its
//! own test binary so that no other test has installed a provider first.

mod common;

use spotoken_emulator::Emulator;

#[tokio::test]
async fn an_apps_own_client_built_first_works_and_can_be_handed_in() {
    // Before any spotoken call: this is what panicked.
    let own = reqwest::Client::new();

    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = common::builder(&emu, dir.path())
        .http_client(own.clone())
        .build()
        .expect("tokens");
    common::login(&tokens, &emu, "default", "user-read-private").await;

    // The app's own client, used by hand with a token from spotoken.
    let token = tokens.access_token("default").await.expect("token");
    let me = own
        .get(format!("{}/v1/me", emu.url()))
        .bearer_auth(token.expose())
        .send()
        .await
        .expect("request");
    assert_eq!(me.status(), 200);
    // And spotoken's API client, going through the client handed in.
    let me = tokens.api("default").get("/v1/me").await.expect("api");
    assert_eq!(me.status, 200);
}
