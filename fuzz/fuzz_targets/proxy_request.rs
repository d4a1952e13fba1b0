//! What a browser controls in a proxied request: the `Cookie` header and the
//! path after `/api/`. Never panic; an accepted path is relative, under the
//! allowed prefix, with no traversal, encoded separator or absolute URL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_server::cookies;
use spotoken_server::proxy::checked_path;

fuzz_target!(|input: (&[u8], &str)| {
    let (cookie, path) = input;
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_bytes(cookie) {
        headers.insert(axum::http::header::COOKIE, v);
    }
    let _ = cookies::get(&headers, cookies::SESSION);
    if let Ok(ok) = checked_path(path, &["v1/".to_owned()]) {
        let lower = ok.to_ascii_lowercase();
        assert!(ok.starts_with("v1/") && !ok.contains('\\') && !ok.contains("://"));
        assert!(!ok.contains("//") && !ok.split('/').any(|s| s == "." || s == ".."));
        for enc in ["%2f", "%2e", "%5c", "%00"] {
            assert!(!lower.contains(enc));
        }
    }
});
