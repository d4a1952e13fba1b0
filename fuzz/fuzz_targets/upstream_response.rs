//! What the upstream API sends back: a response head and a chunked body,
//! arriving in pieces of any size. Never panic; a head is either incomplete,
//! refused, or says how its body ends; the chunked decoder never hands out
//! more bytes than it was given.
#![no_main]
use axum::http::Method;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spotoken_server::http1::{Chunked, Framing, Step, parse_head};

fuzz_target!(|input: (&[u8], u8)| {
    let (wire, piece) = input;
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
});
