//! Named crash points for the crash-safety tests: a build with the
//! `crash-points` feature stops at the point named by `SPOTOKEN_CRASH_AT`,
//! says so on stderr, and waits there to be killed (the test sends
//! SIGKILL), so a kill can land exactly between two steps of a refresh.
//!
//! Without the feature (every ordinary and release build) [`point`] is an
//! empty function and the variable is never read.

/// The environment variable naming the point to stop at.
#[cfg(feature = "crash-points")]
const CRASH_AT_ENV: &str = "SPOTOKEN_CRASH_AT";

/// Stops here for good if `SPOTOKEN_CRASH_AT` names this point.
#[cfg(feature = "crash-points")]
pub(crate) fn point(name: &str) {
    if std::env::var_os(CRASH_AT_ENV).is_some_and(|v| v == name) {
        eprintln!("spotoken: crash point {name} reached");
        loop {
            std::thread::park();
        }
    }
}

/// Without the `crash-points` feature: nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
