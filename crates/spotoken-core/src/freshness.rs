//! When to refresh: pure functions over the token's expiry, `now`, a margin and
//! a random number.
//!
//! A token is used while it has more than the margin left (default five minutes,
//! so a request started now does not meet an expired token mid-flight). A daemon
//! refreshes ahead of that point, spread by jitter so that many accounts (or many
//! processes) do not all refresh in the same second.

use std::time::Duration;

/// The default margin: a token with less than this left is refreshed first.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(300);

/// Unix time in seconds.
pub type UnixSecs = i64;

/// What to do with a cached access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Use it.
    Fresh,
    /// Refresh before use.
    RefreshNow,
}

/// Whether a token expiring at `expires_at` is usable at `now` with `margin` to spare.
pub fn freshness(expires_at: UnixSecs, now: UnixSecs, margin: Duration) -> Freshness {
    let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
    if expires_at.saturating_sub(now) > margin {
        Freshness::Fresh
    } else {
        Freshness::RefreshNow
    }
}

/// When a background refresher should refresh a token that expires at
/// `expires_at`: at `expires_at - margin`, moved earlier by up to `jitter`
/// (scaled by `rand01` in `[0, 1)`), never before `now`.
pub fn refresh_at(
    expires_at: UnixSecs,
    now: UnixSecs,
    margin: Duration,
    jitter: Duration,
    rand01: f64,
) -> UnixSecs {
    let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
    let spread = (jitter.as_secs_f64() * rand01.clamp(0.0, 1.0)) as i64;
    expires_at
        .saturating_sub(margin)
        .saturating_sub(spread)
        .max(now)
}

/// Spotify's refresh tokens die this long after the user's original authorization.
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(182 * 24 * 3600);
/// Status warns this long before that.
pub const REFRESH_TOKEN_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// How far an authorization is through its refresh-token lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Fine; this much is left.
    Ok(Duration),
    /// In the last fourteen days; this much is left.
    EndingSoon(Duration),
    /// Past it: the user must authorize again.
    Expired,
}

/// Where an authorization made at `authorized_at` stands at `now`.
pub fn refresh_token_lifetime(
    authorized_at: UnixSecs,
    now: UnixSecs,
    lifetime: Duration,
) -> Lifetime {
    let end = authorized_at.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
    let left = end.saturating_sub(now);
    if left <= 0 {
        return Lifetime::Expired;
    }
    let left = Duration::from_secs(left.unsigned_abs());
    if left <= REFRESH_TOKEN_WARNING {
        Lifetime::EndingSoon(left)
    } else {
        Lifetime::Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn margin_decides() {
        let m = Duration::from_secs(300);
        assert_eq!(freshness(1000 + 301, 1000, m), Freshness::Fresh);
        assert_eq!(freshness(1000 + 300, 1000, m), Freshness::RefreshNow);
        assert_eq!(freshness(900, 1000, m), Freshness::RefreshNow);
    }

    #[test]
    fn lifetime_warns_in_the_last_two_weeks() {
        let day = 86_400;
        let l = REFRESH_TOKEN_LIFETIME;
        assert!(matches!(
            refresh_token_lifetime(0, 10 * day, l),
            Lifetime::Ok(_)
        ));
        assert!(matches!(
            refresh_token_lifetime(0, 170 * day, l),
            Lifetime::EndingSoon(_)
        ));
        assert_eq!(refresh_token_lifetime(0, 183 * day, l), Lifetime::Expired);
    }

    proptest! {
        #[test]
        fn refresh_at_is_never_in_the_past_nor_after_the_margin(exp in 0i64..10_000_000, now in 0i64..10_000_000, r in 0.0f64..1.0) {
            let t = refresh_at(exp, now, Duration::from_secs(300), Duration::from_secs(120), r);
            prop_assert!(t >= now);
            prop_assert!(t <= (exp - 300).max(now));
        }
    }
}
