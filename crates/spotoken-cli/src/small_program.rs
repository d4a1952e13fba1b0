//! The `spotoken` executable's program: `spotoken token` with a fresh cached
//! token is answered here, from the store, in little more than the cost of
//! starting a process; everything else is handed to `spotoken-full` ([`front`]).
//!
//! The executable skips the Rust runtime's start-up (`#![no_main]`), so what of
//! it matters is done here by hand: a closed standard stream (which the
//! store's file could otherwise take the number of) sends the call to
//! `spotoken-full`, whose runtime repairs it; a reader that went away makes
//! writes fail instead of killing the process (SIGPIPE is caught, as the Rust
//! runtime would ignore it), so `spotoken token | head -c0` exits 0; a panic is
//! caught and the call handed over.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::{cli, commands, front};

/// Answers a fresh cached `token`, or hands the call to `spotoken-full`;
/// returns the exit code.
pub(crate) fn run() -> u8 {
    let answered = std::panic::catch_unwind(|| {
        if !standard_streams_open() {
            return None;
        }
        let _ = signal_hook::flag::register(
            signal_hook::consts::SIGPIPE,
            Arc::new(AtomicBool::new(false)),
        );
        let (global, token_args) = cli::quick_token_args(std::env::args_os().skip(1))?;
        commands::token::fast_path(&global, &token_args)
    });
    match answered {
        Ok(Some(code)) => code,
        _ => front::hand_over(std::env::args_os()),
    }
}

/// Whether descriptors 0, 1 and 2 are all open: a new file then gets 3 or more.
fn standard_streams_open() -> bool {
    use std::os::fd::AsRawFd as _;
    std::fs::File::open("/dev/null").is_ok_and(|f| f.as_raw_fd() > 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn standard_streams_are_open_under_the_test_harness() {
        assert!(super::standard_streams_open());
    }
}
