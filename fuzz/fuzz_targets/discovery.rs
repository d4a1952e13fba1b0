//! Discovery documents and device authorization answers: any body. Must never
//! panic; an accepted document must name the issuer asked for and only
//! endpoints that are HTTPS or loopback.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_core::device::parse_device_authorization;
use spotoken_core::discovery::parse_metadata;
use spotoken_core::endpoint::{check_secure, parse_endpoint};
use spotoken_core::protocol::HttpAnswer;

fuzz_target!(|body: Vec<u8>| {
    let api = parse_endpoint("https://api.example", "API URL").expect("static URL");
    if let Ok(p) = parse_metadata("https://id.example", &body, &api) {
        assert!(p.issuer.as_deref().is_some_and(|i| i.trim_end_matches('/') == "https://id.example"));
        assert!(check_secure(&p.token_url, "t").is_ok());
        assert!(check_secure(&p.authorize_url, "a").is_ok());
    }
    let _ = parse_device_authorization(HttpAnswer { status: 200, retry_after: None, body: &body });
});
