//! The `spotoken` command's modules, shared by its two executables.
//!
//! `spotoken-full` is the whole program: every command, with clap, logging,
//! an async runtime, the HTTP stack, the server and the emulator. `spotoken` is
//! the program people and scripts call: a small executable that answers the
//! common `spotoken token` from the store (one row, decrypted) and hands every
//! other invocation to `spotoken-full` beside it ([`front`]). The split exists
//! because start-up cost grows with the executable: the loader relocates every
//! page of pointers in a 16 MiB binary before `main` runs, which alone made
//! `spotoken token` cost 2.6× a bare process (docs/BENCHMARKS.md).

// The clap structs' doc comments are the --help text: `[default: …]` and bare
// URLs there are for a terminal, not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]

pub mod child;
pub mod cli;
pub mod commands;
pub mod config;
pub mod front;
pub mod log_writer;
pub mod output;
