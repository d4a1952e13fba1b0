//! Log in against the built-in Spotify emulator and call `/v1/me`, using only
//! the library. With real Spotify, drop the emulator, use your client id and
//! `Provider::spotify()`, and let a person open `pending.url` in a browser.
//!
//! ```text
//! cargo run -p spotoken --example emulator_login
//! ```

use spotoken::core::endpoint::Provider;
use spotoken::core::scope::Scopes;
use spotoken::{Tokens, crypto, store};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emu = Emulator::start().await?;
    let home = tempfile::tempdir()?;
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&emu.url(), &emu.url())?)
        .store(store::Sqlite::open(home.path().join("tokens.db"))?)
        .keys(crypto::load_key_file(&home.path().join("master.key"))?)
        .build()?;

    let pending = tokens.begin_login(
        "http://127.0.0.1:8888/callback",
        &Scopes::parse("user-read-private"),
        spotoken::LoginOptions::default(),
    )?;
    println!("a person would open: {}", pending.url);
    // Play the browser: the emulator approves at once and redirects back.
    let back_to = emu.authorize(pending.url.as_str()).await?;
    let login = tokens.complete_login("default", &pending, &back_to).await?;
    println!(
        "logged in as {:?}, scopes {}",
        login.display_name,
        login.granted.to_wire()
    );

    let me: serde_json::Value = tokens.api("default").get("/v1/me").await?.json()?;
    println!("GET /v1/me → {}", me["display_name"]);
    Ok(())
}
