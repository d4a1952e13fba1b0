//! Provider text without tokens in it.
//!
//! An `error_description`, a Web API error message or an HTML error page is
//! text we did not write, and it ends up in errors, logs and pages. A provider
//! that echoes a token (or a broken proxy that answers with someone's bearer
//! header) must not make us print it, so every piece of provider text passes
//! through [`redact`] before it reaches a message.
//!
//! A token is recognised by its shape, not its value: a run of the
//! base64/base64url/JWT alphabet that is long and does not read like words.
//! Runs of [`ALWAYS`] characters or more are always cut; runs of [`MIXED`] or
//! more are cut when they contain a digit or a capital inside a word, which
//! random text almost always does (a 20-character base64 run escapes both
//! tests with a probability below one in a million) and ordinary prose,
//! paths and dotted names do not.

/// The replacement for a token-shaped run.
pub const REDACTED: &str = "[redacted]";

/// A run at least this long is cut if it mixes letters and digits or case.
pub const MIXED: usize = 20;

/// A run at least this long is cut whatever it holds.
pub const ALWAYS: usize = 64;

/// A character of the base64, base64url or JWT alphabet (and `~` of PKCE).
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Whether a run of token characters looks like a token rather than words.
fn looks_like_token(run: &str) -> bool {
    if run.len() >= ALWAYS {
        return true;
    }
    if run.len() < MIXED {
        return false;
    }
    // Word-like segments: no digits, and lower case, upper case or Capitalized.
    let word_like = |w: &str| {
        let mut chars = w.chars();
        let first_ok = chars.next().is_none_or(|c| c.is_ascii_alphabetic());
        first_ok
            && (chars.all(|c| c.is_ascii_lowercase()) || w.chars().all(|c| c.is_ascii_uppercase()))
    };
    !run.split(|c: char| !c.is_ascii_alphanumeric())
        .all(word_like)
}

/// `text` with every token-shaped run replaced by [`REDACTED`].
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = None;
    for (i, c) in text.char_indices() {
        if is_token_char(c) {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            push_run(&mut out, &text[s..i]);
            out.push(c);
        } else {
            out.push(c);
        }
    }
    if let Some(s) = start {
        push_run(&mut out, &text[s..]);
    }
    out
}

fn push_run(out: &mut String, run: &str) {
    out.push_str(if looks_like_token(run) { REDACTED } else { run });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent of `looks_like_token`: the runs this module promises to cut.
    fn has_token_run(s: &str) -> Option<String> {
        s.split(|c: char| !is_token_char(c))
            .find(|r| {
                r.len() >= ALWAYS || (r.len() >= MIXED && r.bytes().any(|b| b.is_ascii_digit()))
            })
            .map(str::to_owned)
    }

    #[test]
    fn tokens_of_every_usual_shape_are_cut() {
        for token in [
            "AQDxJ3k9_Lq-7rVbN0pZ2sWcT8yHfGmUe4iKoA",
            "BQC7b1x0Zy9wVu8tSr7qPo6nMl5kJi4hGf3eDc2b",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "0123456789abcdef0123",
            "aGVsbG8gd29ybGQgaGVsbG8=",
        ] {
            let s = redact(&format!("Invalid refresh token: {token}."));
            assert!(!s.contains(token), "{s}");
            assert!(s.starts_with("Invalid refresh token: [redacted]"), "{s}");
        }
    }

    #[test]
    fn prose_paths_and_names_survive() {
        for text in [
            "Refresh token revoked",
            "Invalid authorization code",
            "The access token expired",
            "internationalization of user-read-currently-playing",
            "see https://developer.spotify.com/documentation/web-api for details",
            "HTTP 429 (rate limited) after 30 s; try again at 12:05",
            "SPOTOKEN_CLIENT_SECRET is wrong",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    proptest! {
        #[test]
        fn no_long_or_digit_mixed_run_survives(s in "[ -~]{0,200}") {
            let out = redact(&s);
            prop_assert_eq!(has_token_run(&out), None, "in {:?}", out);
        }

        #[test]
        fn a_token_with_a_digit_between_words_is_cut(
            before in "[a-zA-Z ,.:]{0,40}",
            head in "[A-Za-z0-9_-]{10,60}",
            digit in "[0-9]",
            tail in "[A-Za-z0-9_-]{9,60}",
            after in "[a-zA-Z ,.:]{0,40}",
        ) {
            let token = format!("{head}{digit}{tail}");
            let out = redact(&format!("{before} {token} {after}"));
            prop_assert!(!out.contains(&token), "{}", out);
        }

        #[test]
        fn ordinary_words_survive(words in prop::collection::vec("[A-Z]?[a-z]{1,14}|[A-Z]{1,6}|[0-9]{1,5}", 0..30)) {
            let text = words.join(" ");
            prop_assert_eq!(redact(&text), text);
        }
    }
}
