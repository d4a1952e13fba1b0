//! Against Authlib 1.9 with Flask (`interop/authlib/server.py`): a second,
//! independent implementation of the code and refresh flows.

use super::*;

/// Code flow with PKCE, a rotating refresh, and a revoking logout. Authlib
/// leaves reuse detection to the application (ours does not add it), so a
/// replayed old refresh token is refused without harming the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_code_flow_rotation_and_revoking_logout() {
    let dir = interop_dir();
    let python = dir.join(".venv/bin/python");
    let Some(server) = Server::start(&python, &python, &["authlib/server.py"], &[]).await else {
        return;
    };
    let home = Home::new(&server);

    let (first, _) = login_then_rotate(&home).await;
    assert_eq!(
        server.try_refresh(&first).await,
        (400, "invalid_grant".into())
    );
    home.age().await;
    let token = home.run(&["token"]).await;
    assert_eq!(token.code, 0, "no family revocation here: {}", token.stderr);
    logout_revokes(&home, &server).await;
}
