//! Interoperability (issue 12): the real `spotoken` binary against
//! authorization servers written by others, started here on loopback:
//! oidc-provider (Node, `interop/`) and Authlib (Python, `interop/authlib/`).
//! Our emulator can share our misunderstandings; these cannot.
//!
//! `.ci/run` installs both (`npm ci` in `interop/`, a venv for Authlib);
//! without them these tests say SKIPPED and pass.
//!
//! The login and consent pages are driven headlessly by [`Bot`]: a
//! cookie-keeping HTTP client that submits each HTML form it is shown, as a
//! person clicking through would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::{BIN, Out, output};

mod authlib;
mod oidc_provider;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// A server process and its stdout (first line: its issuer; then events).
struct Server {
    _child: Child,
    issuer: String,
    client_id: String,
    events: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Starts `program args` in `interop/`; `None` (after saying SKIPPED)
    /// when `needs` does not exist.
    async fn start(
        needs: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Option<Self> {
        if !needs.exists() {
            eprintln!(
                "SKIPPED: {} is not installed (.ci/run installs it); this interop test did not run",
                needs.display()
            );
            return None;
        }
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the authorization server");
        let mut events = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = events
            .next_line()
            .await
            .expect("read")
            .expect("the server prints its issuer");
        let v: Value = serde_json::from_str(&first).expect("a JSON line");
        Some(Self {
            _child: child,
            issuer: v["issuer"].as_str().expect("issuer").to_owned(),
            client_id: v["client_id"].as_str().expect("client_id").to_owned(),
            events,
        })
    }

    /// Waits for the server to report `event`.
    async fn wait_for(&mut self, event: &str) {
        loop {
            let line = self
                .events
                .next_line()
                .await
                .expect("read")
                .unwrap_or_else(|| panic!("the server exited before reporting {event}"));
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["event"] == event) {
                return;
            }
        }
    }

    fn discovery(&self) -> String {
        format!("{}/.well-known/oauth-authorization-server", self.issuer)
    }

    /// Where the token endpoint is, from the server's own discovery document.
    async fn endpoint(&self, name: &str) -> String {
        let v: Value = reqwest::get(self.discovery())
            .await
            .expect("discovery")
            .json()
            .await
            .expect("json");
        v[name].as_str().expect("endpoint").to_owned()
    }

    /// A refresh with `refresh_token`, as any holder of it could try:
    /// the status and the `error` code.
    async fn try_refresh(&self, refresh_token: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .post(self.endpoint("token_endpoint").await)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", &self.client_id),
            ])
            .send()
            .await
            .expect("refresh");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (status, v["error"].as_str().unwrap_or("").to_owned())
    }
}

/// The binary with `args`, none of the caller's SPOTOKEN_ settings, and its
/// output captured.
fn spotoken_cmd(args: &[&str]) -> Command {
    crate::common::bare_cmd(BIN, args)
}

/// Logs in, then refreshes after (near) expiry: the provider rotates and
/// the new refresh token is what spotoken keeps. The refresh tokens before
/// and after.
async fn login_then_rotate(home: &Home) -> (String, String) {
    let login = home.login().await;
    assert_eq!(login.code, 0, "{}", login.stderr);
    let first = home.refresh_token().await;
    home.age().await;
    let token = home.run(&["token"]).await;
    assert_eq!(token.code, 0, "{}", token.stderr);
    let second = home.refresh_token().await;
    assert_ne!(first, second, "the rotated refresh token is stored");
    (first, second)
}

/// `spotoken logout` revokes at the provider: the refresh token it held no
/// longer works there.
async fn logout_revokes(home: &Home, server: &Server) {
    let current = home.refresh_token().await;
    let logout = home.run(&["logout", "--output", "json"]).await;
    assert_eq!(logout.code, 0, "{}", logout.stderr);
    let v: Value = serde_json::from_str(&logout.stdout).expect("json");
    assert_eq!(v["logged_out"][0]["revoked"], true, "{}", logout.stdout);
    assert_eq!(
        server.try_refresh(&current).await,
        (400, "invalid_grant".into())
    );
}

/// A temporary spotoken home configured for one provider.
struct Home {
    dir: tempfile::TempDir,
    issuer: String,
    client_id: String,
}

impl Home {
    fn new(server: &Server) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            dir: tempfile::tempdir().expect("tmp"),
            issuer: server.issuer.clone(),
            client_id: server.client_id.clone(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = spotoken_cmd(args);
        c.env("SPOTOKEN_HOME", self.dir.path())
            .env("SPOTOKEN_ISSUER", &self.issuer)
            .env("SPOTOKEN_CLIENT_ID", &self.client_id)
            .env("SPOTOKEN_API_URL", &self.issuer)
            .env("RUST_LOG", "spotoken=info");
        c
    }

    async fn run(&self, args: &[&str]) -> Out {
        output(self.cmd(args)).await
    }

    /// `spotoken login --no-browser`, with [`Bot`] as the person at the browser.
    async fn login(&self) -> Out {
        let mut child = self
            .cmd(&[
                "login",
                "--no-browser",
                "--timeout",
                "60s",
                "--scopes",
                "openid offline_access",
            ])
            .spawn()
            .expect("spawn login");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = String::new();
        let mut redirect_uri = String::new();
        let url = loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .unwrap_or_else(|| panic!("login printed no URL:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.split("(waiting on ").nth(1) {
                redirect_uri = rest.trim_end_matches("):").to_owned();
            }
            if line.starts_with("http") {
                break line;
            }
        };
        assert!(!redirect_uri.is_empty(), "{seen}");
        Bot::default()
            .click_through(&url, Some(&redirect_uri))
            .await;
        let status = child.wait().await.expect("wait");
        while let Some(l) = lines.next_line().await.expect("read") {
            seen.push_str(&l);
            seen.push('\n');
        }
        Out {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: seen,
        }
    }

    fn store(&self) -> spotoken::store::Sqlite {
        spotoken::store::Sqlite::open(self.dir.path().join("tokens.db")).expect("store")
    }

    /// The refresh token spotoken holds now, decrypted.
    async fn refresh_token(&self) -> String {
        use spotoken::store::TokenStore as _;
        let row = self
            .store()
            .load("default")
            .await
            .expect("load")
            .expect("row");
        let keys = spotoken::crypto::load_key_ring(&self.dir.path().join("master.key"), None)
            .expect("keys");
        let plain = keys
            .open_row(
                "default",
                spotoken::crypto::Field::RefreshToken,
                row.version,
                &row.refresh_token,
            )
            .expect("decrypt");
        String::from_utf8(plain.to_vec()).expect("utf-8")
    }

    /// Makes the stored access token look about to expire (the binary's clock
    /// cannot be moved, so the row is).
    async fn age(&self) {
        use spotoken::store::TokenStore as _;
        let store = self.store();
        let mut row = store.load("default").await.expect("load").expect("row");
        let now = spotoken::store::unix_now();
        row.authorized_at = now - 3600;
        row.last_refresh = Some(now - 3540);
        row.access_expires_at = now + 60;
        let keys = spotoken::crypto::load_key_ring(&self.dir.path().join("master.key"), None)
            .expect("keys");
        row.carry_secrets_to_next_version(&keys).expect("reseal");
        store.update(row).await.expect("update").expect("written");
    }
}

/// A person at a browser: follows redirects, keeps cookies, submits every
/// form it is shown (login with any name, consent, the device code pages),
/// and stops at the app's redirect URI, which it visits once.
#[derive(Default)]
struct Bot {
    cookies: HashMap<String, String>,
}

impl Bot {
    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, r: &reqwest::Response) {
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().expect("cookie");
            if let Some((name, value)) = c.split(';').next().and_then(|p| p.split_once('=')) {
                if value.is_empty() {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_owned(), value.to_owned());
                }
            }
        }
    }

    /// Goes from `start` until the redirect URI (`stop`) or a page with no form.
    async fn click_through(&mut self, start: &str, stop: Option<&str>) -> String {
        let http = Self::client();
        let mut url = url::Url::parse(start).expect("url");
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..30 {
            if stop.is_some_and(|s| url.as_str().starts_with(s)) && form.is_none() {
                let r = http.get(url.clone()).send().await.expect("callback");
                return r.text().await.unwrap_or_default();
            }
            let req = match form.take() {
                Some(pairs) => http.post(url.clone()).form(&pairs),
                None => http.get(url.clone()),
            };
            let r = req
                .header("cookie", self.cookie_header())
                .send()
                .await
                .expect("request");
            self.keep_cookies(&r);
            let status = r.status().as_u16();
            if (300..400).contains(&status) {
                let location = r.headers()["location"].to_str().expect("location");
                url = url.join(location).expect("redirect URL");
                continue;
            }
            let page = r.text().await.unwrap_or_default();
            assert!(status < 400, "HTTP {status} at {url}:\n{page}");
            let Some((action, pairs)) = parse_form(&page) else {
                return page;
            };
            url = url.join(&action).expect("form action");
            form = Some(pairs);
        }
        panic!("more than 30 steps through the login pages");
    }
}

/// The first form on a page: its action and the values a person would send
/// (hidden fields as they are; any login name and password).
fn parse_form(page: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = page.find("<form")?;
    let end = page[start..]
        .find("</form>")
        .map_or(page.len(), |e| start + e);
    let form = &page[start..end];
    let tag_end = form.find('>')?;
    let action = attr(&form[..tag_end], "action")?;
    let mut pairs = Vec::new();
    for input in form.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap_or(input.len())];
        let Some(name) = attr(tag, "name") else {
            continue;
        };
        let value = match name.as_str() {
            "login" => "alice".to_owned(),
            "password" => "any password".to_owned(),
            _ => attr(tag, "value").unwrap_or_default(),
        };
        pairs.push((name, value));
    }
    Some((action, pairs))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let at = tag.find(&key)? + key.len();
    let len = tag[at..].find('"')?;
    Some(
        tag[at..at + len]
            .replace("&amp;", "&")
            .replace("&#x2F;", "/")
            .replace("&#x3D;", "=")
            .replace("&quot;", "\""),
    )
}
