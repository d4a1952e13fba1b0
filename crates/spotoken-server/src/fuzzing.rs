//! The checks the fuzz targets in `fuzz/` run, here so that the parsers they
//! drive stay private to this crate (built only with the `fuzzing` feature).
//! Each function panics when an invariant breaks; libFuzzer reports the input.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use bytes::BytesMut;

use crate::http1::{Chunked, Framing, Step, differential, parse_head};

/// The server's error answers, for the `error_body` target.
pub use crate::error::{AppError, ErrorBody};

/// What a browser controls in a proxied request: the `Cookie` header and
/// the path after `/api/`. Never panics; an accepted path is relative, under
/// the allowed prefix, with no traversal, encoded separator or absolute URL.
pub fn proxy_request(cookie: &[u8], path: &str) {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(cookie) {
        headers.insert(header::COOKIE, v);
    }
    let _ = crate::cookies::get(&headers, crate::cookies::SESSION);
    if let Ok(ok) = crate::proxy::checked_path(path, &["v1/".to_owned()]) {
        let lower = ok.to_ascii_lowercase();
        assert!(ok.starts_with("v1/") && !ok.contains('\\') && !ok.contains("://"));
        assert!(!ok.contains("//") && !ok.split('/').any(|s| s == "." || s == ".."));
        for enc in ["%2f", "%2e", "%5c", "%00"] {
            assert!(!lower.contains(enc));
        }
    }
}

/// What the upstream API sends back: a response head and a chunked body,
/// arriving in pieces of `piece` bytes. Never panics; a head is either
/// incomplete, refused, or says how its body ends; the chunked decoder never
/// hands out more bytes than it was given.
pub fn upstream_response(wire: &[u8], piece: u8) {
    if let Ok(Some(head)) = parse_head(wire, &Method::GET) {
        assert!(head.size <= wire.len());
        if head.framing == Framing::UntilClose {
            assert!(!head.reusable);
        }
    }
    let mut decoder = Chunked::default();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = 0;
    let piece = usize::from(piece).max(1);
    loop {
        match decoder.step(&mut buf) {
            Ok(Step::Data(b)) => out += b.len(),
            Ok(Step::NeedMore) if fed < wire.len() => {
                let n = piece.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
            Ok(_) | Err(_) => break,
        }
    }
    assert!(out <= wire.len());
}

/// The upstream response parser against hyper's HTTP/1 client on the same
/// bytes (see `http1::differential`): wherever we accept a response, hyper
/// reads the same status and body; wherever hyper refuses, we refuse.
pub fn upstream_differential(wire: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let h = rt.block_on(differential::hypers(wire));
    if let Err(e) = differential::agree(&differential::ours(wire), &h) {
        panic!("{e}: {:?}", String::from_utf8_lossy(wire));
    }
}
