//! The upstream response parser against hyper's HTTP/1 client on the same
//! bytes (the checks: `spotoken_server::fuzzing::upstream_differential`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|wire: &[u8]| {
    spotoken_server::fuzzing::upstream_differential(wire);
});
