//! Read-ahead for a response made of many pieces (the chunks of a chunked
//! file): pieces are fetched concurrently, each in its own task, and handed
//! out in order.
//!
//! What is in flight is bounded in bytes, not in pieces: a cold read across
//! a WAN needs about the link's bandwidth-delay product in flight (1 Gbit/s
//! at 100 ms is 12.5 MB), and chunks vary from 256 KiB to several MiB. The
//! bytes of pieces that are done but wait behind a slower earlier one count
//! too, as they sit in memory; the budget is set well above the product so
//! that such a wait does not starve the link (a count of 16 pieces, done or
//! not, left less than the product in flight a third of the time; see
//! `docs/benchmarks.md`, "Multi-cluster"). Fetches on the network are
//! bounded by count as well ([`READ_AHEAD_FETCHES`]), so that the piece the
//! consumer waits for keeps a fair share of the link.
//!
//! Memory: every piece beyond the one a response needs next takes its bytes
//! from a pool shared by the whole slave ([`ReadAheadPool`]). When the pool
//! is empty a response still fetches its next piece, one at a time, so it
//! always makes progress; the slave holds at most the pool plus one piece
//! per response.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::SlaveError;

/// Bytes one response may have in flight or waiting to be sent: several
/// times the bandwidth-delay product of 1 Gbit/s at 100 ms (12.5 MB), so a
/// slow chunk at the head does not stop the others from keeping the link
/// busy.
pub const READ_AHEAD_BYTES: u64 = 64 << 20;

/// Bytes all responses of one slave may read ahead together: four cold
/// reads at full read-ahead.
pub const READ_AHEAD_POOL_BYTES: usize = 256 << 20;

/// Fetches one response keeps on the network at once. Streams to the same
/// peer share the link about evenly, so the piece the consumer waits for
/// gets 1/n of it: with n unbounded, 64 MiB of later pieces land (and fill
/// the budget, which stops the fetching) before a 4 MiB head does. 16
/// chunks (1 MiB on average) cover the 12.5 MB product of 1 Gbit/s at
/// 100 ms, and 16 chunks of at most 4 MiB are never more than the budget.
pub const READ_AHEAD_FETCHES: usize = 16;

/// The slave-wide allowance of read-ahead bytes.
#[derive(Clone)]
pub struct ReadAheadPool(Arc<Semaphore>);

impl ReadAheadPool {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes)))
    }

    /// Bytes not taken by any response.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    fn try_take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        self.0.clone().try_acquire_many_owned(n).ok()
    }
}

impl Default for ReadAheadPool {
    fn default() -> Self {
        Self::new(READ_AHEAD_POOL_BYTES)
    }
}

/// A task that is aborted when its handle is dropped: a response whose
/// client went away stops its fetches.
struct Task<T>(JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Running<T> {
    bytes: u64,
    task: Task<Result<T, SlaveError>>,
    /// The task's result, once it finished (maybe before the pieces
    /// ahead of it).
    outcome: Option<Result<T, SlaveError>>,
    /// `None` for the piece read outside the pool.
    _permit: Option<OwnedSemaphorePermit>,
}

/// The results of `fetch` applied to each item, in the items' order, with
/// up to `budget` bytes (as given with each item) started ahead of the
/// consumer. Fetches run in their own tasks, so they progress while the
/// consumer is busy or its client is slow.
pub struct ReadAhead<I, F> {
    todo: VecDeque<(u64, I)>,
    running: VecDeque<Running<bytes::Bytes>>,
    /// Bytes of `running`.
    ahead: u64,
    budget: u64,
    /// Entries of `running` without an outcome, and their bound.
    fetching: usize,
    max_fetching: usize,
    pool: ReadAheadPool,
    fetch: F,
}

impl<I, F, Fut> ReadAhead<I, F>
where
    F: FnMut(I) -> Fut,
    Fut: Future<Output = Result<bytes::Bytes, SlaveError>> + Send + 'static,
{
    /// `items` with their sizes in bytes; at most `max_fetching` of them
    /// fetched at once. Starts the first fetches at once.
    pub fn new(
        items: impl IntoIterator<Item = (u64, I)>,
        budget: u64,
        max_fetching: usize,
        pool: ReadAheadPool,
        fetch: F,
    ) -> Self {
        let mut this = Self {
            todo: items.into_iter().collect(),
            running: VecDeque::new(),
            ahead: 0,
            budget,
            fetching: 0,
            max_fetching: max_fetching.max(1),
            pool,
            fetch,
        };
        this.fill();
        this
    }

    /// Starts pieces while they fit in the budget, the pool and the
    /// fetches allowed; the next piece the consumer needs is started in any
    /// case.
    fn fill(&mut self) {
        while let Some(&(bytes, _)) = self.todo.front() {
            let permit = if self.running.is_empty() {
                None
            } else if self.ahead + bytes > self.budget || self.fetching >= self.max_fetching {
                return;
            } else {
                match self.pool.try_take(bytes) {
                    Some(p) => Some(p),
                    None => return,
                }
            };
            let Some((_, item)) = self.todo.pop_front() else {
                return;
            };
            let task = Task(tokio::spawn((self.fetch)(item)));
            self.ahead += bytes;
            self.fetching += 1;
            self.running.push_back(Running {
                bytes,
                task,
                outcome: None,
                _permit: permit,
            });
        }
    }

    /// Collects the outcomes of finished fetches (in any order), which frees
    /// their network slots; the unfinished ones wake `cx` when they finish.
    fn collect(&mut self, cx: &mut Context<'_>) {
        for r in self.running.iter_mut().filter(|r| r.outcome.is_none()) {
            if let Poll::Ready(joined) = Pin::new(&mut r.task.0).poll(cx) {
                r.outcome = Some(
                    joined.unwrap_or_else(|e| Err(SlaveError::Io(format!("read-ahead task: {e}")))),
                );
                self.fetching -= 1;
            }
        }
    }
}

impl<I, F, Fut> Stream for ReadAhead<I, F>
where
    I: Unpin,
    F: FnMut(I) -> Fut + Unpin,
    Fut: Future<Output = Result<bytes::Bytes, SlaveError>> + Send + 'static,
{
    type Item = Result<bytes::Bytes, SlaveError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.collect(cx);
        // Slots freed by pieces that finished out of order go to the
        // network now; the new fetches are polled so that they wake us too.
        let before = this.running.len();
        this.fill();
        if this.running.len() > before {
            this.collect(cx);
        }
        let item = match this.running.front_mut() {
            None => return Poll::Ready(None),
            Some(head) => match head.outcome.take() {
                None => return Poll::Pending,
                Some(item) => item,
            },
        };
        if let Some(done) = this.running.pop_front() {
            this.ahead -= done.bytes;
        }
        if item.is_err() {
            // What follows an error is never served; stop fetching it.
            this.todo.clear();
            this.running.clear();
            this.ahead = 0;
            this.fetching = 0;
        } else {
            // Before handing the piece out: the freed budget goes to the
            // network at once, not after the consumer's next poll.
            let before = this.running.len();
            this.fill();
            if this.running.len() > before {
                this.collect(cx);
            }
        }
        Poll::Ready(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    const MIB: u64 = 1 << 20;

    /// Fetches that record how many bytes are started and not yet handed
    /// out, the most ever, and wait for a signal before finishing piece 0.
    #[derive(Clone, Default)]
    struct Probe {
        outstanding: Arc<AtomicU64>,
        most: Arc<AtomicU64>,
        release_head: Arc<Notify>,
        started: Arc<Mutex<Vec<usize>>>,
    }

    impl Probe {
        fn fetch(&self) -> impl FnMut((usize, u64)) -> BoxFut + Unpin + use<> {
            let p = self.clone();
            move |(i, len)| {
                let p = p.clone();
                Box::pin(async move {
                    let now = p.outstanding.fetch_add(len, Ordering::SeqCst) + len;
                    p.most.fetch_max(now, Ordering::SeqCst);
                    p.started.lock().unwrap().push(i);
                    if i == 0 {
                        p.release_head.notified().await;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok(Bytes::from(vec![i as u8; len as usize]))
                })
            }
        }

        fn handed_out(&self, b: &Bytes) {
            self.outstanding.fetch_sub(b.len() as u64, Ordering::SeqCst);
        }
    }

    type BoxFut = Pin<Box<dyn Future<Output = Result<Bytes, SlaveError>> + Send>>;

    fn pieces(sizes: &[u64]) -> Vec<(u64, (usize, u64))> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, (i, s)))
            .collect()
    }

    async fn wait_started(p: &Probe, n: usize) {
        for _ in 0..500 {
            if p.started.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_slow_head_does_not_stop_the_rest_up_to_the_byte_budget() {
        let p = Probe::default();
        // 1 MiB chunks: the production budget keeps 64 of them going while
        // the first one is late (16, before, done or not).
        let mut s = ReadAhead::new(
            pieces(&[MIB; 200]),
            READ_AHEAD_BYTES,
            READ_AHEAD_FETCHES,
            ReadAheadPool::default(),
            p.fetch(),
        );
        // The consumer waits on the stream, as a response body does.
        let consumer = p.clone();
        let reader = tokio::spawn(async move {
            let mut next = 0usize;
            while let Some(b) = s.next().await {
                let b = b.unwrap();
                assert_eq!(b[0], next as u8, "in order");
                next += 1;
                consumer.handed_out(&b);
            }
            next
        });
        wait_started(&p, 64).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.started.lock().unwrap().len(), 64);
        assert_eq!(p.most.load(Ordering::SeqCst), READ_AHEAD_BYTES);
        p.release_head.notify_one();
        assert_eq!(reader.await.unwrap(), 200);
        assert!(p.most.load(Ordering::SeqCst) <= READ_AHEAD_BYTES);
    }

    #[tokio::test]
    async fn bytes_not_pieces_bound_the_read_ahead() {
        let p = Probe::default();
        // 4 MiB chunks: 16 of them fill the budget, a 17th would not fit.
        let _s = ReadAhead::new(
            pieces(&[4 * MIB; 40]),
            READ_AHEAD_BYTES,
            READ_AHEAD_FETCHES,
            ReadAheadPool::default(),
            p.fetch(),
        );
        wait_started(&p, 16).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.started.lock().unwrap().len(), 16);
    }

    #[tokio::test]
    async fn at_most_the_allowed_fetches_are_on_the_network_at_once() {
        let started = Arc::new(AtomicU64::new(0));
        let st = started.clone();
        let mut s = ReadAhead::new(
            (0..100).map(|i| (256 << 10, i)),
            READ_AHEAD_BYTES,
            READ_AHEAD_FETCHES,
            ReadAheadPool::default(),
            move |i: u64| {
                st.fetch_add(1, Ordering::SeqCst);
                async move {
                    // The head is late; the others finish and free their slots.
                    let wait = if i == 0 { 200 } else { 1 };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    Ok(Bytes::from(vec![0u8; 256 << 10]))
                }
            },
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(started.load(Ordering::SeqCst), READ_AHEAD_FETCHES as u64);
        let mut n = 0;
        while let Some(b) = s.next().await {
            b.unwrap();
            n += 1;
            if n == 1 {
                // While the head was late, the pieces that finished were
                // replaced up to the byte budget (polling collects them).
                let ahead = started.load(Ordering::SeqCst);
                assert!(ahead > READ_AHEAD_FETCHES as u64, "{ahead}");
            }
        }
        assert_eq!(n, 100);
    }

    #[tokio::test]
    async fn an_empty_pool_still_lets_each_response_fetch_its_next_piece() {
        let pool = ReadAheadPool::new(3 * MIB as usize);
        let a = Probe::default();
        let b = Probe::default();
        let mut sa = ReadAhead::new(
            pieces(&[MIB; 8]),
            READ_AHEAD_BYTES,
            16,
            pool.clone(),
            a.fetch(),
        );
        wait_started(&a, 4).await;
        // One outside the pool, three from it.
        assert_eq!(a.started.lock().unwrap().len(), 4);
        assert_eq!(pool.available(), 0);
        let mut sb = ReadAhead::new(
            pieces(&[MIB; 3]),
            READ_AHEAD_BYTES,
            16,
            pool.clone(),
            b.fetch(),
        );
        b.release_head.notify_one();
        let mut got = 0;
        while let Some(r) = sb.next().await {
            r.unwrap();
            got += 1;
        }
        assert_eq!(got, 3, "b finished one piece at a time");
        a.release_head.notify_one();
        while let Some(r) = sa.next().await {
            r.unwrap();
        }
        assert_eq!(pool.available(), 3 * MIB as usize, "every byte returned");
    }

    #[tokio::test]
    async fn an_error_ends_the_fetching_and_a_drop_aborts_it() {
        let pool = ReadAheadPool::new(64 * MIB as usize);
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let fetch = move |i: usize| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if i == 1 {
                    Err(SlaveError::Transfer("cut".into()))
                } else {
                    tokio::time::sleep(Duration::from_secs(if i == 0 { 0 } else { 3600 })).await;
                    Ok(Bytes::from_static(b"x"))
                }
            }
        };
        let mut s = ReadAhead::new((0..10).map(|i| (MIB, i)), 4 * MIB, 16, pool.clone(), fetch);
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none(), "nothing after an error");
        assert_eq!(pool.available(), 64 * MIB as usize);
        let started = calls.load(Ordering::SeqCst);
        assert_eq!(started, 5, "4 at first, 1 after the first piece");

        // Dropped mid-way: the fetches in flight are aborted.
        let pool = ReadAheadPool::new(64 * MIB as usize);
        let s = ReadAhead::new(
            (0..10).map(|i| (MIB, i + 2)),
            4 * MIB,
            16,
            pool.clone(),
            |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Bytes::new())
            },
        );
        assert_eq!(pool.available(), 61 * MIB as usize);
        drop(s);
        assert_eq!(pool.available(), 64 * MIB as usize);
    }
}
