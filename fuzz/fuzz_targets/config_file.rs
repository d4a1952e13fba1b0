//! `config.toml`, as `spotoken` reads it: any text. Never panic; the checks
//! (an error never quotes a secret, a parsed file round-trips through
//! `write_config`'s form) live in `spotoken_cli::fuzzing::check_config_text`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    spotoken_cli::fuzzing::check_config_text(text);
});
