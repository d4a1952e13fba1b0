//! Durations as servers send them and as people read and type them.
//!
//! `Retry-After` comes as delta-seconds or as an HTTP date (RFC 9110 §10.2.3);
//! Spotify uses seconds, sometimes hours' worth. Users type `90`, `90s`, `5m`,
//! `2h`. People read "2 h 13 min".

use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value relative to `now`. Seconds may be fractional
/// (some proxies send `1.5`); negative or unparsable values give `None`; dates
/// in the past give zero. Absurd values are capped at one year.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = v.parse().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX));
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() && f >= 0.0 {
            return Some(Duration::from_secs_f64(f.min(MAX.as_secs_f64())));
        }
        return None;
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO).min(MAX))
}

/// "2 h 13 min", "45 s", "3 days 4 h": the two largest units, rounded up.
pub fn human_duration(d: Duration) -> String {
    let total = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (days, rem) = (total / 86_400, total % 86_400);
    let (h, rem) = (rem / 3600, rem % 3600);
    let (m, s) = (rem / 60, rem % 60);
    match (days, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) if s == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, 0) => format!("{h} h"),
        (0, _, _) => format!("{h} h {m} min"),
        (1, 0, _) => "1 day".to_owned(),
        (1, _, _) => format!("1 day {h} h"),
        (_, 0, _) => format!("{days} days"),
        _ => format!("{days} days {h} h"),
    }
}

/// Parses a duration typed by a user: plain seconds (`90`) or with a unit
/// (`90s`, `5m`, `2h`, `1d`, `250ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 90, 90s, 5m, 2h)"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit.trim() {
        "" | "s" | "sec" | "secs" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" | "mins" => secs(60),
        "h" | "hour" | "hours" => secs(3600),
        "d" | "day" | "days" => secs(86_400),
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use s, m, h or d)"
            ));
        }
    };
    d.ok_or_else(|| format!("'{s}' is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 7200 ", now),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(120))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(365 * 24 * 3600))
        );
    }

    #[test]
    fn humans_read_two_units() {
        assert_eq!(human_duration(Duration::from_secs(7980)), "2 h 13 min");
        assert_eq!(human_duration(Duration::from_secs(45)), "45 s");
        assert_eq!(human_duration(Duration::from_secs(86_400)), "1 day");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3 days 4 h"
        );
        assert_eq!(human_duration(Duration::from_millis(1500)), "2 s");
    }

    #[test]
    fn users_type_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    proptest! {
        #[test]
        fn retry_after_never_panics_and_is_capped(v in ".{0,40}") {
            if let Some(d) = parse_retry_after(&v, SystemTime::now()) {
                prop_assert!(d <= Duration::from_secs(365 * 24 * 3600));
            }
        }

        #[test]
        fn integer_retry_after_round_trips(n in 0u64..10_000_000) {
            prop_assert_eq!(parse_retry_after(&n.to_string(), SystemTime::now()), Some(Duration::from_secs(n)));
        }

        #[test]
        fn parse_duration_never_panics(v in ".{0,20}") {
            let _ = parse_duration(&v);
        }
    }
}
