//! Token endpoint answers: any status, any body. Must never panic; a success
//! must carry a non-empty token and a bounded lifetime; an error snippet must
//! never carry a long token-like run from the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_core::protocol::{HttpAnswer, MAX_EXPIRES_IN, parse_token_answer};

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (status, body) = input;
    match parse_token_answer(HttpAnswer { status, retry_after: None, body: &body }, "acct") {
        Ok(t) => {
            assert!(!t.access_token.expose().is_empty());
            assert!(t.expires_in > std::time::Duration::ZERO && t.expires_in <= MAX_EXPIRES_IN);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
