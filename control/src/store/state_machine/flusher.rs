//! Makes the state machine's applies durable in the background.
//!
//! Applies commit without an fsync, so that a write's path has none of its
//! own; until a durable commit follows, a crash takes them back and
//! openraft re-applies them from the log. With the log in its own files
//! (format 2), no log write makes the redb file durable any more, so this
//! thread does, at most [`FLUSH_EVERY`] after an apply: a crash re-applies
//! that little, as it did when the log's fsyncs covered the applies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, Durability};

use crate::error::ControlError;

/// Longest time an apply stays without a durable commit.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The flushing thread; stopping it (drop) makes the last applies durable
/// and releases the file.
pub(crate) struct Flusher {
    dirty: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: Arc<Database>) -> Result<Self, ControlError> {
        let dirty = Arc::new(AtomicBool::new(false));
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let d = dirty.clone();
        let thread = std::thread::Builder::new()
            .name("control-sm-flush".into())
            .spawn(move || {
                loop {
                    let stopping =
                        !matches!(rx.recv_timeout(FLUSH_EVERY), Err(RecvTimeoutError::Timeout));
                    if d.swap(false, Ordering::AcqRel)
                        && let Err(e) = flush(&db)
                    {
                        d.store(true, Ordering::Release);
                        tracing::warn!("control state machine: flushing applies: {e}");
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Self {
            dirty,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Notes a commit that is not durable yet.
    pub(crate) fn applied(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}

fn flush(db: &Database) -> Result<(), ControlError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
