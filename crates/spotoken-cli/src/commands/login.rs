//! `spotoken login`: PKCE through the system browser with a loopback listener
//! on 127.0.0.1, or by pasting the redirected URL on a machine without one.
//!
//! The listener answers only the callback path (a favicon request does not
//! disturb it). The first callback decides: a wrong `state` ends the login with
//! an error and stores nothing. The browser is told how it went.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{OriginalUri, State};
use axum::response::Html;
use serde_json::json;
use spotoken::core::scope::Scopes;
use spotoken::{Error, LoginOutcome, PendingLogin, Tokens};
use tokio::sync::{mpsc, oneshot};

use crate::cli::defs::{DEFAULT_PASTE_REDIRECT_URI, DEFAULT_SCOPES};
use crate::cli::{LoginArgs, Output};
use crate::config::Resolved;
use crate::output;
use spotoken::core::sync::LockUnpoisoned as _;

type Callback = (String, oneshot::Sender<Result<String, String>>);

/// Runs `login`.
pub(crate) async fn exec(cfg: &Resolved, args: LoginArgs) -> Result<u8, Error> {
    let tokens = cfg.tokens()?;
    // A provider named by its issuer is discovered now, before the URL is built.
    let provider = tokens.discover_provider().await?;
    let scopes = match &args.scopes {
        Some(s) => Scopes::parse(s),
        None => cfg.scopes.clone().unwrap_or_else(|| {
            Scopes::parse(if provider.is_spotify_like() {
                DEFAULT_SCOPES
            } else {
                super::device_login::OTHER_PROVIDER_SCOPES
            })
        }),
    };
    if args.device {
        let outcome = super::device_login::exec(cfg, &tokens, &scopes, args.timeout).await?;
        report(cfg, &outcome);
        return Ok(0);
    }
    let redirect = args
        .redirect_uri
        .clone()
        .or_else(|| cfg.redirect_uri.clone());
    let outcome = if args.paste {
        let redirect_uri = redirect.unwrap_or_else(|| DEFAULT_PASTE_REDIRECT_URI.to_owned());
        let pending = tokens.begin_login(
            &redirect_uri,
            &scopes,
            spotoken::LoginOptions::default().show_dialog(args.show_dialog),
        )?;
        eprintln!("Open this URL in a browser on any machine and approve:");
        eprintln!("{}", pending.url);
        eprintln!(
            "Then paste the whole address the browser was sent to (it starts with {redirect_uri}):"
        );
        let line = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).map(|_| s)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::Configuration(format!("cannot read the pasted URL: {e}")))?;
        tokens.complete_login(&cfg.account, &pending, &line).await?
    } else {
        listen_and_login(&tokens, cfg, &args, redirect, &scopes).await?
    };
    report(cfg, &outcome);
    Ok(0)
}

/// The path the loopback listener answers when no redirect URI is configured.
const DEFAULT_CALLBACK_PATH: &str = "/callback";
/// A loopback redirect URI is plain http: without a port, it is this one.
const HTTP_PORT: u16 = 80;
/// How long the answer page gets to reach the browser before the listener
/// goes away (a local connection needs far less).
const PAGE_DRAIN: Duration = Duration::from_secs(3);

/// Where the loopback listener binds and which path it answers.
struct ListenAt {
    bind: SocketAddr,
    path: String,
    /// The configured redirect URI, if any (else it names the bound port).
    fixed: Option<String>,
}

/// The configured redirect URI's loopback address and path, or an ephemeral
/// port on 127.0.0.1 with [`DEFAULT_CALLBACK_PATH`].
fn listen_at(redirect: Option<&str>) -> Result<ListenAt, Error> {
    let Some(r) = redirect else {
        return Ok(ListenAt {
            bind: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            path: DEFAULT_CALLBACK_PATH.to_owned(),
            fixed: None,
        });
    };
    let u = spotoken::core::endpoint::check_redirect_uri(r)?;
    let host = u
        .host_str()
        .unwrap_or("127.0.0.1")
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = u.port().unwrap_or(HTTP_PORT);
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        Error::Configuration(format!(
            "the redirect URI {r} must name a loopback IP to listen on"
        ))
    })?;
    Ok(ListenAt {
        bind: SocketAddr::new(ip, port),
        path: u.path().to_owned(),
        fixed: Some(r.to_owned()),
    })
}

/// The loopback listener: answers `path` only, hands each callback over
/// `rx`, and stops when `stop` is sent.
struct Listener {
    rx: mpsc::Receiver<Callback>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

fn spawn_listener(listener: tokio::net::TcpListener, path: &str) -> Listener {
    let (tx, rx) = mpsc::channel::<Callback>(1);
    let app = axum::Router::new()
        .route(path, axum::routing::get(callback))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found") })
        .with_state(Arc::new(Mutex::new(Some(tx))));
    let (stop, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    Listener { rx, stop, server }
}

async fn listen_and_login(
    tokens: &Tokens,
    cfg: &Resolved,
    args: &LoginArgs,
    redirect: Option<String>,
    scopes: &Scopes,
) -> Result<LoginOutcome, Error> {
    let at = listen_at(redirect.as_deref())?;
    let bind = at.bind;
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        Error::Configuration(format!(
            "cannot listen on {bind} for the redirect: {e} (is another login running? pick another --redirect-uri)"
        ))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?
        .port();
    let redirect_uri = at
        .fixed
        .unwrap_or_else(|| format!("http://127.0.0.1:{port}{}", at.path));
    let pending = tokens.begin_login(
        &redirect_uri,
        scopes,
        spotoken::LoginOptions::default().show_dialog(args.show_dialog),
    )?;
    let mut listening = spawn_listener(listener, &at.path);

    // The URL always goes to stderr on its own line, so a script (or a person on
    // another machine) can follow it even when a browser opens too.
    eprintln!("Open this URL to log in (waiting on {redirect_uri}):");
    eprintln!("{}", pending.url);
    if !args.no_browser {
        open_browser(&pending);
    }
    let spinner = spinner(args.timeout);
    let result = tokio::time::timeout(args.timeout, listening.rx.recv()).await;
    spinner.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    let outcome = match result {
        Err(_) => Err(Error::temporary(
            format!(
                "no answer from the browser within {}; run `spotoken login` again (or --paste on a machine without a browser)",
                spotoken::core::wait::human_duration(args.timeout)
            ),
            None,
        )),
        Ok(None) => Err(Error::Internal("the callback listener stopped".into())),
        Ok(Some((uri, reply))) => complete(tokens, cfg, &pending, &uri, reply).await,
    };
    // Let the page reach the browser before the listener goes away.
    let _ = listening.stop.send(());
    let _ = tokio::time::timeout(PAGE_DRAIN, listening.server).await;
    outcome
}

/// Exchanges the callback's code and tells the browser how it went.
async fn complete(
    tokens: &Tokens,
    cfg: &Resolved,
    pending: &PendingLogin,
    uri: &str,
    reply: oneshot::Sender<Result<String, String>>,
) -> Result<LoginOutcome, Error> {
    let outcome = tokens.complete_login(&cfg.account, pending, uri).await;
    let page = match &outcome {
        Ok(o) => Ok(format!(
            "Logged in{} as account '{}'. You can close this tab.",
            o.display_name
                .as_ref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default(),
            o.account
        )),
        Err(e) => Err(format!("Login failed: {e}")),
    };
    let _ = reply.send(page);
    outcome
}

async fn callback(
    State(slot): State<Arc<Mutex<Option<mpsc::Sender<Callback>>>>>,
    OriginalUri(uri): OriginalUri,
) -> (axum::http::StatusCode, Html<String>) {
    let sender = slot.lock_unpoisoned().take();
    let Some(sender) = sender else {
        return (
            axum::http::StatusCode::CONFLICT,
            Html(page("This login has already been answered.", false)),
        );
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if sender.send((uri.to_string(), reply_tx)).await.is_err() {
        return (
            axum::http::StatusCode::GONE,
            Html(page("spotoken is no longer waiting.", false)),
        );
    }
    match reply_rx.await {
        Ok(Ok(msg)) => (axum::http::StatusCode::OK, Html(page(&msg, true))),
        Ok(Err(msg)) => (axum::http::StatusCode::BAD_REQUEST, Html(page(&msg, false))),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Html(page("spotoken stopped.", false)),
        ),
    }
}

fn page(message: &str, ok: bool) -> String {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let title = if ok {
        "spotoken: logged in"
    } else {
        "spotoken: login failed"
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body style=\"font-family:sans-serif\"><h1>{title}</h1><p>{escaped}</p></body></html>"
    )
}

fn open_browser(pending: &PendingLogin) {
    if let Err(e) = crate::child::open_url(pending.url.as_str()) {
        eprintln!("(could not open a browser: {e}; open the URL above yourself)");
    }
}

/// How long each frame of the waiting spinner shows: about eight a second,
/// smooth without redrawing the terminal more than it needs.
const SPINNER_FRAME: Duration = Duration::from_millis(120);

fn spinner(timeout: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let started = tokio::time::Instant::now();
        let mut i = 0;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            eprint!(
                "\r{} waiting for the browser: approve access, then come back here ({} left, Ctrl-C to cancel) ",
                frames[i % frames.len()],
                spotoken::core::wait::human_duration(left)
            );
            i += 1;
            tokio::time::sleep(SPINNER_FRAME).await;
        }
    })
}

fn report(cfg: &Resolved, o: &LoginOutcome) {
    match cfg.output {
        Output::Json => output::json(&json!(o)),
        Output::Text => {
            let who = match (&o.display_name, &o.user_id) {
                (Some(n), Some(id)) => format!("{n} ({id})"),
                (None, Some(id)) => id.clone(),
                _ => "an unknown user".into(),
            };
            eprintln!(
                "Logged in as {who}; tokens stored encrypted under account '{}'.",
                o.account
            );
            eprintln!(
                "Granted scopes: {}",
                if o.granted.is_empty() {
                    "(none)".into()
                } else {
                    o.granted.to_wire()
                }
            );
            for w in &o.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("Next: spotoken token   (prints a fresh access token)");
        }
    }
}
