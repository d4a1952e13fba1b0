//! The bad-input catalog, as the `spotoken` executable meets it: malformed and
//! hostile answers from the token endpoint and the Web API, hostile callbacks,
//! a wrong key and a corrupted store. One table, one test: each named case
//! asserts the exit code (the error kind) and a short message fragment, that
//! the tokens stored before are still there byte for byte, that no file
//! appeared or vanished in the home, and that the account still works once
//! the provider behaves again.

mod common;

use std::collections::BTreeMap;

use common::{Env, backdate_token};
use serde_json::json;
use spotoken_emulator::{Endpoint, Failure};

/// What a case does to provoke the bad input.
enum Act {
    /// The token endpoint answers refreshes with this (every time), then
    /// `spotoken ARGS` runs.
    Token(Failure, &'static [&'static str]),
    /// The Web API answers with this (every time); `spotoken api PATH` runs.
    Api(Failure, &'static str),
    /// `spotoken ARGS` with nothing injected.
    Run(&'static [&'static str]),
    /// `spotoken ARGS` with an environment variable set (`{emu}` in the
    /// value stands for the emulator's URL).
    RunWith(&'static str, &'static str, &'static [&'static str]),
    /// `spotoken login --account other`, the callback URL changed by the
    /// function before the browser visits it.
    Login(Box<dyn Fn(String) -> String + Send + Sync>),
    /// `spotoken token` on a store whose file had `bytes` written at
    /// `offset`; the file must be left as it was found (not replaced by an
    /// empty store), and is put back afterwards.
    Corrupt { offset: u64, bytes: &'static [u8] },
}

struct Case {
    name: &'static str,
    act: Act,
    /// Exit code (the error kind: 1 protocol/internal, 2 configuration,
    /// 3 authorization needed, 4 temporary, 5 scope).
    code: i32,
    /// A fragment of stderr (lower case compared).
    says: &'static str,
    /// The access token stored afterwards: `None` for "the one before".
    now_stored: Option<&'static str>,
}

fn token(failure: Failure) -> Act {
    Act::Token(
        Failure {
            endpoint: Endpoint::Token,
            grant: Some("refresh_token".into()),
            times: 100,
            ..failure
        },
        &["refresh"],
    )
}

fn token_json(body: serde_json::Value) -> Act {
    token(Failure {
        status: 200,
        body: Some(body),
        ..Failure::default()
    })
}

fn token_text(status: u16, content_type: &str, text: &str) -> Act {
    token(Failure {
        status,
        text: Some(text.into()),
        content_type: Some(content_type.into()),
        ..Failure::default()
    })
}

fn api(failure: Failure, path: &'static str) -> Act {
    Act::Api(
        Failure {
            endpoint: Endpoint::Api,
            times: 100,
            ..failure
        },
        path,
    )
}

fn api_text(status: u16, content_type: &str, text: &str) -> Act {
    api(
        Failure {
            status,
            text: Some(text.into()),
            content_type: Some(content_type.into()),
            ..Failure::default()
        },
        "/v1/me",
    )
}

const HTML: &str = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";

fn ok_token() -> serde_json::Value {
    json!({"access_token": "BQ-new", "token_type": "Bearer", "expires_in": 3600,
           "scope": "user-read-private"})
}

fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    v[key] = value;
    v
}

fn without(mut v: serde_json::Value, key: &str) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        m.remove(key);
    }
    v
}

fn case(name: &'static str, act: Act, code: i32, says: &'static str) -> Case {
    Case {
        name,
        act,
        code,
        says,
        now_stored: None,
    }
}

fn retry_after(status: u16, value: &str) -> Failure {
    Failure {
        status,
        headers: BTreeMap::from([("Retry-After".into(), value.into())]),
        ..Failure::default()
    }
}

fn login(tamper: impl Fn(String) -> String + Send + Sync + 'static) -> Act {
    Act::Login(Box::new(tamper))
}

/// The query parameter `key` of `url`.
fn param(url: &str, key: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `url` with its query replaced by `query`.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{base}?{query}")
}

/// The catalog; `used_code` is an authorization code already exchanged.
fn cases(used_code: String) -> Vec<Case> {
    let huge = format!(
        "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}",
        "A".repeat(8 << 20)
    );
    let huge: &'static str = Box::leak(huge.into_boxed_str());
    let ct = "application/json";
    vec![
        // The token endpoint, met by `spotoken refresh`.
        case(
            "token: malformed JSON",
            token_text(200, ct, "{\"access_token\": \"x\", "),
            1,
            "not json",
        ),
        case(
            "token: truncated response",
            token_text(
                200,
                ct,
                "{\"access_token\":\"BQ-x\",\"token_type\":\"Bearer\",\"expires_in\":36",
            ),
            1,
            "not json",
        ),
        case(
            "token: HTML where JSON belongs (200)",
            token_text(200, "text/html", HTML),
            1,
            "not json",
        ),
        case(
            "token: HTML 502 page",
            token_text(502, "text/html", HTML),
            4,
            "temporary",
        ),
        case(
            "token: empty 200 body",
            token_text(200, ct, ""),
            1,
            "not json",
        ),
        case(
            "token: JSON null",
            token_json(json!(null)),
            1,
            "not a json object",
        ),
        case(
            "token: JSON array",
            token_json(json!([ok_token()])),
            1,
            "not a json object",
        ),
        case(
            "token: access_token missing",
            token_json(without(ok_token(), "access_token")),
            1,
            "access_token",
        ),
        case(
            "token: access_token a number",
            token_json(with(ok_token(), "access_token", json!(12345))),
            1,
            "access_token",
        ),
        case(
            "token: access_token empty",
            token_json(with(ok_token(), "access_token", json!(""))),
            1,
            "access_token",
        ),
        case(
            "token: access_token with CR LF (header injection)",
            token_json(with(ok_token(), "access_token", json!("BQ-a\r\nX-Evil: 1"))),
            1,
            "access_token",
        ),
        case(
            "token: access_token with a space",
            token_json(with(ok_token(), "access_token", json!("BQ a"))),
            1,
            "access_token",
        ),
        case(
            "token: refresh_token with NUL",
            token_json(with(ok_token(), "refresh_token", json!("r\u{0}x"))),
            1,
            "refresh_token",
        ),
        case(
            "token: token_type missing",
            token_json(without(ok_token(), "token_type")),
            1,
            "token_type",
        ),
        case(
            "token: unknown token_type",
            token_json(with(ok_token(), "token_type", json!("mac"))),
            1,
            "token_type",
        ),
        case(
            "token: expires_in negative",
            token_json(with(ok_token(), "expires_in", json!(-3600))),
            1,
            "expires_in",
        ),
        case(
            "token: expires_in zero",
            token_json(with(ok_token(), "expires_in", json!(0))),
            1,
            "expires_in",
        ),
        case(
            "token: expires_in a string",
            token_json(with(ok_token(), "expires_in", json!("soon"))),
            1,
            "expires_in",
        ),
        case(
            "token: expires_in an object",
            token_json(with(ok_token(), "expires_in", json!({"s": 1}))),
            1,
            "expires_in",
        ),
        // Documented: more than a day is trusted for a day only.
        Case {
            now_stored: Some("BQ-new"),
            ..case(
                "token: expires_in enormous (1e30)",
                token_json(with(ok_token(), "expires_in", json!(1e30))),
                0,
                "expires in 1 day",
            )
        },
        Case {
            now_stored: Some("BQ-new"),
            ..case(
                "token: expires_in u64::MAX",
                token_json(with(ok_token(), "expires_in", json!(u64::MAX))),
                0,
                "expires in 1 day",
            )
        },
        case(
            "token: refresh_token a number",
            token_json(with(ok_token(), "refresh_token", json!(7))),
            1,
            "refresh_token",
        ),
        case(
            "token: scope a list",
            token_json(with(ok_token(), "scope", json!(["a"]))),
            1,
            "scope",
        ),
        // Documented by serde_json: the last of duplicated keys wins.
        Case {
            now_stored: Some("BQ-b"),
            ..case(
                "token: duplicated access_token key",
                token_text(
                    200,
                    ct,
                    "{\"access_token\":\"BQ-a\",\"access_token\":\"BQ-b\",\"token_type\":\"Bearer\",\"expires_in\":3600}",
                ),
                0,
                "refreshed",
            )
        },
        case(
            "token: huge body (8 MiB)",
            token_text(200, ct, huge),
            1,
            "too large",
        ),
        case(
            "token: 500 JSON server_error",
            token(Failure {
                status: 500,
                body: Some(json!({"error": "server_error"})),
                ..Failure::default()
            }),
            4,
            "temporary",
        ),
        case(
            "token: 400 with an HTML body",
            token_text(400, "text/html", HTML),
            1,
            "protocol error",
        ),
        case(
            "token: 400 error a number",
            token(Failure {
                status: 400,
                body: Some(json!({"error": 42})),
                ..Failure::default()
            }),
            1,
            "protocol error",
        ),
        case(
            "token: 429 with Retry-After",
            token(retry_after(429, "7200")),
            4,
            "temporary",
        ),
        case(
            "token: 503 with a garbage Retry-After",
            token(retry_after(503, "soon-ish")),
            4,
            "temporary",
        ),
        case(
            "token: connection dropped",
            token(Failure {
                drop_connection: true,
                ..Failure::default()
            }),
            4,
            "temporary",
        ),
        case(
            "token: 401 invalid_client",
            token(Failure {
                status: 401,
                body: Some(json!({"error": "invalid_client"})),
                ..Failure::default()
            }),
            2,
            "client",
        ),
        // The Web API, met by `spotoken api`.
        case(
            "api: HTML 500 page",
            api_text(500, "text/html", HTML),
            4,
            "500",
        ),
        // `api` passes the body on as it came: not its to judge.
        case(
            "api: malformed JSON 200",
            api_text(200, ct, "{\"id\": "),
            0,
            "",
        ),
        case(
            "api: 429 with an enormous Retry-After",
            api(retry_after(429, "99999999999999999999"), "/v1/me"),
            4,
            "temporary",
        ),
        case(
            "api: connection dropped",
            api(
                Failure {
                    drop_connection: true,
                    ..Failure::default()
                },
                "/v1/me",
            ),
            4,
            "temporary",
        ),
        case(
            "api: 401 in plain text to a fresh token",
            api_text(401, "text/plain", "nope"),
            4,
            "",
        ),
        case(
            "api: absolute URL elsewhere",
            Act::Run(&["api", "http://evil.example/v1/me"]),
            2,
            "not a path under",
        ),
        case(
            "api: protocol-relative URL",
            Act::Run(&["api", "//evil.example/v1/me"]),
            2,
            "not a path under",
        ),
        case(
            "api: .. above an API base with a path",
            Act::RunWith(
                "SPOTOKEN_API_URL",
                "{emu}/v1/",
                &["api", "/../_emulator/counters"],
            ),
            2,
            "not a path under",
        ),
        case(
            "api: %2e%2e above an API base with a path",
            Act::RunWith(
                "SPOTOKEN_API_URL",
                "{emu}/v1/",
                &["api", "/%2e%2e/_emulator/counters"],
            ),
            2,
            "not a path under",
        ),
        case(
            "api: backslash in the path",
            Act::Run(&["api", "/v1\\..\\_emulator"]),
            2,
            "not a path under",
        ),
        // The callback of `spotoken login --account other`.
        case(
            "callback: state mismatch",
            login(|u| spotoken_emulator::with_query_param(&u, "state", "forged")),
            1,
            "state",
        ),
        case(
            "callback: code missing",
            login(|u| with_query(&u, &format!("state={}", param(&u, "state")))),
            1,
            "code",
        ),
        case(
            "callback: state missing",
            login(|u| with_query(&u, &format!("code={}", param(&u, "code")))),
            1,
            "state",
        ),
        case(
            "callback: duplicated state",
            login(|u| format!("{u}&state=forged")),
            1,
            "repeats",
        ),
        case(
            "callback: duplicated code",
            login(|u| format!("{u}&code=other")),
            1,
            "repeats",
        ),
        case(
            "callback: error=access_denied",
            login(|u| {
                with_query(
                    &u,
                    &format!("error=access_denied&state={}", param(&u, "state")),
                )
            }),
            3,
            "denied",
        ),
        case(
            "callback: replayed code",
            login(move |u| spotoken_emulator::with_query_param(&u, "code", &used_code)),
            3,
            "authorization code was refused",
        ),
        case(
            "callback: huge code (32 KiB)",
            login(|u| spotoken_emulator::with_query_param(&u, "code", &"c".repeat(32 << 10))),
            3,
            "authorization code was refused",
        ),
        // The store, its key and the command line.
        case(
            "store: wrong master key",
            Act::RunWith(
                "SPOTOKEN_MASTER_KEY",
                "d3JvbmctbWFzdGVyLWtleS1vZi0zMi1ieXRlcyEhISE=",
                &["token"],
            ),
            2,
            "key",
        ),
        case(
            "store: master key not base64",
            Act::RunWith("SPOTOKEN_MASTER_KEY", "not base64 at all!", &["token"]),
            2,
            "base64",
        ),
        case(
            "store: master key too short",
            Act::RunWith("SPOTOKEN_MASTER_KEY", "c2hvcnQ=", &["token"]),
            2,
            "key",
        ),
        case(
            "store: header overwritten",
            Act::Corrupt {
                offset: 0,
                bytes: b"this is not a database, no sir",
            },
            1,
            "not a database",
        ),
        case(
            "store: a page overwritten",
            Act::Corrupt {
                offset: 4096,
                bytes: &[0xff; 4096],
            },
            1,
            "malformed",
        ),
        case(
            "cli: account name with path traversal",
            Act::Run(&["token", "--account", "../../etc/passwd"]),
            2,
            "account name",
        ),
        case(
            "cli: --min-valid not a duration",
            Act::Run(&["token", "--min-valid", "soon"]),
            2,
            "min-valid",
        ),
    ]
}

/// What "the tokens and the home as they were" means for one case.
#[derive(Debug, PartialEq)]
struct Snapshot {
    refresh: String,
    access: String,
    files: Vec<String>,
    master_key: Vec<u8>,
}

fn snapshot(env: &Env) -> Snapshot {
    let path = env.home.path().join("tokens.db");
    let row = spotoken::store::Sqlite::load_blocking(&path, "default")
        .expect("the store reads")
        .expect("the account is there");
    let keys = env.key_ring();
    let open = |field, sealed: &[u8]| {
        let plain = keys
            .open_row("default", field, row.version, sealed)
            .expect("opens");
        String::from_utf8(plain.to_vec()).expect("utf-8")
    };
    let mut files: Vec<String> = std::fs::read_dir(env.home.path())
        .expect("home")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("-journal") && !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    files.sort();
    Snapshot {
        refresh: open(spotoken::crypto::Field::RefreshToken, &row.refresh_token),
        access: row
            .access_token
            .as_deref()
            .map(|a| open(spotoken::crypto::Field::AccessToken, a))
            .unwrap_or_default(),
        files,
        master_key: std::fs::read(env.home.path().join("master.key")).unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_typed_error_and_leaves_the_tokens_alone() {
    let env = Env::new().await;
    let used = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = used.clone();
    let out = env
        .login(&[], move |u| {
            *seen.lock().expect("lock") = param(&u, "code");
            u
        })
        .await;
    assert_eq!(out.code, 0, "login: {}", out.stderr);
    let used_code = used.lock().expect("lock").clone();
    assert!(!used_code.is_empty());
    let table = cases(used_code);
    let db = env.home.path().join("tokens.db");
    let mut failed = Vec::new();
    for case in &table {
        env.emu.clear_failures();
        // Refresh-provoking cases get a token due for a refresh; the others
        // one that needs none, so the bad input is all they meet.
        let due = matches!(case.act, Act::Token(..));
        backdate_token(
            &env,
            if due { 3540 } else { 10 },
            Some(if due { 60 } else { 3590 }),
        )
        .await;
        let before = snapshot(&env);
        let mut corrupted = None;
        let out = match &case.act {
            Act::Token(f, args) => {
                env.emu.inject(f.clone());
                env.run(args).await
            }
            Act::Api(f, path) => {
                env.emu.inject(f.clone());
                env.run(&["api", path]).await
            }
            Act::Run(args) => env.run(args).await,
            Act::RunWith(k, v, args) => {
                let mut c = env.cmd(args);
                c.env(k, v.replace("{emu}", &env.emu.url()));
                common::output(c).await
            }
            Act::Login(tamper) => env.login(&["--account", "other"], tamper).await,
            Act::Corrupt { offset, bytes } => {
                use std::io::{Seek as _, Write as _};
                let good = std::fs::read(&db).expect("read store");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&db)
                    .expect("open");
                f.seek(std::io::SeekFrom::Start(*offset)).expect("seek");
                f.write_all(bytes).expect("corrupt");
                drop(f);
                let bad = std::fs::read(&db).expect("read store");
                let out = env.run(&["token"]).await;
                corrupted = Some(std::fs::read(&db).ok() == Some(bad));
                std::fs::write(&db, good).expect("restore");
                out
            }
        };
        env.emu.clear_failures();
        let mut problems = Vec::new();
        if out.code != case.code {
            problems.push(format!("exit {} (wanted {})", out.code, case.code));
        }
        let stderr = out.stderr.to_lowercase();
        if !stderr.contains(case.says) {
            problems.push(format!("stderr lacks {:?}", case.says));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        if case.code != 0
            && !stderr.contains(&format!("exit code {}", case.code))
            && !stderr.contains("error")
        {
            problems.push("no error message".into());
        }
        if corrupted == Some(false) {
            problems.push("the corrupted store was changed or replaced".into());
        }
        let after = snapshot(&env);
        if after.refresh != before.refresh {
            problems.push("the stored refresh token changed".into());
        }
        match case.now_stored {
            None if after.access != before.access => {
                problems.push("the stored access token changed".into());
            }
            Some(t) if after.access != t => {
                problems.push(format!("stored {:?}, not {t:?}", after.access))
            }
            _ => {}
        }
        if after.files != before.files || after.master_key != before.master_key {
            problems.push(format!(
                "the home changed: {:?} -> {:?}",
                before.files, after.files
            ));
        }
        let accounts = env.run(&["accounts"]).await;
        if accounts.stdout.contains("other") {
            problems.push("a failed login left an account".into());
        }
        // The account still works: a refresh the provider answers properly.
        let next = env.run(&["refresh"]).await;
        if next.code != 0 {
            let last = next.stderr.lines().last().unwrap_or("").to_owned();
            problems.push(format!("the next `refresh` exited {}: {last}", next.code));
        }
        let last = out
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .or_else(|| {
                out.stderr.lines().rfind(|l| {
                    !l.contains(" TRACE ") && !l.contains(" DEBUG ") && !l.trim().is_empty()
                })
            })
            .unwrap_or("")
            .to_owned();
        eprintln!(
            "{:<50} exit {} {}",
            case.name,
            out.code,
            last.chars().take(150).collect::<String>()
        );
        if !problems.is_empty() {
            failed.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(
        table.len() >= 55,
        "the catalog keeps its size ({})",
        table.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        table.len(),
        failed.join("\n")
    );
}

/// `spotoken serve`'s own HTTP stack (not the test harness's) refuses
/// oversized request headers with 431 before any route runs, and keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_oversized_request_headers() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let env = Env::new().await;
    let mut child = env
        .cmd(&["serve", "--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (server, _) = common::listening(&mut lines).await;
    let http = reqwest::Client::new();
    for size in [100_000, 1_000_000] {
        let r = http
            .get(format!("{server}/auth/session"))
            .header("x-padding", "a".repeat(size))
            .send()
            .await;
        let status = r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 431, "a {size}-byte header: {r:?}");
    }
    let r = http
        .get(format!("{server}/auth/session"))
        .send()
        .await
        .expect("still serving");
    assert_eq!(r.status(), 401);
}
