//! What a browser controls in a proxied request: the `Cookie` header and the
//! path after `/api/` (the checks: `spotoken_server::fuzzing::proxy_request`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &str)| {
    let (cookie, path) = input;
    spotoken_server::fuzzing::proxy_request(cookie, path);
});
