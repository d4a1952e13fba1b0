//! The library against the emulator: login, storms, rotation, errors, crypto,
//! the Web API client, and a trace-level log that must never hold a token.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use spotoken::core::backoff::Backoff;
use spotoken::core::endpoint::Provider;
use spotoken::core::scope::Scopes;
use spotoken::crypto::KeyRing;
use spotoken::store::{Sqlite, unix_now};
use spotoken::{ErrorKind, Tokens};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator, Endpoint, Failure, Rotation};

const REDIRECT: &str = "http://127.0.0.1:45678/callback";

/// Every log line of this test binary, at trace level.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_not_logged(secrets: &[String]) {
    let logs = String::from_utf8_lossy(&log_buffer().lock().expect("log lock")).into_owned();
    assert!(!logs.is_empty(), "the trace-level capture is active");
    for s in secrets {
        assert!(!logs.contains(s.as_str()), "a token appeared in the logs");
    }
}

struct Env {
    emu: Emulator,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    key: spotoken::core::secret::Key32,
    keys: KeyRing,
    offset: Arc<AtomicI64>,
    tokens: Tokens,
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        ..Backoff::default()
    }
}

impl Env {
    async fn new() -> Self {
        log_buffer();
        let emu = Emulator::start().await.expect("emulator");
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("home").join("tokens.db");
        let key = spotoken::crypto::random_key();
        let keys = KeyRing::new(vec![key.clone()]).expect("ring");
        let offset = Arc::new(AtomicI64::new(0));
        let tokens = Self::engine(&emu, &db, keys.clone(), offset.clone());
        Self {
            emu,
            _dir: dir,
            db,
            key,
            keys,
            offset,
            tokens,
        }
    }

    /// A second engine on the same store file (another "process").
    fn engine(
        emu: &Emulator,
        db: &std::path::Path,
        keys: KeyRing,
        offset: Arc<AtomicI64>,
    ) -> Tokens {
        Self::engine_as(DEFAULT_CLIENT_ID, emu, db, keys, offset)
    }

    /// [`Self::engine`] configured with another client id.
    fn engine_as(
        client_id: &str,
        emu: &Emulator,
        db: &std::path::Path,
        keys: KeyRing,
        offset: Arc<AtomicI64>,
    ) -> Tokens {
        Tokens::builder()
            .client_id(client_id)
            .provider(Provider::spotify_like(&emu.url(), &emu.url()).expect("provider"))
            .store(Sqlite::open(db).expect("store"))
            .keys(keys)
            .backoff(fast_backoff())
            .clock(move || unix_now() + offset.load(Ordering::SeqCst))
            .build()
            .expect("tokens")
    }

    /// Moves our clock (not the emulator's) past the access token's expiry.
    fn expire_locally(&self) {
        self.offset.fetch_add(3600, Ordering::SeqCst);
    }

    async fn login(&self, account: &str, scopes: &str) -> spotoken::LoginOutcome {
        login(&self.tokens, account, scopes).await
    }

    /// The default account's status (its row must exist).
    async fn status(&self) -> spotoken::AccountStatus {
        self.tokens
            .status("default")
            .await
            .expect("status")
            .expect("row kept")
    }
}

async fn login(tokens: &Tokens, account: &str, scopes: &str) -> spotoken::LoginOutcome {
    let pending = tokens
        .begin_login(REDIRECT, &Scopes::parse(scopes), Default::default())
        .expect("begin");
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(pending.url.clone())
        .send()
        .await
        .expect("authorize");
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    tokens
        .complete_login(account, &pending, &location)
        .await
        .expect("login")
}

fn refresh_tokens_seen(emu: &Emulator) -> Vec<String> {
    emu.issued_refresh_tokens()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_records_user_scopes_and_encrypts_everything() {
    let env = Env::new().await;
    env.emu
        .update(|s| s.grant_only = Some(vec!["user-read-private".into()]));
    let out = env
        .login("default", "user-read-private,user-read-email")
        .await;
    assert_eq!(out.user_id.as_deref(), Some("alice"));
    assert_eq!(out.granted.to_wire(), "user-read-private");
    assert_eq!(out.not_granted, vec!["user-read-email".to_owned()]);
    let access = env.tokens.access_token("default").await.expect("token");
    env.tokens.force_refresh("default").await.expect("refresh");
    let mut secrets = refresh_tokens_seen(&env.emu);
    secrets.push(access.expose().to_owned());
    // The raw database files never hold a token in plain text.
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", env.db.display());
        if let Ok(bytes) = std::fs::read(&path) {
            for s in &secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "plaintext token in {path}"
                );
            }
        }
    }
    assert_not_logged(&secrets);
}

async fn storm(rotation: Rotation) {
    let env = Env::new().await;
    env.emu.update(|s| s.rotation = rotation);
    env.login("default", "user-read-private").await;
    env.emu.update(|s| s.token_latency_ms = 100);
    env.expire_locally();
    let before = env.emu.counters().token_requests_for("refresh_token");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let tokens = env.tokens.clone();
        tasks.push(tokio::spawn(
            async move { tokens.access_token("default").await },
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        let token = t.await.expect("join").expect("every caller succeeds");
        seen.insert(token.expose().to_owned());
    }
    let c = env.emu.counters();
    assert_eq!(
        c.token_requests_for("refresh_token") - before,
        1,
        "exactly one refresh for 1000 callers"
    );
    assert_eq!(c.max_peak_concurrent_refreshes(), 1);
    assert_eq!(seen.len(), 1, "every caller got the same token");
    let mut secrets: Vec<String> = seen.into_iter().collect();
    secrets.extend(refresh_tokens_seen(&env.emu));
    assert_not_logged(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_after_expiry_one_refresh_rotation_none() {
    storm(Rotation::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_after_expiry_one_refresh_rotation_rotate() {
    storm(Rotation::Rotate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_after_expiry_one_refresh_reuse_detection() {
    storm(Rotation::RotateReuseDetection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_store_refresh_once() {
    let env = Env::new().await;
    env.emu
        .update(|s| s.rotation = Rotation::RotateReuseDetection);
    env.login("default", "").await;
    env.emu.update(|s| s.token_latency_ms = 100);
    env.expire_locally();
    let other = Env::engine(&env.emu, &env.db, env.keys.clone(), env.offset.clone());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let tokens = if i % 2 == 0 {
            env.tokens.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(
            async move { tokens.access_token("default").await },
        ));
    }
    for t in tasks {
        t.await.expect("join").expect("ok");
    }
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_is_stored_and_used_by_a_new_engine() {
    let env = Env::new().await;
    env.emu.update(|s| s.rotation = Rotation::Rotate);
    env.login("default", "").await;
    env.expire_locally();
    env.tokens
        .access_token("default")
        .await
        .expect("first refresh");
    // A brand-new engine (a new process) must use the rotated token: the old one is dead.
    env.expire_locally();
    let fresh = Env::engine(&env.emu, &env.db, env.keys.clone(), env.offset.clone());
    fresh
        .access_token("default")
        .await
        .expect("second refresh with the rotated token");
    let c = env.emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "ok"), 2);
    assert_eq!(c.token_outcome("refresh_token", "invalid_grant"), 0);
    assert!(
        c.refresh_token_uses.values().all(|&n| n == 1),
        "each rotated token used once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rotation_the_old_refresh_token_is_kept() {
    let env = Env::new().await;
    env.login("default", "").await;
    for _ in 0..3 {
        env.expire_locally();
        env.tokens.access_token("default").await.expect("refresh");
    }
    let c = env.emu.counters();
    assert_eq!(c.refresh_token_uses.len(), 1, "one refresh token all along");
    assert_eq!(c.refresh_token_uses.values().next(), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_flags_the_account_and_stops_requests() {
    let env = Env::new().await;
    let hooked = Arc::new(AtomicI64::new(0));
    let h = hooked.clone();
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&env.emu.url(), &env.emu.url()).expect("provider"))
        .store(Sqlite::open(&env.db).expect("store"))
        .keys(env.keys.clone())
        .clock({
            let o = env.offset.clone();
            move || unix_now() + o.load(Ordering::SeqCst)
        })
        .on_reauth(move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect("tokens");
    login(&tokens, "default", "").await;
    env.emu.revoke(None);
    env.expire_locally();
    let e = tokens.access_token("default").await.expect_err("revoked");
    assert_eq!(e.kind(), ErrorKind::AuthorizationNeeded);
    assert!(e.to_string().contains("Refresh token revoked"), "{e}");
    assert!(e.to_string().contains("must log in again"), "{e}");
    let status = tokens
        .status("default")
        .await
        .expect("status")
        .expect("row kept");
    assert_eq!(status.state, spotoken::LoginState::ReauthRequired);
    let requests = env.emu.counters().token_requests_for("refresh_token");
    for _ in 0..3 {
        let e = tokens
            .access_token("default")
            .await
            .expect_err("still flagged");
        assert_eq!(e.kind(), ErrorKind::AuthorizationNeeded);
    }
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        requests,
        "no further token requests"
    );
    assert_eq!(hooked.load(Ordering::SeqCst), 1, "the hook ran once");
    // A new login clears the flag.
    env.emu.update(|s| s.deny = false);
    login(&tokens, "default", "").await;
    assert!(tokens.access_token("default").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_providers_invalid_grant_description_is_redacted() {
    let env = Env::new().await;
    env.login("default", "").await;
    // 22 characters: shorter than the old 24-character cut, as some providers'
    // opaque tokens are.
    let token = "AQBx7Lq9Zk2Pw4Ty8Rv1Nc";
    let e = refresh_failing_with(
        &env,
        Failure {
            status: 400,
            body: Some(serde_json::json!({
                "error": "invalid_grant",
                "error_description": format!("Invalid refresh token {token} (reused)"),
            })),
            ..Failure::default()
        },
    )
    .await
    .expect_err("invalid_grant");
    assert_eq!(e.kind(), ErrorKind::AuthorizationNeeded);
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(token), "{shown}");
    assert!(
        shown.contains("Invalid refresh token [redacted] (reused)"),
        "{shown}"
    );
    let status = env.status().await;
    assert!(!format!("{status:?}").contains(token), "{status:?}");
}

/// Logs in under `rotation`, loses the answer to the next refresh after the
/// emulator carried it out, and asks for a token.
async fn refresh_with_a_lost_answer(rotation: Rotation) -> (Env, Result<String, spotoken::Error>) {
    let env = Env::new().await;
    env.emu.update(|s| s.rotation = rotation);
    env.login("default", "").await;
    let got = refresh_failing_with(
        &env,
        Failure {
            drop_connection: true,
            after_processing: true,
            ..Failure::default()
        },
    )
    .await
    .map(|t| t.expose().to_owned());
    (env, got)
}

/// A store that writes `row` (as another writer would) just before the
/// engine's second read under its refresh lock: the re-read after a lost answer.
#[derive(Clone)]
struct Interloper {
    inner: Sqlite,
    row: Arc<Mutex<Option<spotoken::store::Row>>>,
}

struct InterloperLock {
    inner: Box<dyn spotoken::store::AccountLock>,
    store: Sqlite,
    row: Arc<Mutex<Option<spotoken::store::Row>>>,
    loads: u32,
}

#[async_trait::async_trait]
impl spotoken::store::TokenStore for Interloper {
    async fn load(&self, a: &str) -> Result<Option<spotoken::store::Row>, spotoken::Error> {
        self.inner.load(a).await
    }
    async fn list(&self) -> Result<Vec<spotoken::store::Row>, spotoken::Error> {
        self.inner.list().await
    }
    async fn upsert(
        &self,
        r: spotoken::store::Row,
    ) -> Result<spotoken::store::Row, spotoken::Error> {
        self.inner.upsert(r).await
    }
    async fn update(
        &self,
        r: spotoken::store::Row,
    ) -> Result<Option<spotoken::store::Row>, spotoken::Error> {
        self.inner.update(r).await
    }
    async fn delete(&self, a: &str) -> Result<bool, spotoken::Error> {
        self.inner.delete(a).await
    }
    async fn lock(
        &self,
        a: &str,
    ) -> Result<Box<dyn spotoken::store::AccountLock>, spotoken::Error> {
        Ok(Box::new(InterloperLock {
            inner: self.inner.lock(a).await?,
            store: self.inner.clone(),
            row: self.row.clone(),
            loads: 0,
        }))
    }
    async fn ping(&self) -> Result<(), spotoken::Error> {
        self.inner.ping().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait::async_trait]
impl spotoken::store::AccountLock for InterloperLock {
    async fn load(&mut self) -> Result<Option<spotoken::store::Row>, spotoken::Error> {
        use spotoken::store::TokenStore as _;
        self.loads += 1;
        let queued = if self.loads == 2 {
            self.row.lock().expect("row").take()
        } else {
            None
        };
        if let Some(row) = queued {
            self.store
                .update(row)
                .await?
                .expect("the interloper's write");
        }
        self.inner.load().await
    }
    async fn update(
        &mut self,
        r: spotoken::store::Row,
    ) -> Result<Option<spotoken::store::Row>, spotoken::Error> {
        self.inner.update(r).await
    }
    async fn release(self: Box<Self>) -> Result<(), spotoken::Error> {
        self.inner.release().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_answer_a_row_written_meanwhile_is_used_not_the_old_token() {
    use spotoken::store::TokenStore as _;
    let env = Env::new().await;
    env.emu
        .update(|s| s.rotation = Rotation::RotateReuseDetection);
    env.login("default", "").await;
    env.expire_locally();
    // What another writer stores while our answer is lost: a token valid for
    // two more hours, its secrets sealed for the version its write gives.
    let plain = Sqlite::open(&env.db).expect("store");
    let mut theirs = plain.load("default").await.expect("load").expect("row");
    theirs.access_expires_at = unix_now() + env.offset.load(Ordering::SeqCst) + 7200;
    theirs
        .carry_secrets_to_next_version(&env.keys)
        .expect("reseal");
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&env.emu.url(), &env.emu.url()).expect("provider"))
        .store(Interloper {
            inner: plain,
            row: Arc::new(Mutex::new(Some(theirs))),
        })
        .keys(env.keys.clone())
        .backoff(fast_backoff())
        .clock({
            let o = env.offset.clone();
            move || unix_now() + o.load(Ordering::SeqCst)
        })
        .build()
        .expect("tokens");
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        grant: Some("refresh_token".into()),
        drop_connection: true,
        after_processing: true,
        ..Failure::default()
    });
    let token = tokens
        .access_token("default")
        .await
        .expect("theirs is used");
    assert!(!token.expose().is_empty());
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        1,
        "the old refresh token was not presented again (reuse detection would revoke)"
    );
    assert_eq!(env.status().await.state, spotoken::LoginState::Active);
}

/// Queues `failure` for the next refresh, lets the token expire, and asks for one.
async fn refresh_failing_with(
    env: &Env,
    failure: Failure,
) -> Result<spotoken::core::secret::AccessToken, spotoken::Error> {
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        grant: Some("refresh_token".into()),
        ..failure
    });
    env.expire_locally();
    env.tokens.access_token("default").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_answer_under_reuse_detection_is_a_lost_rotation() {
    let (env, got) = refresh_with_a_lost_answer(Rotation::RotateReuseDetection).await;
    let e = got.expect_err("the family was revoked");
    assert!(
        matches!(
            &e,
            spotoken::Error::AuthorizationNeeded {
                reason: spotoken::ReauthReason::LostRotation { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("lost rotation"), "{e}");
    assert!(e.to_string().contains("must log in again"), "{e}");
    let c = env.emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "ok"), 1, "the lost one");
    assert_eq!(
        c.token_requests_for("refresh_token"),
        2,
        "one retry, no loop"
    );
    assert_eq!(
        env.status().await.state,
        spotoken::LoginState::ReauthRequired
    );
    let again = env
        .tokens
        .access_token("default")
        .await
        .expect_err("flagged");
    assert_eq!(again.kind(), ErrorKind::AuthorizationNeeded);
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_answer_without_rotation_is_retried() {
    let (env, got) = refresh_with_a_lost_answer(Rotation::None).await;
    got.expect("the retry gets a token");
    let c = env.emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "ok"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_twice_then_ok_honours_retry_after() {
    let env = Env::new().await;
    env.login("default", "").await;
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        grant: Some("refresh_token".into()),
        status: 429,
        headers: [("Retry-After".to_owned(), "2".to_owned())].into(),
        times: 2,
        ..Failure::default()
    });
    env.expire_locally();
    let started = std::time::Instant::now();
    env.tokens
        .access_token("default")
        .await
        .expect("succeeds after waiting");
    let waited = started.elapsed();
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 3);
    // Not a timing assertion on speed: Retry-After is a floor the engine must respect.
    assert!(waited >= Duration::from_secs(4), "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_fails_at_once_naming_the_wait() {
    let env = Env::new().await;
    env.login("default", "").await;
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 429,
        headers: [("Retry-After".to_owned(), "7200".to_owned())].into(),
        body: Some(serde_json::json!({"error": {"status": 429, "message": "Too many requests", "reason": "QUOTA_EXCEEDED"}})),
        times: 5,
        ..Failure::default()
    });
    env.expire_locally();
    let e = env
        .tokens
        .access_token("default")
        .await
        .expect_err("too long to wait");
    assert_eq!(e.kind(), ErrorKind::Temporary);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7200)));
    assert!(e.to_string().contains("2 h"), "{e}");
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_502_is_temporary_and_keeps_the_tokens() {
    let env = Env::new().await;
    env.login("default", "").await;
    let before = env
        .tokens
        .store()
        .load("default")
        .await
        .expect("load")
        .expect("row");
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        status: 502,
        text: Some("<html><body><h1>502 Bad Gateway</h1></body></html>".into()),
        times: 100,
        ..Failure::default()
    });
    env.expire_locally();
    let e = env.tokens.access_token("default").await.expect_err("502s");
    assert_eq!(e.kind(), ErrorKind::Temporary);
    let after = env
        .tokens
        .store()
        .load("default")
        .await
        .expect("load")
        .expect("row");
    assert_eq!(before, after, "nothing on disk changed");
    // Dropped connections are temporary too.
    let _ = reqwest::Client::new()
        .delete(format!("{}/_emulator/failures", env.emu.url()))
        .send()
        .await;
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        drop_connection: true,
        times: 1,
        ..Failure::default()
    });
    env.tokens
        .access_token("default")
        .await
        .expect("retried past one dropped connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_ciphertext_put_back_into_a_newer_row_does_not_open() {
    let env = Env::new().await;
    env.emu.update(|s| s.rotation = Rotation::Rotate);
    env.login("default", "").await;
    let store = env.tokens.store().clone();
    let old = store.load("default").await.expect("load").expect("row");
    env.expire_locally();
    env.tokens.access_token("default").await.expect("refresh");
    let new = store.load("default").await.expect("load").expect("row");
    assert!(new.version > old.version);
    // Someone with write access to the database puts the older secrets back
    // (without touching the version, which the store would bump).
    let db = rusqlite::Connection::open(&env.db).expect("db");
    db.execute(
        "UPDATE accounts SET access_token = ?1, refresh_token = ?2 WHERE account = 'default'",
        rusqlite::params![old.access_token, old.refresh_token],
    )
    .expect("roll back");
    let other = Env::engine(&env.emu, &env.db, env.keys.clone(), env.offset.clone());
    let e = other
        .access_token("default")
        .await
        .expect_err("rolled back");
    assert!(e.to_string().contains("older version of the row"), "{e}");
    let refreshes = env.emu.counters().token_requests_for("refresh_token");
    env.expire_locally();
    let e = other
        .access_token("default")
        .await
        .expect_err("rolled back");
    assert!(e.to_string().contains("integrity check"), "{e}");
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        refreshes,
        "the old refresh token was never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_swapped_or_wrongly_keyed_ciphertexts_fail_without_changes() {
    let env = Env::new().await;
    env.login("alice", "").await;
    env.emu.update(|s| s.default_user = "bob".into());
    env.login("bob", "").await;
    env.expire_locally();
    let store = env.tokens.store().clone();
    let alice = store.load("alice").await.expect("load").expect("row");
    let bob = store.load("bob").await.expect("load").expect("row");

    // Swap: bob's refresh token ciphertext in alice's row.
    let mut swapped = alice.clone();
    swapped.refresh_token = bob.refresh_token.clone();
    let swapped = store
        .update(swapped)
        .await
        .expect("update")
        .expect("written");
    let e = env.tokens.access_token("alice").await.expect_err("swapped");
    assert!(e.to_string().contains("integrity"), "{e}");
    assert_eq!(
        store.load("alice").await.expect("load").expect("row"),
        swapped,
        "unchanged"
    );

    // Tamper: flip a bit.
    let mut tampered = swapped.clone();
    tampered.refresh_token = alice.refresh_token.clone();
    let last = tampered.refresh_token.len() - 1;
    tampered.refresh_token[last] ^= 0x01;
    let tampered = store
        .update(tampered)
        .await
        .expect("update")
        .expect("written");
    assert!(env.tokens.access_token("alice").await.is_err());
    assert_eq!(
        store.load("alice").await.expect("load").expect("row"),
        tampered,
        "unchanged"
    );

    // Wrong key: a clear configuration error, nothing changed.
    let wrong = Env::engine(&env.emu, &env.db, KeyRing::generate(), env.offset.clone());
    let e = wrong.access_token("bob").await.expect_err("wrong key");
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert!(e.to_string().contains("encrypted with key"), "{e}");
    assert_eq!(store.load("bob").await.expect("load").expect("row"), bob);
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        0,
        "nothing was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_reencrypts_under_a_new_key() {
    let env = Env::new().await;
    env.login("default", "").await;
    let new_key = spotoken::crypto::random_key();
    // The key file after `rekey`: the new key first (active), the old one after.
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("master.key");
    spotoken::crypto::write_key_file(&key_file, &[&new_key, &env.key]).expect("write");
    let both = spotoken::crypto::load_key_ring(&key_file, None).expect("ring");
    let rekeyer = Env::engine(&env.emu, &env.db, both, env.offset.clone());
    assert_eq!(rekeyer.rekey().await.expect("rekey"), 1);
    assert_eq!(rekeyer.rekey().await.expect("rekey again"), 0, "idempotent");
    let new_only = KeyRing::new(vec![new_key]).expect("ring");
    let after = Env::engine(&env.emu, &env.db, new_only, env.offset.clone());
    after
        .access_token("default")
        .await
        .expect("the new key alone opens it");
    let old_only = Env::engine(&env.emu, &env.db, env.keys.clone(), env.offset.clone());
    assert_eq!(
        old_only
            .access_token("default")
            .await
            .expect_err("old key")
            .kind(),
        ErrorKind::Configuration
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refreshes_once_on_401_and_retries() {
    let env = Env::new().await;
    env.login("default", "user-read-private").await;
    let api = env.tokens.api("default");
    assert_eq!(api.get("/v1/me").await.expect("me").status, 200);
    // The provider expires the token early: our clock still thinks it is fresh.
    env.emu.expire_access_tokens();
    // ... a while after it was obtained: a 401 to a token moments old is
    // passed on without a refresh.
    env.offset.fetch_add(
        spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS,
        Ordering::SeqCst,
    );
    env.emu.update(|s| {
        s.unauthorized_message = "a message nobody matches on".into();
        s.token_latency_ms = 50;
    });
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move { api.get("/v1/me").await }));
    }
    for t in tasks {
        let r = t.await.expect("join").expect("ok");
        assert_eq!(r.status, 200);
        assert_eq!(r.json::<serde_json::Value>().expect("json")["id"], "alice");
    }
    assert_eq!(
        env.emu.counters().token_requests_for("refresh_token"),
        1,
        "100 rejected calls, one refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_web_api_error_message_is_redacted() {
    let env = Env::new().await;
    env.login("default", "user-read-private").await;
    let token = "BQC7b1x0Zy9wVu8tSr7qPo";
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 403,
        body: Some(serde_json::json!({"error": {"status": 403,
            "message": format!("User not registered in the Developer Dashboard (token {token})")}})),
        ..Failure::default()
    });
    let e = env
        .tokens
        .api("default")
        .get("/v1/me")
        .await
        .expect_err("403");
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert!(!e.to_string().contains(token), "{e}");
    assert!(e.to_string().contains("(token [redacted])"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_names_the_missing_scope_and_handles_429() {
    let env = Env::new().await;
    env.login("default", "user-read-private").await;
    let api = env.tokens.api("default");
    let e = api.get("/v1/me/playlists").await.expect_err("403");
    assert_eq!(e.kind(), ErrorKind::InsufficientScope);
    assert!(e.to_string().contains("playlist-read-private"), "{e}");

    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 429,
        headers: [("Retry-After".to_owned(), "1".to_owned())].into(),
        ..Failure::default()
    });
    assert_eq!(
        api.get("/v1/me").await.expect("after waiting 1 s").status,
        200
    );
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 429,
        headers: [("Retry-After".to_owned(), "86400".to_owned())].into(),
        body: Some(serde_json::json!({"error": {"status": 429, "message": "Too many requests", "reason": "QUOTA_EXCEEDED"}})),
        ..Failure::default()
    });
    let e = api.get("/v1/me").await.expect_err("a day is too long");
    assert_eq!(e.kind(), ErrorKind::Temporary);
    assert!(
        e.to_string().contains("1 day") && e.to_string().contains("QUOTA_EXCEEDED"),
        "{e}"
    );
}

/// Issue 17: whether a 401 is a 401 never depends on its body, which
/// Spotify has changed; a plain-text one is refreshed and retried too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_with_any_body_refreshes_and_retries() {
    let env = Env::new().await;
    env.login("default", "user-read-private").await;
    let api = env.tokens.api("default");
    env.emu.inject(Failure {
        endpoint: Endpoint::Api,
        status: 401,
        text: Some("nothing a client could match on".into()),
        content_type: Some("text/plain".into()),
        ..Failure::default()
    });
    // A while after login: a 401 to a token moments old is passed on.
    env.offset.fetch_add(
        spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS,
        Ordering::SeqCst,
    );
    let r = api.get("/v1/me").await.expect("refreshed and retried");
    assert_eq!(r.status, 200);
    assert_eq!(env.emu.counters().token_outcome("refresh_token", "ok"), 1);
}

/// Issue 17: the 403s Spotify sends as plain text (a user off a
/// development-mode app's allowlist, an app owner without Premium) and the
/// player's `PREMIUM_REQUIRED` are configuration errors that say what to do,
/// not protocol errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_and_premium_403s_are_classified() {
    let env = Env::new().await;
    env.emu.update(|s| s.default_user = "dave".into());
    let out = env.login("dave", "user-read-private").await;
    assert!(
        out.warnings.iter().any(|w| w.contains("allowlist")),
        "{:?}",
        out.warnings
    );
    let e = env.tokens.api("dave").get("/v1/me").await.expect_err("403");
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(e.to_string().contains("allowlist"), "{e}");

    env.emu.update(|s| s.default_user = "alice".into());
    env.login("alice", "user-read-private user-modify-playback-state")
        .await;
    env.emu.update(|s| s.owner_premium = false);
    let e = env
        .tokens
        .api("alice")
        .get("/v1/me")
        .await
        .expect_err("403");
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(e.to_string().contains("owns this app"), "{e}");
    env.emu.update(|s| s.owner_premium = true);

    env.emu.update(|s| s.default_user = "bob".into());
    env.login("bob", "user-modify-playback-state").await;
    let e = env
        .tokens
        .api("bob")
        .put("/v1/me/player/pause", bytes::Bytes::new())
        .await
        .expect_err("403");
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(e.to_string().contains("Premium"), "{e}");
    // The player's other answers come back as responses: 204, and 404
    // NO_ACTIVE_DEVICE for the caller to show.
    let api = env.tokens.api("alice");
    let r = api
        .put("/v1/me/player/pause", bytes::Bytes::new())
        .await
        .expect("204");
    assert_eq!(r.status, 204);
    env.emu.update(|s| s.active_device = false);
    let r = api
        .post("/v1/me/player/next", bytes::Bytes::new())
        .await
        .expect("404");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json::<serde_json::Value>().expect("json")["error"]["reason"],
        "NO_ACTIVE_DEVICE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_logged_in_and_logout() {
    let env = Env::new().await;
    let e = env
        .tokens
        .access_token("nobody")
        .await
        .expect_err("no account");
    assert_eq!(e.kind(), ErrorKind::AuthorizationNeeded);
    env.login("default", "").await;
    let out = env.tokens.logout("default").await.expect("logout");
    assert!(out.deleted);
    assert_eq!(out.revoked, None, "Spotify has no revocation endpoint");
    assert_eq!(
        out.remove_access_at.as_deref(),
        Some("https://www.spotify.com/account/apps/")
    );
    assert_eq!(
        env.tokens
            .access_token("default")
            .await
            .expect_err("logged out")
            .kind(),
        ErrorKind::AuthorizationNeeded
    );
}

/// Found by the mixed load (docs/RELIABILITY.md): rows started again at
/// version 1 after a logout, so a refresh still holding the logged-out row's
/// version could write the old grant over a new login. A new login's row
/// gets a version the account never had, and the stale write is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_before_a_logout_cannot_overwrite_the_next_login() {
    let env = Env::new().await;
    env.login("default", "").await;
    let store = env.tokens.store().clone();
    let stale = store.load("default").await.expect("load").expect("row");
    env.tokens.logout("default").await.expect("logout");
    env.login("default", "").await;
    let fresh = store.load("default").await.expect("load").expect("row");
    assert_ne!(
        fresh.version, stale.version,
        "a version the account never had"
    );
    assert!(
        store.update(stale).await.expect("update").is_none(),
        "the stale write is refused"
    );
    let after = store.load("default").await.expect("load").expect("row");
    assert_eq!(
        after.refresh_token, fresh.refresh_token,
        "the new login stays"
    );
    env.tokens
        .access_token("default")
        .await
        .expect("the new login's token opens");
}

#[tokio::test]
async fn wrong_state_on_the_callback_stores_nothing() {
    let env = Env::new().await;
    let pending = env
        .tokens
        .begin_login(REDIRECT, &Scopes::default(), Default::default())
        .expect("begin");
    let e = env
        .tokens
        .complete_login(
            "default",
            &pending,
            "http://127.0.0.1:45678/callback?code=AQx&state=forged",
        )
        .await
        .expect_err("state mismatch");
    assert!(e.to_string().contains("state"), "{e}");
    assert!(
        env.tokens
            .store()
            .load("default")
            .await
            .expect("load")
            .is_none()
    );
    assert_eq!(
        env.emu.counters().token_requests_for("authorization_code"),
        0
    );
}

#[cfg(not(feature = "postgres"))]
#[test]
fn three_engines_sharing_postgres_refresh_once() {
    eprintln!("SKIPPED: built without the postgres feature; the PostgreSQL storm did not run");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_sharing_postgres_refresh_once() {
    let Ok(url) = std::env::var("SPOTOKEN_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: SPOTOKEN_TEST_DATABASE_URL is unset; the PostgreSQL storm did not run");
        return;
    };
    log_buffer();
    let emu = Emulator::start().await.expect("emulator");
    emu.update(|s| s.rotation = Rotation::RotateReuseDetection);
    let schema = format!("spotoken_test_storm_{}_{}", std::process::id(), unix_now());
    let keys = KeyRing::generate();
    let offset = Arc::new(AtomicI64::new(0));
    let mut engines = Vec::new();
    for _ in 0..3 {
        let store = spotoken::store::Postgres::connect_in_schema(&url, Some(&schema))
            .await
            .expect("postgres");
        let o = offset.clone();
        engines.push(
            Tokens::builder()
                .client_id(DEFAULT_CLIENT_ID)
                .provider(Provider::spotify_like(&emu.url(), &emu.url()).expect("provider"))
                .store(store)
                .keys(keys.clone())
                .backoff(fast_backoff())
                .clock(move || unix_now() + o.load(Ordering::SeqCst))
                .build()
                .expect("tokens"),
        );
    }
    login(&engines[0], "default", "").await;
    emu.update(|s| s.token_latency_ms = 100);
    offset.fetch_add(3600, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let tokens = engines[i % 3].clone();
        tasks.push(tokio::spawn(
            async move { tokens.access_token("default").await },
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.expect("join").expect("ok").expose().to_owned());
    }
    let c = emu.counters();
    assert_eq!(
        c.token_requests_for("refresh_token"),
        1,
        "one refresh across three instances"
    );
    assert_eq!(seen.len(), 1);
    assert_eq!(c.token_outcome("refresh_token", "invalid_grant"), 0);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_middleware_injects_and_refreshes_once_on_401() {
    let env = Env::new().await;
    env.login("default", "user-read-private").await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(env.tokens.middleware("default"))
        .build();
    let me = format!("{}/v1/me", env.emu.url());
    assert_eq!(client.get(&me).send().await.expect("send").status(), 200);
    env.emu.expire_access_tokens();
    // ... a while after it was obtained: a 401 to a token moments old is
    // passed on without a refresh.
    env.offset.fetch_add(
        spotoken::engine::REFRESH_AFTER_401_INTERVAL_SECS,
        Ordering::SeqCst,
    );
    env.emu.update(|s| s.token_latency_ms = 50);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, me) = (client.clone(), me.clone());
        tasks.push(tokio::spawn(async move {
            client.get(&me).send().await.map(|r| r.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("send"), 200);
    }
    assert_eq!(env.emu.counters().token_requests_for("refresh_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_for_tells_how_long_the_same_token_is_handed_out() {
    let env = Env::new().await;
    env.login("me", "user-read-private").await;
    let (token, fresh_for) = env
        .tokens
        .access_token_fresh_for("me")
        .await
        .expect("token");
    // The emulator's tokens last an hour; the default margin is subtracted.
    assert!(
        fresh_for > Duration::from_secs(3000) && fresh_for <= Duration::from_secs(3600),
        "{fresh_for:?}"
    );
    let same = env.tokens.access_token("me").await.expect("token");
    assert_eq!(same.expose(), token.expose());
    // Near expiry the engine refreshes first and reports the new token's time.
    env.offset.fetch_add(3300, Ordering::SeqCst);
    let (renewed, fresh_for) = env
        .tokens
        .access_token_fresh_for("me")
        .await
        .expect("token");
    assert_ne!(renewed.expose(), token.expose());
    assert!(fresh_for > Duration::from_secs(3000), "{fresh_for:?}");
    assert_eq!(env.emu.counters().token_outcome("refresh_token", "ok"), 1);
}

/// A refresh token belongs to the client that obtained it. An engine
/// configured with another client id (the app's id changed, or a tool
/// manages accounts of several apps) refreshes with the account's own id,
/// where presenting its own would be refused as `invalid_grant` and the
/// account flagged for a new login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_is_refreshed_with_the_client_id_it_was_logged_in_with() {
    let env = Env::new().await;
    env.login("me", "user-read-private").await;
    env.emu.register_client(spotoken_emulator::Client {
        id: "another-client".into(),
        secret: spotoken_emulator::new_secret(),
        redirect_uris: vec![REDIRECT.into()],
    });
    let other = Env::engine_as(
        "another-client",
        &env.emu,
        &env.db,
        env.keys.clone(),
        env.offset.clone(),
    );
    env.expire_locally();
    other
        .access_token("me")
        .await
        .expect("refreshed with the account's own client id");
    let c = env.emu.counters();
    assert_eq!(c.token_outcome("refresh_token", "ok"), 1);
    assert_eq!(c.token_outcome("refresh_token", "invalid_grant"), 0);
    let status = other.status("me").await.expect("status").expect("account");
    assert_eq!(status.client_id, DEFAULT_CLIENT_ID);
}

/// Issue 12: a provider named by its issuer is discovered once, when a
/// request first needs an endpoint (a fresh cached token needs none), kept
/// per its Cache-Control, and fetched again after its token endpoint failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_lazy_cached_and_refetched_after_a_failure() {
    let env = Env::new().await;
    let offset = env.offset.clone();
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .issuer(env.emu.url(), env.emu.url())
        .store(Sqlite::open(&env.db).expect("store"))
        .keys(env.keys.clone())
        .backoff(fast_backoff())
        .clock(move || unix_now() + offset.load(Ordering::SeqCst))
        .build()
        .expect("tokens");
    assert!(tokens.provider().is_none(), "nothing fetched by building");
    assert_eq!(env.emu.counters().discovery_requests, 0);

    let discovered = tokens.discover_provider().await.expect("discover");
    assert_eq!(discovered.issuer.as_deref(), Some(env.emu.url().as_str()));
    login(&tokens, "default", "user-read-private").await;
    let status = tokens
        .status("default")
        .await
        .expect("status")
        .expect("row");
    assert_eq!(status.issuer.as_deref(), Some(env.emu.url().as_str()));

    tokens.access_token("default").await.expect("cached");
    env.expire_locally();
    tokens.access_token("default").await.expect("refreshed");
    env.expire_locally();
    tokens
        .access_token("default")
        .await
        .expect("refreshed again");
    assert_eq!(env.emu.counters().token_outcome("refresh_token", "ok"), 2);
    assert_eq!(
        env.emu.counters().discovery_requests,
        1,
        "one fetch for the login and both refreshes (max-age=300)"
    );

    // The token endpoint hangs up once: the document is dropped (the retry
    // goes where the refresh started), and the next refresh fetches it again.
    env.emu.inject(Failure {
        endpoint: Endpoint::Token,
        drop_connection: true,
        ..Failure::default()
    });
    env.expire_locally();
    tokens
        .access_token("default")
        .await
        .expect("refreshed after a retry");
    assert_eq!(env.emu.counters().discovery_requests, 1);
    env.expire_locally();
    tokens.access_token("default").await.expect("refreshed");
    assert_eq!(env.emu.counters().discovery_requests, 2);
}
