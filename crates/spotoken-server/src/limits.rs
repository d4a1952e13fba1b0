//! Bounds on what an unauthenticated client can make the server write.
//!
//! Every `GET /auth/login` stores a pending login (sealed PKCE verifier and
//! state) until its callback or its expiry. Without a bound, anyone could
//! fill the database with them. Logins are counted per client network (an
//! IPv4 address, an IPv6 /64, which one holder usually has whole) and in
//! total, per fixed window; past either bound the login is refused with
//! `429` and `Retry-After` until the window ends. Pending rows also expire
//! (`login_ttl`) and are purged by the background pass.

use spotoken::core::sync::LockUnpoisoned as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits for started logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Length of a counting window.
    pub window: Duration,
    /// Logins one client network may start per window.
    pub per_client: u32,
    /// Logins this instance starts per window, all clients together.
    pub total: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            per_client: 30,
            total: 1000,
        }
    }
}

/// Counts started logins against [`LoginLimits`].
#[derive(Debug)]
pub(crate) struct LoginLimiter {
    limits: LoginLimits,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    total: u32,
    by_client: HashMap<ClientKey, u32>,
}

/// Whom a login is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4([u8; 4]),
    V6([u8; 8]),
    /// No address known (a test harness without connection info).
    Unknown,
}

impl From<Option<IpAddr>> for ClientKey {
    fn from(addr: Option<IpAddr>) -> Self {
        match addr.map(|a| a.to_canonical()) {
            Some(IpAddr::V4(a)) => ClientKey::V4(a.octets()),
            Some(IpAddr::V6(a)) => {
                let mut net = [0u8; 8];
                net.copy_from_slice(&a.octets()[..8]);
                ClientKey::V6(net)
            }
            None => ClientKey::Unknown,
        }
    }
}

impl LoginLimiter {
    /// A limiter with these limits.
    pub(crate) fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            window: Mutex::new(Window {
                started: None,
                total: 0,
                by_client: HashMap::new(),
            }),
        }
    }

    /// Counts a login from `client` at `now`; `Err(wait)` when a bound is
    /// reached (nothing is counted then).
    pub(crate) fn admit(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut w = self.window.lock_unpoisoned();
        let started = match w.started {
            Some(s) if now.saturating_duration_since(s) < self.limits.window => s,
            _ => {
                w.started = Some(now);
                w.total = 0;
                w.by_client.clear();
                now
            }
        };
        let wait = self
            .limits
            .window
            .saturating_sub(now.saturating_duration_since(started))
            .max(Duration::from_secs(1));
        if w.total >= self.limits.total {
            return Err(wait);
        }
        let key = ClientKey::from(client);
        let mine = w.by_client.get(&key).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(wait);
        }
        w.by_client.insert(key, mine + 1);
        w.total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn one_client_is_bounded_and_others_still_get_in() {
        let l = LoginLimiter::new(LoginLimits {
            window: Duration::from_secs(60),
            per_client: 3,
            total: 5,
        });
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit(ip("192.0.2.1"), t), Ok(()));
        }
        let wait = l.admit(ip("192.0.2.1"), t + Duration::from_secs(20));
        assert_eq!(wait, Err(Duration::from_secs(40)), "until the window ends");
        assert_eq!(l.admit(ip("192.0.2.2"), t), Ok(()));
        assert_eq!(l.admit(ip("192.0.2.3"), t), Ok(()));
        assert!(l.admit(ip("192.0.2.4"), t).is_err(), "total reached");
        // A new window starts afresh.
        assert_eq!(
            l.admit(ip("192.0.2.1"), t + Duration::from_secs(61)),
            Ok(())
        );
    }

    #[test]
    fn an_ipv6_network_counts_as_one_client() {
        let l = LoginLimiter::new(LoginLimits {
            window: Duration::from_secs(60),
            per_client: 2,
            total: 100,
        });
        let t = Instant::now();
        assert_eq!(l.admit(ip("2001:db8:1:2::1"), t), Ok(()));
        assert_eq!(l.admit(ip("2001:db8:1:2::ffff"), t), Ok(()));
        assert!(l.admit(ip("2001:db8:1:2:abcd::9"), t).is_err(), "same /64");
        assert_eq!(l.admit(ip("2001:db8:1:3::1"), t), Ok(()), "another /64");
        // An IPv4-mapped address is the IPv4 client.
        assert_eq!(l.admit(ip("::ffff:192.0.2.9"), t), Ok(()));
        assert_eq!(l.admit(ip("192.0.2.9"), t), Ok(()));
        assert!(l.admit(ip("192.0.2.9"), t).is_err());
    }
}
