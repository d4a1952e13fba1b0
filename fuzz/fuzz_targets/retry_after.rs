//! `Retry-After` values: never panic, never more than a year.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_core::wait::{parse_duration, parse_retry_after};

fuzz_target!(|input: &str| {
    if let Some(d) = parse_retry_after(input, std::time::SystemTime::UNIX_EPOCH) {
        assert!(d <= std::time::Duration::from_secs(365 * 24 * 3600));
    }
    let _ = parse_duration(input);
});
