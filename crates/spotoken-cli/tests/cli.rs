//! The real `spotoken` binary against the emulator, with a temporary home.

mod common;
mod interop;

use std::collections::HashMap;
use std::process::Stdio;

use common::{BIN, Env, age_account, browser, listening, output, refresh_tokens_seen, serve_login};
use serde_json::Value;
use spotoken_emulator::{Endpoint, Failure, Rotation};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_token_status_logout_round_trip() {
    let env = Env::new().await;
    let out = env
        .login(&["--scopes", "user-read-private,user-read-email"], |l| l)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("Logged in as Alice Emulated (alice)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("Logged in"),
        "the browser is told: {}",
        out.stdout
    );

    let token = env.run(&["token"]).await;
    assert_eq!(token.code, 0, "{}", token.stderr);
    let t = token.stdout.trim_end_matches('\n');
    assert!(
        t.starts_with("BQ") && !t.contains('\n'),
        "only the token on stdout: {:?}",
        token.stdout
    );
    assert_eq!(token.stdout, format!("{t}\n"));

    let status = env.run(&["status", "--output", "json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let v: Value = serde_json::from_str(&status.stdout).expect("status is JSON");
    let a = &v["accounts"][0];
    assert_eq!(a["account"], "default");
    assert_eq!(a["user_id"], "alice");
    assert_eq!(a["state"], "active");
    for field in [
        "scopes",
        "access_expires_at",
        "authorized_at",
        "refresh_token_seconds_left",
        "last_refresh",
    ] {
        assert!(a.get(field).is_some(), "status has {field}");
    }
    let me = env.run(&["api", "/v1/me"]).await;
    assert_eq!(me.code, 0, "{}", me.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&me.stdout).expect("json")["id"],
        "alice"
    );

    let logout = env.run(&["logout"]).await;
    assert_eq!(logout.code, 0);
    assert!(
        logout
            .stderr
            .contains("https://www.spotify.com/account/apps/")
    );
    let after = env.run(&["token"]).await;
    assert_eq!(after.code, 3, "{}", after.stderr);
    assert!(after.stderr.contains("spotoken login"), "{}", after.stderr);
    assert!(after.stdout.is_empty());

    // A trace-level log of the whole session holds no token.
    let mut all_logs = out.stderr.clone();
    for o in [&token, &status, &me, &logout, &after] {
        all_logs.push_str(&o.stderr);
    }
    assert!(
        all_logs.contains("TRACE") || all_logs.contains("DEBUG"),
        "logs were captured at trace level"
    );
    assert!(!all_logs.contains(t), "the access token leaked into logs");
    for rt in refresh_tokens_seen(&env.emu) {
        assert!(!all_logs.contains(&rt), "a refresh token leaked into logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_with_the_wrong_state_is_refused_and_stores_nothing() {
    let env = Env::new().await;
    let out = env
        .login(&[], |loc| {
            spotoken_emulator::with_query_param(&loc, "state", "forged")
        })
        .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("state"), "{}", out.stderr);
    assert!(
        out.stdout.contains("Login failed"),
        "the browser is told: {}",
        out.stdout
    );
    assert_eq!(env.run(&["token"]).await.code, 3, "nothing was stored");
    assert_eq!(
        env.emu.counters().token_requests_for("authorization_code"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_processes_after_expiry_make_one_refresh() {
    let env = Env::new().await;
    env.emu.update(|s| {
        s.rotation = Rotation::RotateReuseDetection;
        s.access_token_lifetime_secs = 600;
    });
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    age_account(&env).await;
    env.emu.update(|s| s.token_latency_ms = 100);
    // Every process wants 15 minutes of validity: the stored token (1 min) is
    // stale for all; the new one (10 min) is as fresh as a refresh can make it.
    let mut children = Vec::new();
    for _ in 0..16 {
        children.push(
            env.cmd(&["token", "--min-valid", "15m"])
                .spawn()
                .expect("spawn"),
        );
    }
    let mut outputs = Vec::new();
    for c in children {
        let o = c.wait_with_output().await.expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs.push(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    let c = env.emu.counters();
    assert_eq!(
        c.token_requests_for("refresh_token"),
        1,
        "one refresh for 16 processes"
    );
    assert_eq!(c.token_outcome("refresh_token", "invalid_grant"), 0);
    let first = &outputs[0];
    assert!(outputs.iter().all(|o| o == first), "16 identical tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_match_their_situations() {
    let env = Env::new().await;
    // 2: usage.
    assert_eq!(env.run(&["token", "--min-valid", "soon"]).await.code, 2);
    assert_eq!(env.run(&["no-such-command"]).await.code, 2);
    // 2: configuration (no client id anywhere).
    let mut c = env.cmd(&["token"]);
    c.env_remove("SPOTOKEN_CLIENT_ID");
    let o = c.output().await.expect("run");
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // 2: plain http to a non-loopback host.
    let mut c = env.cmd(&["token"]);
    c.env("SPOTOKEN_ACCOUNTS_URL", "http://accounts.example.com");
    assert_eq!(c.output().await.expect("run").status.code(), Some(2));
    // 3: not logged in.
    assert_eq!(env.run(&["token"]).await.code, 3);
    assert_eq!(env.run(&["status"]).await.code, 3);

    assert_eq!(env.login(&[], |l| l).await.code, 0);
    // 5: insufficient scope, naming it.
    let o = env.run(&["api", "/v1/me/playlists"]).await;
    assert_eq!(o.code, 5, "{}", o.stderr);
    assert!(o.stderr.contains("playlist-read-private"), "{}", o.stderr);
    // The library says what must happen; the CLI says which command does it.
    assert!(
        o.stderr
            .contains("hint: run `spotoken login --scopes <current>,playlist-read-private`"),
        "{}",
        o.stderr
    );
    // 2: the app's owner has no Premium (Spotify's plain-text 403).
    env.emu.update(|s| s.owner_premium = false);
    let o = env.run(&["api", "/v1/me"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("Premium"), "{}", o.stderr);
    env.emu.update(|s| s.owner_premium = true);
    // 4: temporary failure after retries.
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 503,
        times: 100,
        ..Failure::default()
    });
    let o = env.run(&["refresh"]).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    let _ = reqwest::Client::new()
        .delete(format!("{}/_emulator/failures", env.emu.url()))
        .send()
        .await;
    // 4: rate limited for hours: immediate, naming the wait.
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 429,
        headers: [("Retry-After".to_owned(), "7980".to_owned())].into(),
        ..Failure::default()
    });
    let o = env.run(&["api", "/v1/me"]).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("2 h 13 min"), "{}", o.stderr);
    // 1: the provider answers nonsense.
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 200,
        text: Some("<html>not a token</html>".into()),
        ..Failure::default()
    });
    let o = env.run(&["refresh"]).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    // 3: revoked.
    env.emu.revoke(None);
    let o = env.run(&["refresh"]).await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("Refresh token revoked"), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("hint: run `spotoken login --account default`"),
        "{}",
        o.stderr
    );
    let status = env.run(&["status", "--output", "json"]).await;
    assert_eq!(status.code, 3);
    let v: Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["accounts"][0]["state"], "reauth_required");
}

/// Logs in, revokes the grant, runs `daemon --once` with the notify command
/// `cmd(marker path)`, and returns what the command wrote to the marker.
async fn notify_after_revocation(env: &Env, cmd: impl FnOnce(&str) -> String) -> String {
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    age_account(env).await;
    env.emu.revoke(None);
    let marker = env.home.path().join("notified");
    let cmd = cmd(&marker.display().to_string());
    let o = env
        .run(&["daemon", "--once", "--margin", "5m", "--notify-cmd", &cmd])
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    std::fs::read_to_string(&marker).expect("the notify command ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_notifies_once_when_an_account_needs_a_login() {
    let env = Env::new().await;
    let text = notify_after_revocation(&env, |marker| {
        format!("echo \"$1|$SPOTOKEN_REASON|$3\" >> {marker}")
    })
    .await;
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("default|"), "{text}");
    assert!(text.contains("spotoken login --account default"), "{text}");
    assert!(text.contains("revoked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_storage_settings_exit_2_saying_why() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new().await;
    // A database reached in clear over the network.
    let o = env
        .run(&[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            "postgres://spotoken@db.example/spotoken?sslmode=disable",
        ])
        .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("sslmode=disable"), "{}", o.stderr);
    // A home other users can write to.
    let shared = env.home.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let o = env
        .run(&["--home", &shared.display().to_string(), "status"])
        .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("writable by other users"), "{}", o.stderr);
    let mode = std::fs::metadata(&shared)
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o777, "its mode is left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_notify_command_does_not_inherit_secrets() {
    let env = Env::with_secrets().await;
    let text = notify_after_revocation(&env, |marker| format!("env > {marker}")).await;
    assert!(text.contains("SPOTOKEN_REASON="), "{text}");
    env.assert_no_secret_in(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_opener_does_not_inherit_secrets() {
    let env = Env::with_secrets().await;
    let dump = env.home.path().join("browser-env");
    // The opener hands the URL over a FIFO after writing its environment, so
    // the dump is complete once the test has the URL.
    let fifo = env.home.path().join("url");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let opener = format!(
        "env > {}; printf '%s\\n' > {}",
        dump.display(),
        fifo.display()
    );
    let mut login = env.cmd(&["login", "--timeout", "30s"]);
    login
        .env("SPOTOKEN_BROWSER", &opener)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = login.spawn().expect("spawn login");
    let fifo_path = fifo.clone();
    let url = tokio::task::spawn_blocking(move || std::fs::read_to_string(fifo_path))
        .await
        .expect("join")
        .expect("the opener got the URL");
    let browser = browser();
    let r = browser.get(url.trim()).send().await.expect("authorize");
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let page = browser.get(location).send().await.expect("callback");
    assert_eq!(page.status(), 200);
    assert_eq!(child.wait().await.expect("wait").code(), Some(0));
    let text = std::fs::read_to_string(&dump).expect("the opener ran");
    env.assert_no_secret_in(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_refreshes_tokens_ahead_of_expiry() {
    let env = Env::new().await;
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    age_account(&env).await;
    let o = env
        .run(&["daemon", "--once", "--margin", "5m", "--jitter", "0"])
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(env.emu.counters().token_outcome("refresh_token", "ok"), 1);
}

#[tokio::test]
async fn demo_runs_with_no_configuration() {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTOKEN_") {
            c.env_remove(k);
        }
    }
    let home = tempfile::tempdir().expect("tmp");
    let o = c
        .arg("demo")
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path())
        // Logs to a pipe: plain text, whatever the level (issue 16).
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .await
        .expect("run");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("DEBUG"), "logs were written: {stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'),
        "no escape codes into a pipe: {stderr}"
    );
    assert!(
        stdout.contains("100 callers -> 1 token request, 0 failures"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /v1/me -> Alice Emulated (alice)"),
        "the profile of a development-mode app: {stdout}"
    );
}

#[tokio::test]
async fn completions_and_accounts() {
    let env = Env::new().await;
    let o = env.run(&["completions", "bash"]).await;
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("spotoken"));
    let o = env.run(&["accounts", "--set-default", "work"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let cfg = std::fs::read_to_string(env.home.path().join("config.toml")).expect("config");
    assert!(cfg.contains("default_account = \"work\""), "{cfg}");
    let o = env.run(&["accounts", "--output", "json"]).await;
    let v: HashMap<String, Value> = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["default_account"], "work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_refresh_leaves_a_readable_store_and_no_stuck_lock() {
    let env = Env::new().await;
    env.emu.update(|s| {
        s.rotation = Rotation::Rotate;
        s.grace_secs = 60;
    });
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    age_account(&env).await;
    // The refresh hangs long enough to kill the process holding the refresh lock.
    env.emu.update(|s| s.token_latency_ms = 5_000);
    let mut victim = env.cmd(&["token"]).spawn().expect("spawn");
    let started = std::time::Instant::now();
    // The peak is recorded when a refresh request arrives (the count, when it ends).
    while env.emu.counters().max_peak_concurrent_refreshes() == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the refresh never started"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    victim.kill().await.expect("kill -9");
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        0,
        "killed mid-request"
    );
    env.emu.update(|s| s.token_latency_ms = 0);
    // The store is intact and the lock died with the process: a new process
    // refreshes (the old refresh token is still inside the provider's grace).
    let o = env.run(&["token"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let status = env.run(&["status", "--output", "json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
}

/// `spotoken` alone (no `spotoken-full` beside it): a fresh cached token is
/// answered by the small executable itself; anything else needs the full
/// program and says so (exit 2). With both, every command works through the
/// hand-over, which keeps the exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_executable_answers_fresh_tokens_alone_and_hands_over_the_rest() {
    let env = Env::new().await;
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    let full = env.run(&["token"]).await;
    assert_eq!(full.code, 0, "{}", full.stderr);

    let lonely = tempfile::tempdir().expect("tmp");
    let front = lonely.path().join("spotoken");
    std::fs::copy(BIN, &front).expect("copy spotoken alone");
    let run_alone = |args: &[&str]| {
        let c = env.cmd(args);
        let mut alone = Command::new(&front);
        alone
            .args(args)
            .envs(
                c.as_std()
                    .get_envs()
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        alone
    };
    let o = run_alone(&["token"]).output().await.expect("run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        full.stdout,
        "the same token, from the store"
    );

    for args in [&["status"][..], &["token", "--min-valid", "2h"][..]] {
        let o = run_alone(args).output().await.expect("run");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("spotoken-full"), "{args:?}: {err}");
    }

    // With spotoken-full beside it: version, and an exit code from the full program.
    let v = env.run(&["--version"]).await;
    assert_eq!(v.code, 0);
    assert!(v.stdout.starts_with("spotoken "), "{}", v.stdout);
    let bad = env.run(&["token", "--min-valid", "soon"]).await;
    assert_eq!(bad.code, 2, "usage error from clap in spotoken-full");
}

/// A stale token is read and decrypted by a fast path once (issue 18):
/// `spotoken` tries it, finds the token stale and hands the call over marked
/// as tried, and `spotoken-full` starts past its own fast path (its debug log
/// says so) to refresh. Called directly, `spotoken-full` still answers a
/// fresh token on its fast path, before any logging is set up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_goes_through_the_fast_path_once() {
    const FULL: &str = env!("CARGO_BIN_EXE_spotoken-full");
    let env = Env::new().await;
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    age_account(&env).await;
    let stale = env.run(&["token"]).await;
    assert_eq!(stale.code, 0, "{}", stale.stderr);
    assert!(
        stale
            .stderr
            .contains("spotoken tried the fast path; starting past it"),
        "{}",
        stale.stderr
    );
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 1);

    let direct = output(env.cmd_program(FULL, &["token"])).await;
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_eq!(direct.stdout, stale.stdout, "the refreshed token, cached");
    assert!(
        direct.stderr.is_empty(),
        "answered before logging: {}",
        direct.stderr
    );
}

/// `spotoken serve` as deployed: several event loops, the binary's own signal
/// handling. Clients on separate connections are served (connections are
/// handed to the least busy loop), upstream connections are pooled, and
/// SIGTERM lets a request in flight finish before the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pools_upstream_connections_and_finishes_requests_on_sigterm() {
    let env = Env::new().await;
    let mut child = env
        .cmd(&["serve", "--bind", "127.0.0.1:0", "--threads", "3"])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (server, _) = listening(&mut lines).await;
    let rest = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    // Log in as a browser would (the emulator consents on its own).
    let session = serve_login(&server).await.session;
    env.emu.reset_counters();

    // Twelve clients, each on its own connection, five requests each.
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (c, url, cookie) = (browser(), format!("{server}/api/v1/me"), session.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..5 {
                    let r = c
                        .get(&url)
                        .header("cookie", &cookie)
                        .send()
                        .await
                        .expect("api");
                    statuses.push(r.status().as_u16());
                    let body: Value = r.json().await.expect("json");
                    assert_eq!(body["id"], "alice", "{body}");
                }
                statuses
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.await.expect("client"), vec![200; 5]);
    }
    let counters = env.emu.counters();
    assert_eq!(counters.api_requests.get("200"), Some(&60));
    assert!(
        counters.connections <= 12,
        "60 requests from 12 clients took {} upstream connections",
        counters.connections
    );

    // A slow request in flight when SIGTERM arrives still gets its answer.
    env.emu.update(|s| s.api_latency_ms = 400);
    env.emu.reset_counters();
    let slow = {
        let (c, url, cookie) = (browser(), format!("{server}/api/v1/me"), session.clone());
        tokio::spawn(async move { c.get(&url).header("cookie", &cookie).send().await })
    };
    // Wait until the server is serving it (its in-flight gauge), then stop it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = browser()
            .get(format!("{server}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if m.contains("spotoken_proxy_in_flight 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never started:\n{m}"
        );
        tokio::task::yield_now().await;
    }
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let r = slow
        .await
        .expect("task")
        .expect("the slow request is answered");
    assert_eq!(r.status(), 200);
    let status = child.wait().await.expect("wait");
    let stderr = rest.await.expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("spotoken serve stopped"), "{stderr}");
}

/// `spotoken serve` with no flags takes its settings from the `[serve]` table
/// of `config.toml`; a misspelt key there is a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_the_serve_table_of_the_config_file() {
    let env = Env::new().await;
    let config = env.home.path().join("config.toml");
    std::fs::write(
        &config,
        "[serve]\nbind = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:4321\"\ndemo = true\n",
    )
    .expect("write config");
    let mut child = env.cmd(&["serve"]).spawn().expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (addr, line) = listening(&mut lines).await;
    assert!(line.contains("public URL http://127.0.0.1:4321"), "{line}");
    let demo = reqwest::get(format!("{addr}/")).await.expect("demo page");
    assert_eq!(demo.status(), 200, "demo = true in the table");
    child.kill().await.expect("kill");

    std::fs::write(&config, "[serve]\nbnd = \"127.0.0.1:0\"\n").expect("write config");
    let bad = env.run(&["serve"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("config.toml"), "{}", bad.stderr);
}

/// `spotoken serve` in text: one line per request at info level without
/// being asked, and no colour into a pipe (issue 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_a_plain_line_per_request_at_info_by_default() {
    let env = Env::new().await;
    let mut child = env
        .cmd(&["serve", "--bind", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .spawn()
        .expect("spawn serve");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(60), stderr.next_line())
            .await
            .expect("a line arrives")
            .expect("read")
            .expect("a line")
    };
    let server = loop {
        let line = next().await;
        if let Some(rest) = line.strip_prefix("spotoken serve listening on ") {
            break rest.split(' ').next().expect("address").to_owned();
        }
    };
    let r = browser()
        .get(format!("{server}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let line = loop {
        let line = next().await;
        if line.contains("handled") {
            break line;
        }
    };
    assert!(
        line.contains("INFO") && line.contains("path=/healthz"),
        "{line}"
    );
    assert!(line.contains("status=200"), "{line}");
    assert!(!line.contains('\u{1b}'), "no colour into a pipe: {line:?}");
    child.kill().await.expect("kill");
}

/// `spotoken --output json serve`: where it listens as JSON on stdout, and a
/// log collector's format on stderr: one JSON object per line, each request
/// with its id, and never a query string or a cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_lines_with_request_ids_and_no_secrets() {
    let env = Env::new().await;
    let mut child = env
        .cmd(&[
            "--output",
            "json",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--metrics-bind",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = stdout.next_line().await.expect("read").expect("a line");
    let started: Value = serde_json::from_str(&first).expect("JSON on stdout");
    let server = started["listening"].as_str().expect("address").to_owned();
    assert_eq!(started["demo"], Value::Null);

    let http = browser();
    let r = http
        .get(format!("{server}/healthz"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.headers()["x-request-id"], "trace-me-1");
    let cookie = "__Host-spotoken_session=not-a-real-session-value";
    let r = http
        .get(format!("{server}/api/v1/me?code=query-secret"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 401);

    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut handled = Vec::new();
    while handled.len() < 2 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), stderr.next_line())
            .await
            .expect("the request logs arrive")
            .expect("read")
            .expect("a line");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(!line.contains("query-secret"), "{line}");
        assert!(!line.contains("not-a-real-session-value"), "{line}");
        if v["fields"]["message"] == "handled" {
            handled.push(v);
        }
    }
    assert_eq!(handled[0]["span"]["request_id"], "trace-me-1");
    assert_eq!(handled[0]["span"]["path"], "/healthz");
    assert_eq!(handled[0]["fields"]["status"], 200);
    assert_eq!(handled[1]["span"]["path"], "/api/v1/me");
    assert_eq!(handled[1]["fields"]["status"], 401);
    // Issue 11, finding 7: with --metrics-bind, /metrics is only there.
    let metrics = started["metrics"].as_str().expect("metrics address");
    let r = http.get(metrics).send().await.expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .expect("text")
            .contains("spotoken_active_sessions")
    );
    let r = http
        .get(format!("{server}/metrics"))
        .send()
        .await
        .expect("main");
    assert_eq!(r.status(), 404, "not where browsers connect");
    child.kill().await.expect("kill");
}

/// The README's two commands (issue 16): `serve --emulator --static
/// examples/spa` needs no client id and no Spotify: logins go to the emulator
/// started in the same process, and the app is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_built_in_emulator_serves_the_example_app() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let home = tempfile::tempdir().expect("tmp");
    let spa = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/spa");
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTOKEN_") {
            c.env_remove(k);
        }
    }
    let mut child = c
        .args(["--output", "json", "serve", "--emulator", "--static", spa])
        .args(["--bind", "127.0.0.1:0"])
        .env("SPOTOKEN_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), stdout.next_line())
        .await
        .expect("it starts")
        .expect("read")
        .expect("a line");
    let started: Value = serde_json::from_str(&first).expect("JSON on stdout");
    let server = started["listening"].as_str().expect("address").to_owned();
    let emulator = started["emulator"]
        .as_str()
        .expect("emulator address")
        .to_owned();
    let http = browser();
    let r = http
        .get(format!("{server}/search?q=loop"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .expect("text")
            .contains("<script type=\"module\" src=\"/app.js\">")
    );
    let r = http
        .get(format!("{server}/auth/login?return_to=/search%3Fq%3Dloop"))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 302);
    let to = r.headers()["location"].to_str().expect("location");
    assert!(to.starts_with(&format!("{emulator}/authorize?")), "{to}");
    assert!(to.contains("client_id=spotoken-emulator-client"), "{to}");
    let consent = http.get(to).send().await.expect("consent page");
    assert_eq!(consent.status(), 200, "the emulator's consent page");
    assert!(consent.text().await.expect("text").contains("approve"));
    assert!(
        home.path().join("serve-emulator.db").exists(),
        "its own store"
    );
    child.kill().await.expect("kill");
}

/// Issue 12: a provider named by its issuer is discovered, the device flow
/// logs in, and the account remembers where it came from: later commands
/// without `--issuer` (whose configured endpoints have no issuer) refresh it
/// at the discovered token endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_through_discovery_and_the_account_remembers_its_issuer() {
    let env = Env::new().await;
    env.emu.update(|s| s.device_interval_secs = 1);
    let issuer = env.emu.url();
    let out = env
        .run(&[
            "--issuer",
            &issuer,
            "login",
            "--device",
            "--scopes",
            "user-read-private",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("enter the code"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{issuer}/device")),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.emu.counters().token_outcome(
            spotoken::core::device::DEVICE_CODE_GRANT,
            "authorization_pending"
        ),
        1
    );

    let status = env.run(&["status", "--output", "json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let v: Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["accounts"][0]["issuer"], issuer.as_str());
    let text = env.run(&["status"]).await;
    assert!(
        text.stdout.contains(&format!("provider:       {issuer}")),
        "{}",
        text.stdout
    );

    // A fresh cached token costs no discovery, on the fast path or the full one.
    let fetched = env.emu.counters().discovery_requests;
    for args in [
        &["token", "--issuer", &issuer][..],
        &["--issuer", &issuer, "-v", "token"][..],
    ] {
        let token = env.run(args).await;
        assert_eq!(token.code, 0, "{}", token.stderr);
    }
    assert_eq!(env.emu.counters().discovery_requests, fetched);

    age_account(&env).await;
    let token = env.run(&["token"]).await;
    assert_eq!(token.code, 0, "{}", token.stderr);
    assert_eq!(env.emu.counters().token_outcome("refresh_token", "ok"), 1);
    // The daemon refreshes it there too.
    age_account(&env).await;
    let daemon = env.run(&["daemon", "--once"]).await;
    assert_eq!(daemon.code, 0, "{}", daemon.stderr);
    assert_eq!(env.emu.counters().token_outcome("refresh_token", "ok"), 2);

    // Logout revokes at the discovered endpoint, waiting out a 503's
    // Retry-After, and deletes the account.
    env.emu.inject(Failure {
        path: Some("/oauth2/revoke".into()),
        status: 503,
        headers: [("Retry-After".to_owned(), "1".to_owned())].into(),
        ..Failure::default()
    });
    let logout = env.run(&["logout", "--output", "json"]).await;
    assert_eq!(logout.code, 0, "{}", logout.stderr);
    assert!(
        logout.stderr.contains("revocation failed; retrying"),
        "{}",
        logout.stderr
    );
    let v: Value = serde_json::from_str(&logout.stdout).expect("json");
    assert_eq!(v["logged_out"][0]["revoked"], true, "{}", logout.stdout);
    assert!(v["logged_out"][0]["remove_access_at"].is_null());
    assert_eq!(env.emu.counters().token_outcome("revocation", "revoked"), 1);
    assert_eq!(env.run(&["status"]).await.code, 3, "deleted locally");
}

/// Issue 12: a refused device login stops at once with a clear message
/// (exit 3), storing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_device_login_stops_with_a_clear_message() {
    let env = Env::new().await;
    env.emu.update(|s| {
        s.device_interval_secs = 1;
        s.deny = true;
    });
    let issuer = env.emu.url();
    let out = env.run(&["--issuer", &issuer, "login", "--device"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("access was denied"), "{}", out.stderr);
    assert_eq!(env.run(&["status"]).await.code, 3, "nothing stored");
}

/// Issue 12: an issuer without a discovery document is a configuration
/// error that says what to configure instead (exit 2), not a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_without_a_discovery_document_is_a_configuration_error() {
    let env = Env::new().await;
    let issuer = format!("{}/tenant", env.emu.url());
    let out = env.run(&["--issuer", &issuer, "login", "--device"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("publishes no discovery document"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("token_url"), "{}", out.stderr);
}
