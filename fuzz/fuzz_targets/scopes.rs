//! Scope strings from users and servers: never panic, round-trip through the
//! wire form, and the endpoint table never panics on any method and path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_core::scope::{Scopes, missing_for};

fuzz_target!(|input: (&str, &str, &str)| {
    let (scopes, method, path) = input;
    let s = Scopes::parse(scopes);
    assert_eq!(Scopes::parse(&s.to_wire()), s);
    let _ = missing_for(method, path, &s);
});
