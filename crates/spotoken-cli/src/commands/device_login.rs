//! `spotoken login --device`: the device authorization grant for machines
//! without a browser. Shows the user code and where to enter it (with a QR
//! code of the link when stderr is a terminal), then waits while the library
//! polls at the provider's pace.

use std::io::IsTerminal as _;
use std::time::Duration;

use spotoken::core::scope::Scopes;
use spotoken::{DeviceLogin, Error, LoginOutcome, Tokens};

use crate::config::Resolved;

/// Scopes asked of a provider other than Spotify when none are configured:
/// OpenID Connect providers issue refresh tokens only with `offline_access`.
pub(crate) const OTHER_PROVIDER_SCOPES: &str = "openid offline_access";

/// Runs the device login, giving up after `timeout` or when the code expires.
pub(crate) async fn exec(
    cfg: &Resolved,
    tokens: &Tokens,
    scopes: &Scopes,
    timeout: Duration,
) -> Result<LoginOutcome, Error> {
    let login = tokens.begin_device_login(scopes).await?;
    show(&login);
    match tokio::time::timeout(timeout, tokens.complete_device_login(&cfg.account, &login)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::temporary(
            format!(
                "nobody approved the device login within {}; run `spotoken login --device` again",
                spotoken::core::wait::human_duration(timeout)
            ),
            None,
        )),
    }
}

fn show(login: &DeviceLogin) {
    let a = &login.authorization;
    eprintln!("To log in, open this address on any device:");
    eprintln!("{}", a.verification_uri);
    eprintln!("and enter the code: {}", a.user_code);
    if let Some(complete) = &a.verification_uri_complete {
        eprintln!("(or open {complete}, which carries the code)");
    }
    if std::io::stderr().is_terminal()
        && let Some(qr) = qr_code(login.qr_url().as_str())
    {
        eprintln!("{qr}");
    }
    eprintln!(
        "Waiting for approval (the code expires in {})...",
        spotoken::core::wait::human_duration(a.expires_in)
    );
}

/// The URL as a QR code in Unicode half blocks (two modules per character),
/// light on dark so it scans on the usual dark terminal.
fn qr_code(url: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_code_is_half_blocks_two_modules_a_line() {
        let qr = qr_code("https://id.example/device?user_code=WDJB-MJHT").expect("qr");
        let lines: Vec<&str> = qr.lines().collect();
        // Version 3 (29 modules) plus a 4-module quiet zone each side: 37 wide,
        // 37 high in 19 lines of two modules each.
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count())
        );
        assert_eq!(lines.len(), lines[0].chars().count().div_ceil(2));
        assert!(
            qr.chars()
                .all(|c| matches!(c, ' ' | '█' | '▀' | '▄' | '\n'))
        );
    }
}
