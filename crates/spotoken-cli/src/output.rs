//! Printing: results on stdout (text or JSON), messages and errors on stderr,
//! a closed pipe is not an error, and times read as people read them.

use std::io::Write as _;
use std::time::Duration;

use spotoken::Error;
use spotoken::core::wait::human_duration;

/// Prints a line on stdout; a closed pipe (`spotoken token | head -c0`) is fine.
pub fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}").and_then(|()| out.flush());
}

/// Prints a JSON value on stdout.
pub fn json(v: &serde_json::Value) {
    line(&v.to_string());
}

/// Prints an error on stderr with what to do next, and returns its exit code.
pub fn report(e: &Error) -> u8 {
    eprintln!("error: {e}");
    if let Some(hint) = hint(e) {
        eprintln!("hint: {hint}");
    }
    e.kind().exit_code()
}

fn hint(e: &Error) -> Option<&'static str> {
    match e {
        Error::Temporary { .. } => Some("this is temporary: try again later (exit code 4)"),
        Error::Internal(_) => Some("this looks like a bug; run with -vv and report it"),
        _ => None,
    }
}

/// "in 42 min" / "3 min ago" for a unix time relative to now.
pub fn relative(at: i64, now: i64) -> String {
    if at >= now {
        format!(
            "in {}",
            human_duration(Duration::from_secs((at - now).unsigned_abs()))
        )
    } else {
        format!(
            "{} ago",
            human_duration(Duration::from_secs((now - at).unsigned_abs()))
        )
    }
}
