//! The `spotoken` executable's program: `spotoken token` with a fresh cached
//! token is answered here, from the store, in little more than the cost of
//! starting a process; everything else is handed to `spotoken-full`
//! ([`front`]).
//!
//! The Rust runtime has already ignored SIGPIPE (so `spotoken token | head
//! -c0` gets a failed write, not a killed process) and put `/dev/null` on any
//! closed standard stream. What is left to do here: a panic is caught and the
//! call handed over, and a `token` the fast path could not answer is handed
//! over marked as tried, so `spotoken-full` does not read and decrypt the same
//! stale row again.

use crate::{cli, commands, front};

/// Answers a fresh cached `token`, or hands the call to `spotoken-full`;
/// returns the exit code.
pub(crate) fn run() -> u8 {
    let mut tried = false;
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if !standard_streams_open() {
            return None;
        }
        let (global, token_args) = cli::quick_token_args(std::env::args_os().skip(1))?;
        tried = true;
        commands::token::fast_path(&global, &token_args)
    }));
    match answered {
        Ok(Some(code)) => code,
        _ => front::hand_over(std::env::args_os(), tried),
    }
}

/// Whether descriptors 0, 1 and 2 are all open: a new file then gets 3 or
/// more. The runtime sees to it on the platforms spotoken runs on; checked
/// anyway, since the store's file taking stdout's number would get the token
/// written into it.
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
