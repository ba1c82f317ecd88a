//! Read-ahead of chunks for daemon-served chunked files.
//!
//! A cold sequential read through the mount would otherwise wait for one
//! chunk fetch after another. Each open file keeps an [`AheadPlan`], which
//! decides from the READs it sees which chunks a sequential reader needs
//! next; the mount's [`ReadAhead`] makes those local in the background, a
//! bounded number at a time. It only asks the slave to fetch (the same
//! `HEAD` a READ sends, so the slave verifies every chunk before storing
//! it); READs still read the chunk files themselves and report their own
//! errors, so read-ahead never changes what a READ returns.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use elton_proto::ObjectId;

use super::lower::LowerSource;

/// How many chunks past a sequential READ are made local ahead of it, and
/// how many such fetches a mount runs at once. Chunks average 1 MiB, so
/// this keeps about 8 MiB in flight: enough to hide the round trip of a
/// fetch through the master (the HTTP path, which streams instead, keeps
/// 16 in flight), while a reader that stops early has pulled at most 8
/// chunks (at most 32 MiB) it did not ask for.
pub const READ_AHEAD_CHUNKS: usize = 8;

/// How far a READ may start from where the previous READ on the same open
/// file ended and still count as sequential. The kernel's own read-ahead
/// sends the READs of one sequential stream asynchronously (128 KiB each
/// by default, up to 1 MiB) and several FUSE threads serve them, so they
/// arrive slightly out of order; two random READs rarely land this close
/// in a file large enough to be chunked.
const SEQUENTIAL_SLACK: u64 = 1 << 20;

/// One open file's read-ahead decisions: pure bookkeeping, no I/O.
///
/// Read-ahead happens only for a sequential pattern (a READ at the start of
/// the file, or one that continues near where the previous one ended): a
/// random reader of a large file should move only the chunks it reads,
/// since every chunk fetched may cross a WAN link billed per byte.
#[derive(Debug, Default)]
pub struct AheadPlan {
    /// End of the previous READ.
    last_end: Option<u64>,
    /// Chunk indices already handed to read-ahead while the reader moved
    /// through them; not handed again.
    offered: Range<usize>,
}

impl AheadPlan {
    /// Records a READ of bytes `offset .. end` whose last byte lies in
    /// chunk `last` of a file of `count` chunks. Returns the chunks to make
    /// local ahead of it: the [`READ_AHEAD_CHUNKS`] after `last` (fewer at
    /// the end of the file) not handed over before; none unless the READ is
    /// sequential.
    pub fn after_read(&mut self, offset: u64, end: u64, last: usize, count: usize) -> Vec<usize> {
        let sequential = offset == 0
            || self
                .last_end
                .is_some_and(|e| offset.abs_diff(e) <= SEQUENTIAL_SLACK);
        self.last_end = Some(end);
        if !sequential {
            return Vec::new();
        }
        let from = last.saturating_add(1).min(count);
        let window = from..from.saturating_add(READ_AHEAD_CHUNKS).min(count);
        let new: Vec<usize> = window
            .clone()
            .filter(|i| !self.offered.contains(i))
            .collect();
        // Overlapping (or touching) windows merge, so a stream's window only
        // grows as it moves on; a jump elsewhere starts a new one.
        self.offered = if window.start <= self.offered.end && self.offered.start <= window.end {
            self.offered.start.min(window.start)..self.offered.end.max(window.end)
        } else {
            window
        };
        new
    }
}

/// One chunk to make local, with the source that fetches it.
struct Job {
    id: ObjectId,
    lower: Arc<dyn LowerSource>,
}

#[derive(Default)]
struct Queue {
    /// Chunks being made local, one thread each; at most
    /// [`READ_AHEAD_CHUNKS`].
    running: HashSet<ObjectId>,
    /// Chunks waiting for a free thread, oldest first; at most
    /// [`READ_AHEAD_CHUNKS`].
    waiting: VecDeque<Job>,
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mount's background chunk fetches: at most [`READ_AHEAD_CHUNKS`] run
/// at once, each chunk is requested once at a time, and the rest wait in a
/// short queue that the running threads drain. Threads exist only while
/// there is work.
#[derive(Default)]
pub struct ReadAhead {
    queue: Arc<Mutex<Queue>>,
}

/// A running fetch's place in [`Queue::running`], freed when dropped (also
/// if the fetch panics or its thread never starts).
struct Slot {
    queue: Arc<Mutex<Queue>>,
    id: ObjectId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.queue).running.remove(&self.id);
    }
}

impl ReadAhead {
    /// Starts making chunk `id` local through `lower` unless that is under
    /// way or queued already. When all threads are busy it waits in the
    /// queue; a full queue drops its oldest entry, the chunk nearest its
    /// reader, which that reader's own READ will soon fetch anyway.
    pub fn request(&self, lower: &Arc<dyn LowerSource>, id: ObjectId) {
        let job = Job {
            id,
            lower: lower.clone(),
        };
        let slot = {
            let mut q = lock(&self.queue);
            if q.running.contains(&id) || q.waiting.iter().any(|j| j.id == id) {
                return;
            }
            if q.running.len() >= READ_AHEAD_CHUNKS {
                if q.waiting.len() >= READ_AHEAD_CHUNKS {
                    q.waiting.pop_front();
                }
                q.waiting.push_back(job);
                return;
            }
            q.running.insert(id);
            Slot {
                queue: self.queue.clone(),
                id,
            }
        };
        let spawned = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || work(slot, job));
        if let Err(e) = spawned {
            // The slot went with the closure; the READ fetches the chunk.
            tracing::debug!(chunk = %id, "read-ahead thread: {e}");
        }
    }

    /// Chunks being fetched and waiting (for tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        let q = lock(&self.queue);
        q.running.len() + q.waiting.len()
    }
}

/// Runs `job`, then queued jobs while there are any.
fn work(mut slot: Slot, mut job: Job) {
    loop {
        // The READ that needs this chunk reports its own error.
        if let Err(e) = job.lower.object_path(&job.id) {
            tracing::debug!(chunk = %job.id, "read-ahead: {e}");
        }
        let queue = slot.queue.clone();
        drop(slot);
        let mut q = lock(&queue);
        if q.running.len() >= READ_AHEAD_CHUNKS {
            // Another request took the freed place meanwhile.
            return;
        }
        let Some(next) = q.waiting.pop_front() else {
            return;
        };
        q.running.insert(next.id);
        drop(q);
        slot = Slot { queue, id: next.id };
        job = next;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io;
    use std::path::PathBuf;
    use std::sync::Condvar;
    use std::time::{Duration, Instant};

    use elton_proto::{DirManifest, Recipe};

    use super::*;

    const K: usize = READ_AHEAD_CHUNKS;

    #[test]
    fn a_sequential_reader_gets_the_next_chunks_once() {
        let mut p = AheadPlan::default();
        // The start of the file is a sequential read.
        assert_eq!(
            p.after_read(0, 128 << 10, 0, 100),
            (1..=K).collect::<Vec<_>>()
        );
        // Later READs in the same chunk ask for nothing new.
        assert!(p.after_read(128 << 10, 256 << 10, 0, 100).is_empty());
        // Moving into chunk 1 adds chunk K + 1 only.
        assert_eq!(p.after_read(256 << 10, 384 << 10, 1, 100), vec![K + 1]);
        // A READ that arrived out of order (slightly behind) is still
        // sequential and adds nothing.
        assert!(p.after_read(200 << 10, 300 << 10, 1, 100).is_empty());
        // Two chunks further at once: the two after the window.
        assert_eq!(
            p.after_read(300 << 10, 500 << 10, 3, 100),
            vec![K + 2, K + 3]
        );
    }

    #[test]
    fn random_reads_get_no_read_ahead() {
        let mut p = AheadPlan::default();
        // A first READ in the middle is not sequential.
        assert!(
            p.after_read(50 << 20, (50 << 20) + 4096, 50, 100)
                .is_empty()
        );
        // A far jump is not either.
        assert!(
            p.after_read(10 << 20, (10 << 20) + 4096, 10, 100)
                .is_empty()
        );
        // Continuing where it ended is.
        assert_eq!(
            p.after_read((10 << 20) + 4096, (10 << 20) + 8192, 10, 100),
            (11..=10 + K).collect::<Vec<_>>()
        );
        // Back to the start of the file: a new window, none of it offered.
        assert_eq!(p.after_read(0, 4096, 0, 100), (1..=K).collect::<Vec<_>>());
    }

    #[test]
    fn read_ahead_stops_at_the_end_of_the_file() {
        let mut p = AheadPlan::default();
        assert_eq!(p.after_read(0, 4096, 0, 3), vec![1, 2]);
        assert!(p.after_read(4096, 8192, 2, 3).is_empty());
        let mut p = AheadPlan::default();
        assert!(p.after_read(0, 4096, 0, 1).is_empty());
    }

    /// A lower whose fetches block until released, counting how many run.
    #[derive(Default)]
    struct SlowLower {
        state: Mutex<Fetches>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct Fetches {
        running: usize,
        most: usize,
        calls: HashMap<ObjectId, usize>,
        open: bool,
    }

    impl SlowLower {
        fn open_gate(&self) {
            self.state.lock().unwrap().open = true;
            self.changed.notify_all();
        }

        fn wait_for(&self, what: &str, ok: impl Fn(&Fetches) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut s = self.state.lock().unwrap();
            while !ok(&s) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                s = self
                    .changed
                    .wait_timeout(s, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
        }
    }

    impl LowerSource for SlowLower {
        fn manifest(&self, _id: &ObjectId) -> io::Result<Arc<DirManifest>> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf> {
            let mut s = self.state.lock().unwrap();
            s.running += 1;
            s.most = s.most.max(s.running);
            *s.calls.entry(*id).or_default() += 1;
            self.changed.notify_all();
            while !s.open {
                s = self.changed.wait(s).unwrap();
            }
            s.running -= 1;
            self.changed.notify_all();
            // Errors are only logged: the queue moves on.
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn recipe(&self, _id: &ObjectId) -> io::Result<Arc<Recipe>> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn is_local(&self, _id: &ObjectId) -> bool {
            false
        }
    }

    #[test]
    fn fetches_are_bounded_deduplicated_and_drained() {
        let slow = Arc::new(SlowLower::default());
        let lower: Arc<dyn LowerSource> = slow.clone();
        let ra = ReadAhead::default();
        let ids: Vec<ObjectId> = (0..3 * K as u32)
            .map(|i| ObjectId::of(&i.to_le_bytes()))
            .collect();
        for id in &ids[..K] {
            ra.request(&lower, *id);
            ra.request(&lower, *id);
        }
        slow.wait_for("K fetches", |s| s.running == K);
        // Further requests wait; a full queue keeps the newest K.
        for id in &ids[K..] {
            ra.request(&lower, *id);
        }
        ra.request(&lower, ids[0]);
        ra.request(&lower, ids[2 * K]);
        assert_eq!(ra.pending(), 2 * K);
        slow.open_gate();
        slow.wait_for("the queue drained", |s| {
            s.running == 0 && s.calls.len() == 2 * K
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while ra.pending() > 0 {
            assert!(Instant::now() < deadline, "slots not freed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = slow.state.lock().unwrap();
        assert_eq!(s.most, K, "never more than K at once");
        assert!(s.calls.values().all(|&n| n == 1), "each chunk once");
        assert!(ids[..K].iter().all(|id| s.calls.contains_key(id)));
        assert!(ids[2 * K..].iter().all(|id| s.calls.contains_key(id)));
        assert!(!ids[K..2 * K].iter().any(|id| s.calls.contains_key(id)));
    }
}
