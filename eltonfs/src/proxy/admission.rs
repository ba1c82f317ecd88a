//! What the proxy does with one request for an app (pure): forward it,
//! start the app's instance and wait, wait for the start already under
//! way, or turn it away because too many already wait. One start per app
//! at a time follows from this rule: only a request that finds the app
//! stopped (or failed) starts it, and the start is recorded before the
//! lock that read the phase is released.

/// Where an app's instance on this host stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No instance (never started, stopped when idle, or failed).
    Stopped,
    /// An instance is starting; requests wait for its port.
    Starting,
    /// An instance listens; requests go to it.
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Forward,
    /// Start an instance, then wait for it like the others.
    Start,
    Wait,
    /// The queue is full: 503 with `Retry-After`.
    Busy,
}

/// The decision for a request that finds `phase` with `waiting` requests
/// already held, at most `queue` held at once.
pub fn admit(phase: &Phase, waiting: usize, queue: usize) -> Admit {
    match phase {
        Phase::Ready => Admit::Forward,
        _ if waiting >= queue => Admit::Busy,
        Phase::Stopped => Admit::Start,
        Phase::Starting => Admit::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_request_finding_the_app_stopped_starts_it() {
        assert_eq!(admit(&Phase::Stopped, 0, 10), Admit::Start);
        assert_eq!(admit(&Phase::Starting, 0, 10), Admit::Wait);
        assert_eq!(admit(&Phase::Starting, 9, 10), Admit::Wait);
        assert_eq!(admit(&Phase::Ready, 0, 10), Admit::Forward);
    }

    #[test]
    fn a_full_queue_turns_requests_away_but_never_a_ready_app() {
        assert_eq!(admit(&Phase::Starting, 10, 10), Admit::Busy);
        assert_eq!(admit(&Phase::Stopped, 10, 10), Admit::Busy);
        assert_eq!(admit(&Phase::Ready, 1000, 10), Admit::Forward);
        // A queue of 0 holds nothing: cold requests are all turned away.
        assert_eq!(admit(&Phase::Stopped, 0, 0), Admit::Busy);
    }
}
