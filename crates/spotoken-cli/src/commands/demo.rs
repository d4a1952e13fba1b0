//! `spotoken demo`: the whole life of a Spotify token in a minute, against the
//! built-in emulator, with a temporary home, no configuration and no network.
//! It narrates each step and checks the numbers it claims (from the
//! emulator's counters), failing if any claim is false.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use spotoken::core::endpoint::Provider;
use spotoken::core::scope::Scopes;
use spotoken::crypto::KeyRing;
use spotoken::store::{Sqlite, unix_now};
use spotoken::{Error, Tokens};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator, Rotation};

fn step(n: u32, title: &str) {
    crate::output::line(&format!("\n{n}. {title}"));
}

fn say(s: &str) {
    crate::output::line(&format!("   {s}"));
}

fn check(ok: bool, claim: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "the demo's claim did not hold: {claim}"
        )))
    }
}

/// Runs the demo.
pub(crate) async fn exec() -> Result<u8, Error> {
    let emu = Emulator::start()
        .await
        .map_err(|e| Error::Internal(format!("cannot start the emulator: {e}")))?;
    let home = std::env::temp_dir().join(format!(
        "spotoken-demo-{}-{}",
        std::process::id(),
        unix_now()
    ));
    let result = run(&emu, &home).await;
    let _ = std::fs::remove_dir_all(&home);
    result.map(|()| 0)
}

/// The demo's clock: the engine's idea of now, moved on by the steps.
type Clock = Arc<AtomicI64>;

/// An hour: the lifetime of a Spotify access token.
const HOUR: i64 = 3600;
/// How many callers ask at once in step 4.
const CALLERS: usize = 100;
/// The emulator's token latency in step 4: long enough that every caller
/// arrives while the one refresh is in flight.
const SLOW_TOKEN_ENDPOINT_MS: u64 = 150;
/// The redirect URI of the demo's login (the emulator redirects to it
/// without anyone listening).
const REDIRECT_URI: &str = "http://127.0.0.1:8888/callback";

async fn run(emu: &Emulator, home: &std::path::Path) -> Result<(), Error> {
    crate::output::line(
        "spotoken demo: a Spotify token's life, against a local emulator (no network, no setup)",
    );
    say(&format!(
        "emulator: {}   temporary home: {}",
        emu.url(),
        home.display()
    ));
    let clock = Clock::default();
    let o = clock.clone();
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&emu.url(), &emu.url())?)
        .store(Sqlite::open(home.join("tokens.db"))?)
        .keys(KeyRing::generate())
        .clock(move || unix_now() + o.load(Ordering::SeqCst))
        .build()?;
    log_in(emu, &tokens).await?;
    call_the_api(&tokens).await?;
    refresh_silently(emu, &tokens, &clock).await?;
    many_callers_one_refresh(emu, &tokens, &clock).await?;
    access_removed(emu, &tokens, &clock).await?;
    crate::output::line(
        "\nDone. With a real Spotify app: spotoken login --client-id YOUR_ID, then spotoken token.",
    );
    Ok(())
}

async fn log_in(emu: &Emulator, tokens: &Tokens) -> Result<(), Error> {
    step(
        1,
        "Log in with PKCE (the emulator approves at once, as a user clicking Agree would)",
    );
    let pending = tokens.begin_login(
        REDIRECT_URI,
        &Scopes::parse("user-read-private user-read-email"),
        spotoken::LoginOptions::default(),
    )?;
    // Enough of the URL to see the parameters, on one line of a terminal.
    const URL_SHOWN: usize = 90;
    say(&format!(
        "authorize URL: {}…",
        &pending.url.as_str()[..pending.url.as_str().len().min(URL_SHOWN)]
    ));
    let location = emu
        .authorize(pending.url.as_str())
        .await
        .map_err(|e| Error::Internal(format!("the emulator did not redirect back: {e}")))?;
    say("redirected back with a code and our state; exchanging it with the PKCE verifier");
    let login = tokens
        .complete_login("default", &pending, &location)
        .await?;
    say(&format!(
        "logged in as {} ({}), scopes granted: {}",
        login.display_name.as_deref().unwrap_or("?"),
        login.user_id.as_deref().unwrap_or("?"),
        login.granted.to_wire()
    ));
    say("the refresh token is in SQLite, encrypted (XChaCha20-Poly1305), file mode 0600");
    Ok(())
}

async fn call_the_api(tokens: &Tokens) -> Result<(), Error> {
    step(2, "Call the Web API");
    let me: serde_json::Value = tokens.api("default").get("/v1/me").await?.json()?;
    say(&format!(
        "GET /v1/me -> {} ({})",
        me["display_name"].as_str().unwrap_or("?"),
        me["id"].as_str().unwrap_or("?")
    ));
    say("(no e-mail or country: the emulator is a development-mode app, as a new Spotify app is)");
    Ok(())
}

async fn refresh_silently(emu: &Emulator, tokens: &Tokens, clock: &Clock) -> Result<(), Error> {
    step(
        3,
        "An hour passes: the token expires and is refreshed silently (with rotation on)",
    );
    emu.update(|s| s.rotation = Rotation::RotateReuseDetection);
    clock.fetch_add(HOUR, Ordering::SeqCst);
    tokens.access_token("default").await?;
    let c = emu.counters();
    check(c.token_outcome("refresh_token", "ok") == 1, "one refresh")?;
    say("access_token(\"default\") refreshed once; Spotify handed back a new refresh token,");
    say("which was committed to disk before the new access token was returned");
    Ok(())
}

async fn many_callers_one_refresh(
    emu: &Emulator,
    tokens: &Tokens,
    clock: &Clock,
) -> Result<(), Error> {
    step(4, "Another hour; 100 callers ask at the same moment");
    emu.update(|s| s.token_latency_ms = SLOW_TOKEN_ENDPOINT_MS);
    clock.fetch_add(HOUR, Ordering::SeqCst);
    let before = emu.counters().token_requests_for("refresh_token");
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let t = tokens.clone();
        tasks.push(tokio::spawn(async move { t.access_token("default").await }));
    }
    let mut failures = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(_))) {
            failures += 1;
        }
    }
    let c = emu.counters();
    let refreshes = c.token_requests_for("refresh_token") - before;
    say(&format!(
        "100 callers -> {refreshes} token request, {failures} failures, peak concurrent refreshes {}",
        c.max_peak_concurrent_refreshes()
    ));
    check(
        refreshes == 1 && failures == 0,
        "100 concurrent callers cause exactly one refresh",
    )?;
    say("(a naive client would have sent 100 refreshes; with rotation and reuse detection,");
    say(" the second one would have revoked the user's whole grant)");
    Ok(())
}

async fn access_removed(emu: &Emulator, tokens: &Tokens, clock: &Clock) -> Result<(), Error> {
    step(5, "The user removes the app's access at Spotify");
    emu.revoke(None);
    clock.fetch_add(HOUR, Ordering::SeqCst);
    match tokens.access_token("default").await {
        Err(e) if e.kind() == spotoken::ErrorKind::AuthorizationNeeded => {
            say(&format!("error (exit code {}): {e}", e.kind().exit_code()));
            say("the account is flagged, not deleted; no further token requests until a new login");
        }
        other => {
            return Err(Error::Internal(format!(
                "expected an authorization-needed error, got {:?}",
                other.map(|_| "a token")
            )));
        }
    }
    let status = tokens.status("default").await?.map(|s| s.state);
    check(
        status == Some(spotoken::LoginState::ReauthRequired),
        "the account is flagged",
    )
}
