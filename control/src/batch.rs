//! Pure part of the leader's write batching: which queued client requests
//! share the next log entry, and the entry's envelope. openraft 0.9 runs
//! one `append` (one fsync) per `client_write`, one after the other; the
//! batcher ([`crate::batcher`]) turns the requests that queue up while an
//! entry is in flight into one entry, as etcd does.

use crate::command::{BATCH_VERSION, Command, Request, RequestId};
use crate::types::NodeId;

/// Bounds of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most requests in one entry.
    pub max_requests: usize,
    /// Most encoded request bytes in one entry (one request above it still
    /// goes alone).
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_requests: 256,
            // Well under the transport's message limit, so one
            // AppendEntries of a few batches stays small.
            max_bytes: 1 << 20,
        }
    }
}

/// Whether a command may share a log entry. `Execute` and `Limit` take the
/// entry's index as their id, so each needs an entry of its own; a batch
/// is never nested.
pub fn batchable(command: &Command) -> bool {
    !matches!(
        command,
        Command::Execute { .. } | Command::Limit { .. } | Command::Batch { .. }
    )
}

/// How many requests from the front of the queue go into the next entry,
/// given each one's (batchable, encoded bytes): at least one when the
/// queue is not empty; an unbatchable request goes alone, and ends the
/// batch before it (requests keep their arrival order).
pub fn take(queue: &[(bool, usize)], limits: BatchLimits) -> usize {
    let Some(&(first_ok, first_bytes)) = queue.first() else {
        return 0;
    };
    if !first_ok {
        return 1;
    }
    let mut bytes = first_bytes;
    let mut n = 1;
    for &(ok, size) in &queue[1..] {
        if !ok || n >= limits.max_requests || bytes.saturating_add(size) > limits.max_bytes {
            break;
        }
        bytes += size;
        n += 1;
    }
    n
}

/// Whether leader `me` may write a `batch` entry now: every other member
/// (voter or learner) of `members` has said, in its latest answer, that it
/// reads [`BATCH_VERSION`] (`reads`; `None`: it has not answered this
/// leader yet). A member of an earlier build says nothing and cannot read a
/// batch, so one such member, or one not heard from, holds batching off:
/// requests then go one per entry, as that build wrote them.
pub fn may_batch(
    members: impl IntoIterator<Item = NodeId>,
    me: NodeId,
    reads: impl Fn(NodeId) -> Option<u32>,
) -> Result<(), NodeId> {
    every_member_reads(members, me, BATCH_VERSION, reads)
}

/// Whether leader `me` may write an entry of command `version`: every
/// other member of `members` has said it reads it (as [`may_batch`]).
/// Version 1 needs nobody's word: every build reads it.
pub fn every_member_reads(
    members: impl IntoIterator<Item = NodeId>,
    me: NodeId,
    version: u32,
    reads: impl Fn(NodeId) -> Option<u32>,
) -> Result<(), NodeId> {
    if version <= 1 {
        return Ok(());
    }
    for id in members {
        if id != me && reads(id).is_none_or(|v| v < version) {
            return Err(id);
        }
    }
    Ok(())
}

/// The log payload for `requests` (not empty): a single request as it is,
/// several in a [`Command::Batch`] under the batcher's own id `id` (not
/// used for exactly-once; the inner ids are).
pub fn envelope(mut requests: Vec<Request>, id: RequestId) -> Request {
    if requests.len() == 1
        && let Some(one) = requests.pop()
    {
        return one;
    }
    Request::new(id, Command::Batch { requests })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Targets;

    const LIMITS: BatchLimits = BatchLimits {
        max_requests: 3,
        max_bytes: 100,
    };

    #[test]
    fn an_empty_queue_takes_nothing_and_a_lone_request_goes_alone() {
        assert_eq!(take(&[], LIMITS), 0);
        assert_eq!(take(&[(true, 10)], LIMITS), 1);
        // Too big for the byte bound on its own: it still goes.
        assert_eq!(take(&[(true, 500), (true, 1)], LIMITS), 1);
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        assert_eq!(take(&[(true, 10); 5], LIMITS), 3);
        assert_eq!(take(&[(true, 40), (true, 40), (true, 40)], LIMITS), 2);
        assert_eq!(take(&[(true, 50), (true, 50), (true, 1)], LIMITS), 2);
    }

    #[test]
    fn an_unbatchable_request_goes_alone_and_in_order() {
        assert_eq!(take(&[(false, 10), (true, 10)], LIMITS), 1);
        assert_eq!(take(&[(true, 10), (false, 10), (true, 10)], LIMITS), 1);
        assert_eq!(take(&[(true, 10), (true, 10), (false, 10)], LIMITS), 2);
    }

    #[test]
    fn entry_bound_commands_are_not_batchable() {
        assert!(batchable(&Command::Noop));
        assert!(batchable(&Command::Put {
            key: "k".into(),
            value: "v".into()
        }));
        assert!(!batchable(&Command::Execute {
            targets: Targets::All,
            action: crate::command::Action::Echo {
                payload: String::new()
            },
            deadline_ms: 1,
        }));
        assert!(!batchable(&Command::Batch { requests: vec![] }));
    }

    #[test]
    fn batches_wait_until_every_member_reads_them() {
        let reads = |known: &'static [(NodeId, u32)]| {
            move |id: NodeId| known.iter().find(|(k, _)| *k == id).map(|(_, v)| *v)
        };
        // The leader itself needs no word; a one-member group batches.
        assert_eq!(may_batch([1], 1, reads(&[])), Ok(()));
        assert_eq!(
            may_batch([1, 2, 3, 7], 1, reads(&[(2, 2), (3, 2), (7, 3)])),
            Ok(())
        );
        // A learner of an earlier build (version 1) holds it off, and so
        // does a member not heard from yet.
        assert_eq!(
            may_batch([1, 2, 3, 7], 1, reads(&[(2, 2), (3, 2), (7, 1)])),
            Err(7)
        );
        assert_eq!(may_batch([1, 2, 3], 1, reads(&[(2, 2)])), Err(3));
    }

    #[test]
    fn a_newer_command_waits_for_every_member_to_read_it() {
        let reads = |known: &'static [(NodeId, u32)]| {
            move |id: NodeId| known.iter().find(|(k, _)| *k == id).map(|(_, v)| *v)
        };
        // Version 1: every build reads it, heard from or not.
        assert_eq!(every_member_reads([1, 2], 1, 1, reads(&[])), Ok(()));
        assert_eq!(
            every_member_reads([1, 2, 3], 1, 3, reads(&[(2, 3), (3, 2)])),
            Err(3)
        );
        assert_eq!(
            every_member_reads([1, 2, 3], 1, 3, reads(&[(2, 3), (3, 4)])),
            Ok(())
        );
        // A one-member group needs nobody's word.
        assert_eq!(every_member_reads([1], 1, 3, reads(&[])), Ok(()));
    }

    #[test]
    fn one_request_is_its_own_envelope() {
        let id = |seq| RequestId {
            client: "c".into(),
            seq,
        };
        let one = Request::new(id(1), Command::Noop);
        assert_eq!(envelope(vec![one.clone()], id(9)), one);
        let two = Request::new(id(2), Command::Noop);
        let e = envelope(vec![one.clone(), two.clone()], id(9));
        assert_eq!(e.id, id(9));
        assert_eq!(
            e.command,
            Command::Batch {
                requests: vec![one, two]
            }
        );
    }
}
