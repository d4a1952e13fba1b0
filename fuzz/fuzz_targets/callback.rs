//! Callback URLs pasted by users or sent by browsers: never panic, never accept
//! a state other than the expected one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_core::callback::parse_callback;

fuzz_target!(|input: &str| {
    if parse_callback(input, "expected-state-value", "acct").is_ok() {
        assert!(input.contains("expected-state-value"));
    }
});
