//! Named crash points for the crash-safety tests: a build with the
//! `crash-points` feature stops at the point named by `SPOTOKEN_CRASH_AT`,
//! says so on stderr, and waits there to be killed (the test sends
//! SIGKILL), so a kill can land exactly between two steps of a refresh.
//! A line on stdin lets it go on instead: a test can make something happen
//! (a logout, say) at exactly that step.
//!
//! Without the feature (every ordinary and release build) [`point`] is an
//! empty function and the variable is never read.

/// The environment variable naming the point to stop at.
#[cfg(feature = "crash-points")]
const CRASH_AT_ENV: &str = "SPOTOKEN_CRASH_AT";

/// Stops here if `SPOTOKEN_CRASH_AT` names this point: for good, or until a
/// line arrives on stdin.
#[cfg(feature = "crash-points")]
pub(crate) fn point(name: &str) {
    if std::env::var_os(CRASH_AT_ENV).is_some_and(|v| v == name) {
        eprintln!("spotoken: crash point {name} reached");
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            return;
        }
        loop {
            std::thread::park();
        }
    }
}

/// Without the `crash-points` feature: nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
