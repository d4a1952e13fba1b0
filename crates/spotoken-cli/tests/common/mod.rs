//! The harness the CLI's integration tests share: a temporary home, the
//! emulator on port 0, the real binary, and a plain HTTP client as the browser.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use std::process::Stdio;

use spotoken_emulator::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Emulator};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_spotoken");

pub(crate) struct Env {
    pub(crate) emu: Emulator,
    pub(crate) home: tempfile::TempDir,
    /// Set after the defaults, for every command of this test.
    pub(crate) extra_env: Vec<(&'static str, String)>,
}

pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// `PROGRAM ARGS` with none of the caller's SPOTOKEN_ settings (nor
/// RUST_LOG), no stdin, and its output captured.
pub(crate) fn bare_cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTOKEN_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs a prepared command to its end.
pub(crate) async fn output(mut c: Command) -> Out {
    let o = c.output().await.expect("run spotoken");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Env {
    pub(crate) async fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            emu: Emulator::start().await.expect("emulator"),
            home: tempfile::tempdir().expect("tmp"),
            extra_env: Vec::new(),
        }
    }

    /// An environment holding every secret a child must not inherit (the
    /// client secret is the app's real one, so it is really used).
    pub(crate) async fn with_secrets() -> Self {
        let mut env = Self::new().await;
        env.extra_env = vec![
            (
                "SPOTOKEN_MASTER_KEY",
                "c2VjcmV0LW1hc3Rlci1rZXktb2YtMzItYnl0ZXMhISE=".to_owned(),
            ),
            ("SPOTOKEN_CLIENT_SECRET", DEFAULT_CLIENT_SECRET.to_owned()),
        ];
        env
    }

    /// Fails if a file written by a child holds any of `extra_env`'s values.
    pub(crate) fn assert_no_secret_in(&self, text: &str) {
        assert!(text.contains("SPOTOKEN_HOME="), "not an env dump: {text}");
        for name in ["SPOTOKEN_MASTER_KEY", "SPOTOKEN_CLIENT_SECRET"] {
            assert!(
                !text.contains(&format!("{name}=")),
                "{name} reached the child"
            );
            let (_, value) = self
                .extra_env
                .iter()
                .find(|(k, _)| *k == name)
                .expect("set");
            assert!(
                !text.contains(value.as_str()),
                "the value of {name} reached the child"
            );
        }
    }

    /// The home's key ring, as `spotoken` loads it.
    pub(crate) fn key_ring(&self) -> spotoken::crypto::KeyRing {
        let master = self
            .extra_env
            .iter()
            .find(|(k, _)| *k == spotoken::crypto::MASTER_KEY_ENV)
            .map(|(_, v)| v.as_str());
        spotoken::crypto::load_key_ring(&self.home.path().join("master.key"), master).expect("keys")
    }

    /// `spotoken ARGS` with this home and the emulator's URLs, logging at
    /// trace level.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_program(BIN, args)
    }

    /// `PROGRAM ARGS` with the environment of [`Env::cmd`] (a shell that
    /// `exec`s `spotoken`, for example).
    pub(crate) fn cmd_program(&self, program: &str, args: &[&str]) -> Command {
        let mut c = bare_cmd(program, args);
        c.env("SPOTOKEN_HOME", self.home.path())
            .env("SPOTOKEN_CLIENT_ID", DEFAULT_CLIENT_ID)
            .env("SPOTOKEN_ACCOUNTS_URL", self.emu.url())
            .env("SPOTOKEN_API_URL", self.emu.url())
            .env("RUST_LOG", "trace")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Out {
        output(self.cmd(args)).await
    }

    /// `spotoken login --no-browser`, followed by a plain HTTP client as the
    /// browser. `tamper` may change the callback URL before it is visited.
    pub(crate) async fn login(&self, extra: &[&str], tamper: impl FnOnce(String) -> String) -> Out {
        let mut args = vec!["login", "--no-browser", "--timeout", "30s"];
        args.extend_from_slice(extra);
        let mut child = self.cmd(&args).spawn().expect("spawn login");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = String::new();
        let url = loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("the URL is printed");
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("http") && line.contains("/authorize?") {
                break line;
            }
        };
        let browser = browser();
        let r = browser.get(&url).send().await.expect("authorize");
        let location = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        // A stray favicon request must not disturb the listener.
        let origin = url::Url::parse(&location).expect("url");
        let favicon = format!(
            "http://{}/favicon.ico",
            origin
                .host_str()
                .zip(origin.port())
                .map(|(h, p)| format!("{h}:{p}"))
                .expect("host")
        );
        assert_eq!(
            browser
                .get(&favicon)
                .send()
                .await
                .expect("favicon")
                .status(),
            404
        );
        let page = browser
            .get(tamper(location))
            .send()
            .await
            .expect("callback");
        let page_text = page.text().await.unwrap_or_default();
        let mut rest = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            rest.push_str(&l);
            rest.push('\n');
        }
        let status = child.wait().await.expect("wait");
        let mut stdout = String::new();
        if let Some(mut so) = child.stdout.take() {
            use tokio::io::AsyncReadExt as _;
            so.read_to_string(&mut stdout).await.expect("stdout");
        }
        Out {
            code: status.code().unwrap_or(-1),
            stdout: format!("{stdout}{page_text}"),
            stderr: format!("{seen}{rest}"),
        }
    }
}

/// An HTTP client that, like a browser's address bar, shows each redirect
/// instead of following it.
pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Makes the stored account look an hour old with a minute left on its token
/// (the binary's clock cannot be moved, so the row is).
pub(crate) async fn age_account(env: &Env) {
    backdate_token(env, 3540, Some(60)).await;
}

/// Makes the stored token of `default` look obtained `ago` seconds ago (the
/// login an hour ago), with `left` seconds left if given (else its expiry
/// kept).
pub(crate) async fn backdate_token(env: &Env, ago: i64, left: Option<i64>) {
    use spotoken::store::TokenStore as _;
    let store = spotoken::store::Sqlite::open(env.home.path().join("tokens.db")).expect("store");
    let mut row = store.load("default").await.expect("load").expect("row");
    let now = spotoken::store::unix_now();
    row.authorized_at = now - 3600;
    row.last_refresh = Some(now - ago);
    if let Some(left) = left {
        row.access_expires_at = now + left;
    }
    // Written as spotoken writes: secrets sealed for the version the row gets.
    row.carry_secrets_to_next_version(&env.key_ring())
        .expect("reseal");
    store.update(row).await.expect("update").expect("written");
}

pub(crate) fn refresh_tokens_seen(emu: &Emulator) -> Vec<String> {
    emu.issued_refresh_tokens()
}

/// Reads `spotoken serve`'s stderr up to its "listening on" line; returns
/// the bound address (`http://…`) and the line.
pub(crate) async fn listening(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) -> (String, String) {
    loop {
        let line = lines
            .next_line()
            .await
            .expect("read")
            .expect("serve prints its address");
        if line.contains("listening on")
            && let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://"))
        {
            return (url.to_owned(), line);
        }
    }
}

/// What a browser saw logging in to `spotoken serve`.
pub(crate) struct ServeLogin {
    /// `__Host-spotoken_session=…`, ready for a `Cookie` header.
    pub(crate) session: String,
    /// The login cookie's value (binds the callback to this browser).
    pub(crate) binding: String,
    /// The emulator's authorize URL the server redirected to.
    pub(crate) authorize_url: String,
    /// The callback URL the emulator redirected back to (with the code).
    pub(crate) callback_url: String,
}

/// Logs in to `spotoken serve` at `server` as a browser would (the emulator
/// consents on its own).
pub(crate) async fn serve_login(server: &str) -> ServeLogin {
    let http = browser();
    let cookie_of = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| {
                c.strip_prefix(&format!("{name}="))
                    .map(|v| v.split(';').next().unwrap_or("").to_owned())
            })
    };
    let location = |r: &reqwest::Response| {
        r.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned()
    };
    let r = http
        .get(format!("{server}/auth/login"))
        .send()
        .await
        .expect("login");
    let binding = cookie_of(&r, "__Host-spotoken_login").expect("login cookie");
    let authorize_url = location(&r);
    let r = http.get(&authorize_url).send().await.expect("authorize");
    let callback_url = location(&r);
    let r = http
        .get(&callback_url)
        .header("cookie", format!("__Host-spotoken_login={binding}"))
        .send()
        .await
        .expect("callback");
    let session = format!(
        "__Host-spotoken_session={}",
        cookie_of(&r, "__Host-spotoken_session").expect("session cookie")
    );
    ServeLogin {
        session,
        binding,
        authorize_url,
        callback_url,
    }
}
