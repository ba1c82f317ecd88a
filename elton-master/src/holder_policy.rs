//! When the master gives up on a holder during a transfer, which holder it
//! asks next, and what answer it accepts from it. Pure: no I/O, no clock
//! (callers pass elapsed times), so every rule is unit-tested here and
//! [`crate::fetch`] only applies them.
//!
//! Why deadlines at all: a holder that answers headers, announces a large
//! body and then trickles it would otherwise hold the reader for as long as
//! it likes, although a healthy copy may sit on the next node. The two
//! deadlines bound that: the *first-byte* deadline covers connect and
//! response headers, the *progress* deadline is a minimum rate measured
//! over a window (so it tolerates jitter but not a trickle).

use std::time::Duration;

use elton_proto::NodeId;

/// Connect plus response headers of one holder request. A local holder
/// answers in milliseconds; 5 s leaves room for a busy disk or a GC pause
/// without letting a dead or stalled node hold a read for long.
pub const FIRST_BYTE: Duration = Duration::from_secs(5);
/// Window of the progress deadline.
pub const PROGRESS_WINDOW: Duration = Duration::from_secs(3);
/// Bytes a holder must deliver per window (or the rest of the body, if
/// less): about 85 KiB/s, far below any working in-cluster link, far above
/// a trickle.
pub const PROGRESS_BYTES: u64 = 256 << 10;

/// The deadlines of holder reads; [`Default`] is the documented constants,
/// tests use shorter ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderPolicy {
    pub first_byte: Duration,
    pub window: Duration,
    pub window_bytes: u64,
}

impl Default for HolderPolicy {
    fn default() -> Self {
        Self {
            first_byte: FIRST_BYTE,
            window: PROGRESS_WINDOW,
            window_bytes: PROGRESS_BYTES,
        }
    }
}

/// A live holder that may serve a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub http_addr: String,
    /// Failed reads from this node since its last inventory resync.
    pub recent_failures: u64,
}

/// What a holder answered to a request for the bytes from `offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<&'a str>,
}

/// The holders a transfer may still try, in the order it tries them.
#[derive(Debug)]
pub struct Failover {
    order: Vec<Candidate>,
    next: usize,
}

impl Failover {
    /// Nodes that failed recently are asked last, so one bad node does not
    /// cost every read its deadline; among equals, node-id order keeps the
    /// choice deterministic (and spreads nothing: reads of one object go to
    /// the same node, which keeps that node's page cache warm).
    pub fn new(mut candidates: Vec<Candidate>) -> Self {
        candidates.sort_by(|a, b| (a.recent_failures, &a.node).cmp(&(b.recent_failures, &b.node)));
        Self {
            order: candidates,
            next: 0,
        }
    }

    /// The next holder to try; each is tried at most once per transfer.
    pub fn next_holder(&mut self) -> Option<&Candidate> {
        let c = self.order.get(self.next)?;
        self.next += 1;
        Some(c)
    }
}

impl HolderPolicy {
    /// Checks a holder's answer to a request for bytes `offset..` of an
    /// object. `size` is the size announced by the first holder (`None`
    /// while there was none): every later holder must agree with it.
    /// Returns the object's size.
    pub fn accept(
        &self,
        answer: Answer<'_>,
        offset: u64,
        size: Option<u64>,
    ) -> Result<u64, String> {
        if offset == 0 {
            if answer.status != 200 {
                return Err(format!("HTTP {}", answer.status));
            }
            let len = answer
                .content_length
                .ok_or_else(|| "no Content-Length".to_string())?;
            return match size {
                Some(s) if s != len => Err(format!("announces {len} bytes, not {s}")),
                _ => Ok(len),
            };
        }
        // Resuming: only the exact remainder will do, or the requester
        // would receive duplicated or missing bytes.
        let size = size.ok_or_else(|| "resuming without a known size".to_string())?;
        if answer.status != 206 {
            return Err(format!(
                "HTTP {} to a Range request (206 expected)",
                answer.status
            ));
        }
        let want = format!("bytes {offset}-{}/{size}", size.saturating_sub(1));
        match answer.content_range {
            Some(r) if r.trim() == want => {}
            other => return Err(format!("Content-Range {other:?}, expected {want:?}")),
        }
        match answer.content_length {
            Some(n) if n != size - offset => Err(format!(
                "Content-Length {n} for a remainder of {} bytes",
                size - offset
            )),
            _ => Ok(size),
        }
    }

    /// The progress deadline of a body of which `remaining` bytes are due.
    pub fn progress(&self, remaining: u64) -> Progress {
        Progress::new(self, remaining)
    }
}

/// A holder missed its progress deadline.
#[derive(Debug, PartialEq, Eq)]
pub struct Stalled;

/// The progress deadline of one body: each successive `window_bytes` (or
/// the rest of the body, when less) must arrive within `window` of waiting
/// for the holder. Time the relay spends handing bytes on to a slow
/// requester is not counted: that is back-pressure, not the holder's fault.
#[derive(Debug)]
pub struct Progress {
    window: Duration,
    quota: u64,
    remaining: u64,
    /// Bytes still owed in the current window.
    owed: u64,
    /// Waiting time left in the current window.
    budget: Duration,
}

impl Progress {
    fn new(policy: &HolderPolicy, remaining: u64) -> Self {
        let quota = policy.window_bytes.max(1);
        Self {
            window: policy.window,
            quota,
            remaining,
            owed: quota.min(remaining),
            budget: policy.window,
        }
    }

    /// How long the next wait for the holder may last.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// `n` bytes arrived after waiting `waited` for them.
    pub fn received(&mut self, n: u64, waited: Duration) -> Result<(), Stalled> {
        self.remaining = self.remaining.saturating_sub(n);
        self.owed = self.owed.saturating_sub(n);
        self.budget = self.budget.saturating_sub(waited);
        if self.owed == 0 {
            self.owed = self.quota.min(self.remaining);
            self.budget = self.window;
            return Ok(());
        }
        if self.budget.is_zero() {
            return Err(Stalled);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HolderPolicy {
        HolderPolicy::default()
    }

    fn cand(node: &str, failures: u64) -> Candidate {
        Candidate {
            node: node.parse().unwrap(),
            http_addr: format!("{node}:80"),
            recent_failures: failures,
        }
    }

    #[test]
    fn holders_with_recent_failures_are_tried_last_each_once() {
        let mut f = Failover::new(vec![cand("c", 0), cand("a", 3), cand("b", 0), cand("d", 1)]);
        let mut seen = Vec::new();
        while let Some(c) = f.next_holder() {
            seen.push(c.node.to_string());
        }
        assert_eq!(seen, ["b", "c", "d", "a"]);
        assert!(f.next_holder().is_none());
    }

    #[test]
    fn a_trickle_of_a_byte_per_100ms_trips_within_the_window() {
        let mut p = policy().progress(4 << 20);
        let mut waited = Duration::ZERO;
        let tripped = loop {
            let step = Duration::from_millis(100).min(p.budget());
            waited += step;
            if p.received(1, step).is_err() {
                break waited;
            }
            assert!(waited <= PROGRESS_WINDOW, "never tripped");
        };
        assert_eq!(tripped, PROGRESS_WINDOW);
    }

    #[test]
    fn a_healthy_stream_never_trips_and_each_window_starts_afresh() {
        let mut p = policy().progress(10 << 20);
        // 64 KiB every 500 ms: 4 chunks of 64 KiB fill a window in 2 s.
        for _ in 0..160 {
            assert_eq!(p.received(64 << 10, Duration::from_millis(500)), Ok(()));
            assert!(p.budget() > Duration::ZERO);
        }
    }

    #[test]
    fn the_tail_of_a_body_owes_only_what_is_left() {
        let mut p = policy().progress(1000);
        assert_eq!(p.received(400, Duration::from_millis(2900)), Ok(()));
        assert_eq!(p.budget(), Duration::from_millis(100));
        // The rest arrives just in time: the body is complete.
        assert_eq!(p.received(600, Duration::from_millis(99)), Ok(()));
        let mut late = policy().progress(1000);
        assert_eq!(late.received(999, Duration::from_millis(1000)), Ok(()));
        assert_eq!(late.received(0, Duration::from_secs(2)), Err(Stalled));
    }

    #[test]
    fn first_answers_need_200_and_a_length() {
        let ok = Answer {
            status: 200,
            content_length: Some(10),
            content_range: None,
        };
        assert_eq!(policy().accept(ok, 0, None), Ok(10));
        assert_eq!(policy().accept(ok, 0, Some(10)), Ok(10));
        assert!(policy().accept(ok, 0, Some(11)).is_err());
        let no_len = Answer {
            content_length: None,
            ..ok
        };
        assert!(policy().accept(no_len, 0, None).is_err());
        let err = Answer { status: 503, ..ok };
        assert!(policy().accept(err, 0, None).is_err());
    }

    #[test]
    fn resumed_answers_need_the_exact_remainder() {
        let good = Answer {
            status: 206,
            content_length: Some(6),
            content_range: Some("bytes 4-9/10"),
        };
        assert_eq!(policy().accept(good, 4, Some(10)), Ok(10));
        assert_eq!(
            policy().accept(
                Answer {
                    content_length: None,
                    ..good
                },
                4,
                Some(10)
            ),
            Ok(10)
        );
        for bad in [
            // the whole object instead of the remainder
            Answer {
                status: 200,
                content_length: Some(10),
                content_range: None,
            },
            Answer {
                content_range: Some("bytes 3-9/10"),
                ..good
            },
            Answer {
                content_range: Some("bytes 4-9/11"),
                ..good
            },
            Answer {
                content_range: None,
                ..good
            },
            Answer {
                content_length: Some(7),
                ..good
            },
        ] {
            assert!(policy().accept(bad, 4, Some(10)).is_err(), "{bad:?}");
        }
        assert!(policy().accept(good, 4, None).is_err());
    }
}
