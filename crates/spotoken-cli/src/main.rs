//! `spotoken`, the executable scripts call: a fresh cached `token` is
//! answered from the store, everything else handed to `spotoken-full` (the
//! library's `small_program` module). This executable links only what the fast
//! path uses (the store's read, the key ring, the config file), so the loader
//! has little to map and relocate.
//!
//! It also skips the Rust runtime's start-up (`#![no_main]`): that start-up
//! reads `/proc/self/maps` to find the main thread's stack guard, maps an
//! alternate signal stack and installs stack-overflow handlers, ~0.1 ms that is
//! a seventh of a bare process here and buys nothing for a read and a print.
//! `std::env::args` works without the runtime (glibc passes the arguments to
//! Rust's own initializer).

// A test build keeps the harness's own `main`.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::ffi::c_int;

/// The C entry point, in place of the runtime's.
// `no_mangle` is an unsafe attribute because an exported symbol could clash
// with another definition of it; under `#![no_main]` nothing else defines
// `main`, which is what the C runtime calls.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const std::ffi::c_char) -> c_int {
    c_int::from(spotoken_cli::spotoken())
}
