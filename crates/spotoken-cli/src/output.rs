//! Printing: results on stdout (text or JSON), messages and errors on stderr,
//! a closed pipe is not an error, and times read as people read them.

use std::io::Write as _;
use std::time::Duration;

use spotoken::Error;
use spotoken::core::wait::human_duration;

use crate::cli::Output;

/// Prints a line on stdout; a closed pipe (`spotoken token | head -c0`) is fine.
pub(crate) fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}").and_then(|()| out.flush());
}

/// Prints a JSON value on stdout.
pub(crate) fn json(v: &serde_json::Value) {
    line(&v.to_string());
}

/// Prints an error on stderr with what to do next, and returns its exit code.
/// With `--output json` it is one JSON line instead, which the language
/// bindings read: `{"error": {"kind", "exit_code", "message", "retry_after"?,
/// "missing_scopes"?}}` (the wait in seconds).
pub(crate) fn report(e: &Error, format: Output) -> u8 {
    match format {
        Output::Text => {
            eprintln!("error: {e}");
            if let Some(todo) = command_to_run(e) {
                eprintln!("hint: {todo}");
            } else if let Some(hint) = hint(e) {
                eprintln!("hint: {hint}");
            }
        }
        Output::Json => eprintln!("{}", error_json(e)),
    }
    e.kind().exit_code()
}

/// The `--output json` form of an error (see [`report`]).
fn error_json(e: &Error) -> serde_json::Value {
    let mut body = serde_json::json!({
        "kind": e.kind(),
        "exit_code": e.kind().exit_code(),
        "message": match command_to_run(e) {
            Some(todo) => format!("{e}; {todo}"),
            None => e.to_string(),
        },
    });
    if let Some(wait) = e.retry_after() {
        body["retry_after"] =
            serde_json::json!(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
    }
    if let Error::InsufficientScope { missing, .. } = e {
        body["missing_scopes"] = serde_json::json!(missing);
    }
    serde_json::json!({ "error": body })
}

/// The command of ours that fixes an error: the library's messages say what
/// must happen, not which program does it.
fn command_to_run(e: &Error) -> Option<String> {
    match e {
        Error::AuthorizationNeeded { account, .. } => {
            Some(format!("run `spotoken login --account {account}`"))
        }
        Error::InsufficientScope { missing, .. } if !missing.is_empty() => Some(format!(
            "run `spotoken login --scopes <current>,{}`",
            missing.join(",")
        )),
        _ => None,
    }
}

fn hint(e: &Error) -> Option<&'static str> {
    match e {
        Error::Temporary { .. } | Error::RateLimited { .. } => {
            Some("this is temporary: try again later (exit code 4)")
        }
        Error::Internal(_) => Some("this looks like a bug; run with -vv and report it"),
        _ => None,
    }
}

/// "in 42 min" / "3 min ago" for a unix time relative to now.
pub(crate) fn relative(at: i64, now: i64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_carry_the_wait_and_the_missing_scopes_for_programs() {
        let e = Error::temporary("rate limited", Some(Duration::from_millis(1500)));
        let v = error_json(&e);
        assert_eq!(v["error"]["kind"], "temporary");
        assert_eq!(v["error"]["exit_code"], 4);
        assert_eq!(v["error"]["retry_after"], 2, "rounded up");
        assert_eq!(v["error"]["message"], e.to_string());
        let e = Error::InsufficientScope {
            endpoint: "GET /v1/me/playlists".into(),
            missing: vec!["playlist-read-private".into()],
        };
        let v = error_json(&e);
        assert_eq!(v["error"]["kind"], "insufficient_scope");
        assert_eq!(v["error"]["exit_code"], 5);
        assert_eq!(v["error"]["missing_scopes"][0], "playlist-read-private");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("spotoken login --scopes <current>,playlist-read-private"),
            "{message}"
        );
        assert!(v["error"].get("retry_after").is_none());
    }
}
