//! The `spotoken` command, shared by its two executables.
//!
//! `spotoken-full` is the whole program: every command, with clap, logging,
//! an async runtime, the HTTP stack, the server and the emulator. `spotoken` is
//! the program people and scripts call: a small executable that answers the
//! common `spotoken token` from the store (one row, decrypted) and hands every
//! other invocation to `spotoken-full` beside it (`front`). The split exists
//! because start-up cost grows with the executable: the loader relocates every
//! page of pointers of the whole program before `main` runs
//! (docs/BENCHMARKS.md has the figures).
//!
//! The library is these two programs and nothing else: its modules are
//! private, each executable calls one function.

// Functions a reader can hold (the threshold is in clippy.toml); tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]
// The clap structs' doc comments are the --help text: `[default: …]` and bare
// URLs there are for a terminal, not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]

mod child;
mod cli;
mod commands;
mod config;
mod front;
mod full_program;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod log_writer;
mod output;
mod small_program;

/// The `spotoken` executable: answers a fresh cached `token` from the store,
/// hands everything else to `spotoken-full`; returns the exit code.
pub fn spotoken() -> u8 {
    small_program::run()
}

/// The `spotoken-full` executable: the whole program.
pub fn spotoken_full() -> std::process::ExitCode {
    full_program::run()
}
