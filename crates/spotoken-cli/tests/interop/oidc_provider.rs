//! Against oidc-provider 9 (`interop/oidc-server.mjs`).

use super::*;

async fn start(env: &[(&str, &str)]) -> Option<Server> {
    let dir = interop_dir();
    Server::start(
        &dir.join("node_modules/oidc-provider"),
        Path::new("node"),
        &["oidc-server.mjs"],
        env,
    )
    .await
}

/// Code flow with PKCE, a refresh that rotates, reuse of the old refresh
/// token revoking the whole grant (spotoken then asks for a login, exit 3,
/// and stays flagged instead of retrying), and a logout whose revocation
/// makes the refresh token useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_rotation_reuse_detection_and_revoking_logout() {
    let Some(server) = start(&[]).await else {
        return;
    };
    let home = Home::new(&server);

    let (first, _) = login_then_rotate(&home).await;
    let status = home.run(&["status", "--output", "json"]).await;
    let v: Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["accounts"][0]["issuer"], server.issuer.as_str());

    // Someone replays the rotated-out token: the provider refuses it and
    // revokes the grant, so spotoken's current token dies too.
    assert_eq!(
        server.try_refresh(&first).await,
        (400, "invalid_grant".into())
    );
    home.age().await;
    let token = home.run(&["token"]).await;
    assert_eq!(token.code, 3, "{}", token.stderr);
    assert!(token.stderr.contains("invalid_grant"), "{}", token.stderr);
    let status = home.run(&["status", "--output", "json"]).await;
    assert_eq!(status.code, 3);
    let v: Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["accounts"][0]["state"], "reauth_required");
    // Flagged: no retry loop, the same answer at once.
    let again = home.run(&["token"]).await;
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert!(
        !again.stderr.contains("refresh failed; retrying"),
        "{}",
        again.stderr
    );

    // A new login, then logout revokes at the provider.
    let login = home.login().await;
    assert_eq!(login.code, 0, "{}", login.stderr);
    logout_revokes(&home, &server).await;
    let status = home.run(&["status"]).await;
    assert_eq!(status.code, 3, "the account is gone locally too");
}

/// The device flow, with the provider asking once to slow down: spotoken
/// waits 5 s, is told `slow_down`, waits 10 s, and gets the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_device_flow_survives_a_slow_down() {
    let Some(mut server) = start(&[("SLOW_DOWN_ONCE", "1")]).await else {
        return;
    };
    let home = Home::new(&server);
    let mut child = home
        .cmd(&["login", "--device", "--scopes", "openid offline_access"])
        .spawn()
        .expect("spawn login --device");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = String::new();
    let complete = loop {
        let line = lines
            .next_line()
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("no verification URI:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.strip_prefix("(or open ") {
            break rest
                .split_whitespace()
                .next()
                .expect("url")
                .trim_end_matches(',')
                .to_owned();
        }
    };
    assert!(seen.contains("enter the code"), "{seen}");
    // The user approves only after spotoken has been told to slow down.
    server.wait_for("slow_down").await;
    let page = Bot::default().click_through(&complete, None).await;
    assert!(!page.contains("<form"), "ended on a form:\n{page}");
    let status = child.wait().await.expect("wait");
    while let Some(l) = lines.next_line().await.expect("read") {
        seen.push_str(&l);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(0), "{seen}");
    assert!(seen.contains("asked to slow down"), "{seen}");
    assert!(seen.contains("interval_secs=10"), "{seen}");
    let token = home.run(&["token"]).await;
    assert_eq!(token.code, 0, "{}", token.stderr);
    assert!(!token.stdout.trim().is_empty());
}
