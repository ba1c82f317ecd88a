//! When an HTTP connection of the slave's server has waited too long: the
//! deadlines of [`crate::serve`], as a pure state machine (callers pass
//! `now`; no I/O), so they are unit-tested here.
//!
//! A connection is in one of three phases:
//!
//! - **idle**: no request in flight and no byte of the next one received.
//!   It may stay so for the idle timeout, so clients can keep connections
//!   for reuse. A connection that never sent anything gets only the header
//!   timeout: a real client writes its request right after connecting.
//! - **head**: the first bytes of a request arrived, its head is not
//!   complete. The whole head must arrive within the header timeout: a
//!   client that sends a partial request line and stalls (slowloris) holds
//!   a connection no longer than that.
//! - **busy**: requests in flight (from a complete head until the response
//!   body is done or dropped). No deadline: bodies have their own (the
//!   fetch path), and a large download to a slow reader is legitimate.
//!
//! HTTP/2 connections (recognised by their preface) carry frames that are
//! not requests (settings, pings, window updates), so for them reads do not
//! start the head phase; the idle timeout alone bounds a connection without
//! open streams.
//!
//! This is stricter than hyper 1.x's own `header_read_timeout`, which is one
//! timer from the moment a connection goes idle until the next head is
//! complete: with it, the header bound and the keep-alive bound are the
//! same value (and it does not run at all while hyper-util's auto builder
//! is still reading the first bytes to pick HTTP/1 or HTTP/2).

use std::time::{Duration, Instant};

/// The HTTP/2 connection preface starts with these bytes; no HTTP/1 method
/// does.
const H2_PREFIX: &[u8] = b"PRI ";

/// The server's connection timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// From the first byte of a request (or from accept, for the first
    /// request) until its head is complete.
    pub header_read: Duration,
    /// From the end of the last response until the first byte of the next
    /// request (HTTP/1), or until the next stream (HTTP/2).
    pub idle: Duration,
}

/// 10 s for a request head: generous for any client on any network (a head
/// is a few hundred bytes), short enough that a flood of stalled
/// connections is shed quickly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// 60 s of keep-alive: longer than the master's and the mounts' pools keep
/// an unused connection, so a client never reuses one the slave is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            header_read: HEADER_READ_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// Why a connection is past its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// A request head (or the first request) did not arrive in time.
    Head,
    /// No request for the idle timeout.
    Idle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `fresh`: nothing was ever received.
    Idle {
        since: Instant,
        fresh: bool,
    },
    Head {
        since: Instant,
    },
    Busy,
}

#[derive(Debug)]
pub struct ConnClock {
    timeouts: HttpTimeouts,
    phase: Phase,
    in_flight: usize,
    /// The first bytes read, until there are enough to tell the protocol.
    prefix: Vec<u8>,
    h2: bool,
}

impl ConnClock {
    pub fn new(timeouts: HttpTimeouts, now: Instant) -> Self {
        Self {
            timeouts,
            phase: Phase::Idle {
                since: now,
                fresh: true,
            },
            in_flight: 0,
            prefix: Vec::with_capacity(H2_PREFIX.len()),
            h2: false,
        }
    }

    /// `data` was read from the client. Returns whether the deadline moved
    /// earlier (the watcher must then look again).
    pub fn bytes_read(&mut self, data: &[u8], now: Instant) -> bool {
        if data.is_empty() {
            return false;
        }
        if self.prefix.len() < H2_PREFIX.len() {
            let take = (H2_PREFIX.len() - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
            self.h2 = self.prefix.len() == H2_PREFIX.len() && self.prefix == H2_PREFIX;
        }
        match self.phase {
            // The clock of a first request (either protocol) runs from accept.
            Phase::Idle { since, fresh: true } => {
                self.phase = Phase::Head { since };
                false
            }
            Phase::Idle { .. } if !self.h2 => {
                self.phase = Phase::Head { since: now };
                true
            }
            _ => false,
        }
    }

    /// A request head was complete and handed to the router.
    pub fn request_started(&mut self) {
        self.in_flight += 1;
        self.phase = Phase::Busy;
    }

    /// A response was sent in full (or dropped).
    pub fn request_finished(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.phase = Phase::Idle {
                since: now,
                fresh: false,
            };
        }
    }

    /// When the connection expires if nothing changes; `None` while busy.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since, fresh: true } | Phase::Head { since } => {
                Some(since + self.timeouts.header_read)
            }
            Phase::Idle { since, .. } => Some(since + self.timeouts.idle),
            Phase::Busy => None,
        }
    }

    /// Whether the connection is past its deadline at `now`, and why.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        Some(match self.phase {
            Phase::Idle { fresh: false, .. } => Expired::Idle,
            _ => Expired::Head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn clock(t0: Instant) -> ConnClock {
        ConnClock::new(
            HttpTimeouts {
                header_read: 10 * S,
                idle: 60 * S,
            },
            t0,
        )
    }

    #[test]
    fn a_connection_that_sends_nothing_or_part_of_a_head_gets_the_header_timeout() {
        let t0 = Instant::now();
        let silent = clock(t0);
        assert_eq!(silent.expired(t0 + 9 * S), None);
        assert_eq!(silent.expired(t0 + 10 * S), Some(Expired::Head));

        let mut partial = clock(t0);
        assert!(!partial.bytes_read(b"GET /v1/obj", t0 + 5 * S));
        // The first head's clock runs from accept, not from its first byte.
        assert_eq!(partial.deadline(), Some(t0 + 10 * S));
        partial.bytes_read(b"ects/", t0 + 9 * S);
        assert_eq!(partial.expired(t0 + 10 * S), Some(Expired::Head));
    }

    #[test]
    fn keep_alive_waits_the_idle_timeout_then_the_next_head_gets_the_header_timeout() {
        let t0 = Instant::now();
        let mut c = clock(t0);
        c.bytes_read(b"GET / HTTP/1.1\r\n\r\n", t0);
        c.request_started();
        assert_eq!(c.deadline(), None, "no deadline while busy");
        assert_eq!(c.expired(t0 + 3600 * S), None);
        c.request_finished(t0 + 100 * S);
        assert_eq!(c.expired(t0 + 159 * S), None);
        assert_eq!(c.expired(t0 + 160 * S), Some(Expired::Idle));
        // A byte of the next request moves the deadline earlier.
        assert!(c.bytes_read(b"G", t0 + 101 * S));
        assert_eq!(c.deadline(), Some(t0 + 111 * S));
        assert_eq!(c.expired(t0 + 111 * S), Some(Expired::Head));
        // Further bytes of the same head do not extend it.
        assert!(!c.bytes_read(b"ET /", t0 + 110 * S));
        assert_eq!(c.deadline(), Some(t0 + 111 * S));
    }

    #[test]
    fn concurrent_requests_keep_the_connection_busy_until_the_last_ends() {
        let t0 = Instant::now();
        let mut c = clock(t0);
        c.bytes_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", t0);
        c.request_started();
        c.request_started();
        c.request_finished(t0 + S);
        assert_eq!(c.deadline(), None);
        c.request_finished(t0 + 2 * S);
        assert_eq!(c.deadline(), Some(t0 + 62 * S));
        // HTTP/2 control frames are not request heads.
        assert!(!c.bytes_read(b"\0\0\0\x04\x01", t0 + 3 * S));
        assert_eq!(c.deadline(), Some(t0 + 62 * S));
    }

    #[test]
    fn the_protocol_is_told_from_the_first_four_bytes_even_when_split() {
        let t0 = Instant::now();
        let mut c = clock(t0);
        c.bytes_read(b"PR", t0);
        c.bytes_read(b"I * HTTP/2.0", t0);
        assert!(c.h2);
        let mut d = clock(t0);
        d.bytes_read(b"P", t0);
        d.bytes_read(b"UT /v1/objects/x HTTP/1.1", t0);
        assert!(!d.h2);
    }
}
