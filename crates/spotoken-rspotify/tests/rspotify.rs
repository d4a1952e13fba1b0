//! rspotify's own client calls, with spotoken as the token source, against
//! the emulator: a call works, and rspotify's refresh reaches spotoken's.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use rspotify::prelude::*;
use spotoken::{Provider, Scopes, Tokens, crypto, store};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator};
use spotoken_rspotify::SpotokenSpotify;

#[tokio::test]
async fn rspotify_calls_the_api_and_refreshes_through_spotoken() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&emu.url(), &emu.url()).expect("provider"))
        .store(store::Sqlite::open(dir.path().join("tokens.db")).expect("store"))
        .keys(crypto::load_key_file(&dir.path().join("master.key")).expect("keys"))
        .clock(move || spotoken::store::unix_now() + o.load(Ordering::SeqCst))
        .build()
        .expect("tokens");
    let pending = tokens
        .begin_login(
            "http://127.0.0.1:45678/callback",
            &Scopes::parse("user-read-private"),
            spotoken::LoginOptions::default(),
        )
        .expect("begin");
    let back = emu
        .authorize(pending.url.as_str())
        .await
        .expect("authorize");
    tokens
        .complete_login("default", &pending, &back)
        .await
        .expect("login");

    let spotify = SpotokenSpotify::new(tokens.clone(), "default");
    let me = spotify.current_user().await.expect("me");
    assert_eq!(me.id.id(), "alice");
    assert_eq!(emu.counters().token_outcome("refresh_token", "ok"), 0);

    // Two hours on, for the emulator and for spotoken: the token is dead.
    emu.advance(std::time::Duration::from_secs(7200));
    offset.store(7200, Ordering::SeqCst);
    spotify.refresh_token().await.expect("refresh via spotoken");
    assert_eq!(emu.counters().token_outcome("refresh_token", "ok"), 1);
    let me = spotify.current_user().await.expect("me after refresh");
    assert_eq!(me.id.id(), "alice");

    // A spotoken error reaches the app inside rspotify's error.
    let nobody = SpotokenSpotify::new(tokens, "nobody");
    let e = nobody.current_user().await.expect_err("not logged in");
    let rspotify::ClientError::Io(io) = e else {
        panic!("{e:?}")
    };
    let inner = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<spotoken::Error>());
    assert!(
        matches!(inner, Some(spotoken::Error::AuthorizationNeeded { .. })),
        "{inner:?}"
    );
}
