//! # spotoken
//!
//! The library Spotify apps depend on: it keeps OAuth tokens valid, safe and
//! usable. This crate is being built on top of [`spotoken_core`]; the store, the
//! refresh engine and the Web API client land here.

pub use spotoken_core as core;
