//! # spotoken-core
//!
//! The pure heart of spotoken: everything that can be decided without touching a
//! socket, a file or the clock. Secrets as types that cannot be printed, PKCE,
//! Spotify's scope table, OAuth request builders and response parsers, the one
//! error taxonomy, and the refresh/backoff decisions. Time and randomness are
//! passed in, so every branch is testable without sleeps or sockets.
//!
//! This crate deliberately has no tokio, reqwest or database dependency: the
//! compiler keeps it pure.

// Functions a reader can hold (the threshold is in clippy.toml); tests may
// be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod backoff;
pub mod budget;
pub mod callback;
pub mod device;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod freshness;
pub mod pkce;
pub mod protocol;
pub mod redact;
pub mod scope;
pub mod secret;
pub mod sync;
pub mod wait;

pub use error::{Error, ErrorKind, RateLimiter, ReauthReason};
pub use redact::redact;
