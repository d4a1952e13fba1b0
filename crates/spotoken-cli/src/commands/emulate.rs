//! `spotoken emulate`: the Spotify emulator as a standalone server, for trying
//! spotoken without a Spotify app and for testing other Spotify apps against
//! expiry, rotation, revocation and rate limits.

use spotoken_emulator::{
    Client, DEFAULT_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_SECRET,
    Emulator,
};

use crate::cli::{Global, Output};

/// Options of `spotoken emulate`.
#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Also accept this client id (public PKCE client unless --client-secret is given).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Secret for --client-id, making it a confidential client.
    #[arg(
        long,
        env = "SPOTOKEN_EMULATOR_CLIENT_SECRET",
        hide_env_values = true,
        requires = "client_id"
    )]
    pub client_secret: Option<String>,
    /// Redirect URIs registered for --client-id (default: loopback /callback and
    /// /auth/callback on any port).
    #[arg(long = "redirect-uri", requires = "client_id")]
    pub redirect_uris: Vec<String>,
}

/// Starts the emulator, prints where it is, serves until SIGINT or SIGTERM.
pub async fn exec(global: &Global, args: EmulateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let extra = args.client_id.clone().map(|id| Client {
        id,
        secret: args.client_secret.clone(),
        redirect_uris: if args.redirect_uris.is_empty() {
            [
                "http://127.0.0.1/callback",
                "http://[::1]/callback",
                "http://127.0.0.1/auth/callback",
            ]
            .map(String::from)
            .to_vec()
        } else {
            args.redirect_uris.clone()
        },
    });
    let emu = Emulator::start_on(args.port, extra.clone()).await?;
    let url = emu.url();
    let mut clients = vec![
        serde_json::json!({"client_id": DEFAULT_CLIENT_ID, "type": "public"}),
        serde_json::json!({"client_id": DEFAULT_CONFIDENTIAL_CLIENT_ID, "type": "confidential", "client_secret": DEFAULT_CONFIDENTIAL_CLIENT_SECRET}),
    ];
    if let Some(c) = &extra {
        let kind = if c.secret.is_some() {
            "confidential"
        } else {
            "public"
        };
        clients.push(serde_json::json!({"client_id": c.id, "type": kind}));
    }
    match global.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"url": url, "accounts_url": url, "api_url": url, "clients": clients})
        ),
        Output::Text => {
            println!("spotoken emulator listening on {url}");
            println!("  accounts url: {url}   (SPOTOKEN_ACCOUNTS_URL)");
            println!("  api url:      {url}   (SPOTOKEN_API_URL)");
            println!("  public client id:       {DEFAULT_CLIENT_ID}");
            println!(
                "  confidential client id: {DEFAULT_CONFIDENTIAL_CLIENT_ID} (secret {DEFAULT_CONFIDENTIAL_CLIENT_SECRET})"
            );
            if let Some(c) = &extra {
                let kind = if c.secret.is_some() {
                    "confidential"
                } else {
                    "public"
                };
                println!("  your client id:         {} ({kind})", c.id);
            }
            println!("  redirect URIs: http://127.0.0.1/callback and /auth/callback, any port");
            println!("  control plane: {url}/_emulator/settings, /_emulator/counters, ...");
            println!("Press Ctrl-C to stop.");
        }
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    emu.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
