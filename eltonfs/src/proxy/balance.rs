//! Which instance gets a request (pure): the one with the fewest requests
//! in flight, local before remote on a tie (no network hop), then the
//! first listed, so equal instances take turns as their counts change.

/// A candidate instance: requests in flight on it now, and whether it
/// runs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub in_flight: usize,
    pub local: bool,
}

/// The index of the chosen candidate; `None` when there is none.
pub fn pick(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(i, c)| (c.in_flight, !c.local, *i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(in_flight: usize, local: bool) -> Candidate {
        Candidate { in_flight, local }
    }

    #[test]
    fn the_least_busy_wins_and_local_breaks_ties() {
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[c(3, true), c(1, false), c(2, true)]), Some(1));
        assert_eq!(pick(&[c(1, false), c(1, true)]), Some(1));
        assert_eq!(pick(&[c(0, true), c(0, true)]), Some(0));
    }
}
