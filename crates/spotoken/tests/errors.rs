//! Every error kind an app meets, matched the way an app outside the crate
//! matches it (issue 13): by variant and typed fields, not by message text.

mod common;

use std::time::Duration;

use spotoken::core::backoff::Backoff;
use spotoken::{Error, LoginState, RateLimiter, ReauthReason, Tokens};
use spotoken_emulator::{Emulator, Endpoint, Failure};

struct Env {
    emu: Emulator,
    _dir: tempfile::TempDir,
    tokens: Tokens,
}

async fn logged_in(scopes: &str) -> Env {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = common::builder(&emu, dir.path())
        .backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
            max_attempts: 2,
            ..Backoff::default()
        })
        .build()
        .expect("tokens");
    common::login(&tokens, &emu, "default", scopes).await;
    Env {
        emu,
        _dir: dir,
        tokens,
    }
}

#[tokio::test]
async fn not_logged_in_and_configuration_match_by_variant() {
    let env = logged_in("user-read-private").await;
    let e = env.tokens.access_token("nobody").await.expect_err("none");
    assert!(
        matches!(
            &e,
            Error::AuthorizationNeeded { account, reason: ReauthReason::NotLoggedIn } if account == "nobody"
        ),
        "{e:?}"
    );
    let e = Tokens::builder().build().expect_err("no client id");
    assert!(matches!(e, Error::Configuration(_)), "{e:?}");
}

#[tokio::test]
async fn invalid_grant_stays_typed_after_the_account_is_flagged() {
    let env = logged_in("user-read-private").await;
    env.emu.revoke(None);
    let is_invalid_grant = |e: &Error| {
        matches!(
            e,
            Error::AuthorizationNeeded {
                account,
                reason: ReauthReason::InvalidGrant { description },
            } if account == "default" && description.contains("revoked")
        )
    };
    let first = env
        .tokens
        .force_refresh("default")
        .await
        .expect_err("revoked");
    assert!(is_invalid_grant(&first), "{first:?}");
    // Flagged now: no request is made, and the reason is still typed.
    let again = env
        .tokens
        .access_token("default")
        .await
        .expect_err("flagged");
    assert!(is_invalid_grant(&again), "{again:?}");
    assert_eq!(again, first);
    let status = env.tokens.status("default").await.expect("status");
    assert_eq!(status.map(|s| s.state), Some(LoginState::ReauthRequired));
}

#[tokio::test]
async fn rate_limits_name_the_server_and_the_wait() {
    let env = logged_in("user-read-private").await;
    for (endpoint, by) in [
        (Endpoint::Token, RateLimiter::TokenEndpoint),
        (Endpoint::Api, RateLimiter::WebApi),
    ] {
        env.emu.inject(Failure {
            endpoint,
            status: 429,
            headers: [("Retry-After".to_owned(), "7980".to_owned())].into(),
            ..Failure::default()
        });
        let e = match by {
            RateLimiter::TokenEndpoint => env.tokens.force_refresh("default").await.map(drop),
            _ => env.tokens.api("default").get("/v1/me").await.map(drop),
        }
        .expect_err("429");
        assert!(
            matches!(
                e,
                Error::RateLimited { by: b, retry_after: Some(d), .. }
                    if b == by && d == Duration::from_secs(7980)
            ),
            "{e:?}"
        );
        assert_eq!(e.kind(), spotoken::ErrorKind::Temporary);
    }
}

#[tokio::test]
async fn scope_temporary_and_protocol_failures_match_by_variant() {
    let env = logged_in("user-read-private").await;
    let e = env
        .tokens
        .api("default")
        .get("/v1/me/playlists")
        .await
        .expect_err("scope");
    assert!(
        matches!(&e, Error::InsufficientScope { missing, .. } if missing == &["playlist-read-private"]),
        "{e:?}"
    );

    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 503,
        times: 100,
        ..Failure::default()
    });
    let e = env.tokens.force_refresh("default").await.expect_err("503");
    assert!(matches!(e, Error::Temporary { .. }), "{e:?}");
    env.emu.clear_failures();

    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 200,
        text: Some("<html>not a token</html>".into()),
        ..Failure::default()
    });
    let e = env
        .tokens
        .force_refresh("default")
        .await
        .expect_err("nonsense");
    assert!(
        matches!(
            e,
            Error::Protocol {
                status: Some(200),
                ..
            }
        ),
        "{e:?}"
    );
}
