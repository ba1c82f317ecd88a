//! Commits wait after a new incarnation starts, until every live slave has
//! heard of it.
//!
//! A slave learns the master's incarnation from its heartbeat answers and
//! drops the version records it cached from another one then. Until its
//! next heartbeat it may still take its cached `web@1` for the current one;
//! so a master whose metadata is a new incarnation (a restore, or
//! `--new-incarnation`) issues no version before two heartbeat intervals
//! have passed: by then every slave that is up has asked, and no new
//! `web@1` can exist that a slave would mistake an old one for.

use std::time::{Duration, Instant};

use crate::MasterError;

/// Pure: whether commits are open at `now`, given when they open (`None`:
/// already open).
pub fn check(opens_at: Option<Instant>, now: Instant) -> Result<(), MasterError> {
    match opens_at {
        Some(at) if now < at => Err(MasterError::Settling(at.duration_since(now))),
        _ => Ok(()),
    }
}

/// When commits open after a start: at once if they were ever opened under
/// this incarnation, else after two heartbeat intervals.
pub fn opens_at(served: bool, start: Instant, heartbeat: Duration) -> Option<Instant> {
    (!served).then(|| start + heartbeat * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wait_two_heartbeats_only_under_a_new_incarnation() {
        let t0 = Instant::now();
        let hb = Duration::from_millis(200);
        assert_eq!(opens_at(true, t0, hb), None);
        let at = opens_at(false, t0, hb);
        assert_eq!(at, Some(t0 + Duration::from_millis(400)));
        assert!(matches!(
            check(at, t0 + Duration::from_millis(100)),
            Err(MasterError::Settling(d)) if d == Duration::from_millis(300)
        ));
        assert!(check(at, t0 + Duration::from_millis(400)).is_ok());
        assert!(check(None, t0).is_ok());
    }
}
