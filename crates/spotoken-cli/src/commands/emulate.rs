//! `spotoken emulate`: the Spotify emulator as a standalone server, for trying
//! spotoken without a Spotify app and for testing other Spotify apps against
//! expiry, rotation, revocation and rate limits.

use spotoken::Error;
use spotoken_emulator::{Client, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ECHO_PREFIX, Emulator};

use crate::cli::{EmulateArgs, Output};

/// Starts the emulator, prints where it is, serves until SIGINT or SIGTERM.
/// `extra_id` (the global `--client-id`) names an extra client to accept.
pub(crate) async fn exec(
    extra_id: Option<String>,
    output: Output,
    args: EmulateArgs,
) -> Result<u8, Error> {
    if extra_id.is_none() && (args.client_secret.is_some() || !args.redirect_uris.is_empty()) {
        return Err(Error::Configuration(
            "--client-secret and --redirect-uri need --client-id".into(),
        ));
    }
    let extra = extra_id.map(|id| extra_client(id, &args));
    let emu = start(&args, extra.as_ref()).await?;
    announce(output, &emu, extra.as_ref(), &args);
    shutdown_signal().await;
    emu.shutdown().await;
    Ok(0)
}

/// The client named by `--client-id`, with its secret and redirect URIs.
fn extra_client(id: String, args: &EmulateArgs) -> Client {
    Client {
        id,
        secret: args
            .client_secret
            .clone()
            .unwrap_or_else(spotoken_emulator::new_secret),
        redirect_uris: if args.redirect_uris.is_empty() {
            spotoken_emulator::DEFAULT_REDIRECT_URIS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            args.redirect_uris.clone()
        },
    }
}

/// Starts the emulator as the options say; writes the test CA if asked.
async fn start(args: &EmulateArgs, extra: Option<&Client>) -> Result<Emulator, Error> {
    let mut builder = Emulator::builder()
        .port(args.port)
        .http2(args.http2)
        .api_latency(args.api_latency.unwrap_or_default());
    if let Some(c) = extra {
        builder = builder.client(c.clone());
    }
    if let Some(p) = args.tls_port {
        builder = builder.tls_port(p);
    }
    let emu = builder.start().await.map_err(|e| {
        Error::Configuration(format!(
            "cannot listen on 127.0.0.1:{}{}: {e}",
            args.port,
            args.tls_port
                .map(|p| format!(" and 127.0.0.1:{p}"))
                .unwrap_or_default()
        ))
    })?;
    if let (Some(path), Some(ca)) = (&args.tls_ca_out, emu.tls_ca()) {
        std::fs::write(path, ca.ca_pem())
            .map_err(|e| Error::Configuration(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(emu)
}

/// Prints where the emulator listens and which clients it accepts.
fn announce(output: Output, emu: &Emulator, extra: Option<&Client>, args: &EmulateArgs) {
    let url = emu.url();
    let tls_url = emu.tls_url();
    let mut clients = vec![
        serde_json::json!({"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}),
    ];
    if let Some(c) = extra {
        clients.push(serde_json::json!({"client_id": c.id, "client_secret": c.secret}));
    }
    let echo_url = format!("{url}{ECHO_PREFIX}");
    if output == Output::Json {
        crate::output::json(&serde_json::json!({
            "url": url, "accounts_url": url, "api_url": url, "echo_url": echo_url,
            "clients": clients, "app_mode": "development",
            "tls_url": tls_url, "tls_ca_pem": emu.tls_ca().map(|c| c.ca_pem()),
        }));
        return;
    }
    let p = crate::output::line;
    p(&format!("spotoken emulator listening on {url}"));
    p(&format!("  accounts url: {url}   (SPOTOKEN_ACCOUNTS_URL)"));
    p(&format!("  api url:      {url}   (SPOTOKEN_API_URL)"));
    if let Some(t) = &tls_url {
        let ca = args
            .tls_ca_out
            .as_ref()
            .map_or("not written: --tls-ca-out FILE".into(), |p| {
                p.display().to_string()
            });
        p(&format!("  tls url:      {t}   (test CA: {ca})"));
    }
    p(&format!(
        "  client id:     {DEFAULT_CLIENT_ID} (secret {DEFAULT_CLIENT_SECRET}; PKCE needs none)"
    ));
    if let Some(c) = extra {
        p(&format!("  your client id: {} (secret {})", c.id, c.secret));
    }
    p("  redirect URIs: http://127.0.0.1/callback and /auth/callback, any port");
    p("  app mode:      development (as a new Spotify app; PATCH app_mode to \"extended\")");
    p(&format!(
        "  request echo:  {echo_url}/v1/...   (the Web API's checks, then your request back)"
    ));
    p(&format!(
        "  control plane: {url}/_emulator/settings, /_emulator/counters, ..."
    ));
    p("Press Ctrl-C to stop.");
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
