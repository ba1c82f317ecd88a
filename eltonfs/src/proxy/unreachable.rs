//! Instance addresses that just refused a connection (pure: the caller
//! passes the time). An instance on another host that died, or whose host
//! went away, stays in the registry until its host reports again or the
//! leader marks it lost (seconds); meanwhile this proxy skips it instead
//! of sending every request there to fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an address that refused a connection is skipped: longer than
/// a registry refresh, so the registry has caught up when it ends.
pub const SKIP_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Unreachable {
    since: HashMap<SocketAddr, Instant>,
}

impl Unreachable {
    /// Records that `addr` refused a connection at `now`.
    pub fn mark(&mut self, addr: SocketAddr, now: Instant) {
        self.since.insert(addr, now);
        // Bounded by the instances seen failing in one window.
        self.since.retain(|_, t| now.duration_since(*t) < SKIP_FOR);
    }

    /// Whether `addr` is to be skipped at `now`.
    pub fn skips(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.since
            .get(addr)
            .is_some_and(|t| now.duration_since(*t) < SKIP_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_skipped_for_a_while_then_tried_again() {
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let t0 = Instant::now();
        let mut u = Unreachable::default();
        assert!(!u.skips(&a, t0));
        u.mark(a, t0);
        assert!(u.skips(&a, t0 + SKIP_FOR / 2));
        assert!(!u.skips(&b, t0));
        assert!(!u.skips(&a, t0 + SKIP_FOR));
        // Old marks are dropped as new ones come.
        u.mark(b, t0 + SKIP_FOR * 2);
        assert_eq!(u.since.len(), 1);
    }
}
