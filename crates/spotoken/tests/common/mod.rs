//! What several test binaries share: a library user's login against the
//! emulator, the browser played by the emulator itself.

use spotoken::core::endpoint::Provider;
use spotoken::core::scope::Scopes;
use spotoken::{Tokens, TokensBuilder, crypto, store};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator};

/// A builder for the emulator's default client, keeping its store and key in `dir`.
pub(crate) fn builder(emu: &Emulator, dir: &std::path::Path) -> TokensBuilder {
    Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&emu.url(), &emu.url()).expect("provider"))
        .store(store::Sqlite::open(dir.join("tokens.db")).expect("store"))
        .keys(crypto::load_key_file(&dir.join("master.key")).expect("keys"))
}

/// Logs `account` in with `scopes` through the emulator's consent.
pub(crate) async fn login(tokens: &Tokens, emu: &Emulator, account: &str, scopes: &str) {
    let pending = tokens
        .begin_login(
            "http://127.0.0.1:45678/callback",
            &Scopes::parse(scopes),
            spotoken::LoginOptions::default(),
        )
        .expect("begin");
    let back = emu
        .authorize(pending.url.as_str())
        .await
        .expect("authorize");
    tokens
        .complete_login(account, &pending, &back)
        .await
        .expect("login");
}
