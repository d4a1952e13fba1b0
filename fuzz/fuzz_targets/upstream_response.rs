//! What the upstream API sends back: a response head and a chunked body,
//! arriving in pieces of any size (the checks:
//! `spotoken_server::fuzzing::upstream_response`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], u8)| {
    let (wire, piece) = input;
    spotoken_server::fuzzing::upstream_response(wire, piece);
});
