//! `spotoken`, the executable scripts call: `spotoken token` with a fresh
//! cached token is answered here, from the store, in little more than the cost
//! of starting a process; everything else is handed to `spotoken-full` (see the
//! library's `front` module). This executable links only what the fast path
//! uses (the store's read, the key ring, the config file), so the loader has
//! little to map and relocate.
//!
//! It also skips the Rust runtime's start-up (`#![no_main]`): that start-up
//! reads `/proc/self/maps` to find the main thread's stack guard, maps an
//! alternate signal stack and installs stack-overflow handlers, ~0.1 ms that is
//! a seventh of a bare process here and buys nothing for a read and a print.
//! What of it matters is done by hand: a closed standard stream (which the
//! store's file could otherwise take the number of) sends the call to
//! `spotoken-full`, whose runtime repairs it; a reader that went away makes
//! writes fail instead of killing the process (SIGPIPE is caught, as the Rust
//! runtime would ignore it), so `spotoken token | head -c0` exits 0; a panic is
//! caught and the call handed over. `std::env::args` works without the runtime
//! (glibc passes the arguments to Rust's own initializer).

// A test build keeps the harness's own `main`.
#![cfg_attr(not(test), no_main)]

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use spotoken_cli::{cli, commands, front};

/// The C entry point, in place of the runtime's.
// `no_mangle` is an unsafe attribute because an exported symbol could clash
// with another definition of it; under `#![no_main]` nothing else defines
// `main`, which is what the C runtime calls.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const std::ffi::c_char) -> c_int {
    run()
}

#[cfg_attr(test, allow(dead_code))]
fn run() -> c_int {
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
        Ok(Some(code)) => c_int::from(code),
        _ => c_int::from(front::hand_over(std::env::args_os())),
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
