//! Writes the state machine's applies to its file in the background.
//!
//! Applies change only memory, so that a write's path has no file work of
//! its own; until a flush follows, a crash takes them back and openraft
//! re-applies them from the log. This thread flushes ([`Persister::flush`])
//! every [`FLUSH_EVERY`]: a crash re-applies that little.

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Persister;
use crate::error::ControlError;

/// Longest time an apply stays without a durable commit. Each commit costs
/// a redb transaction and an `fdatasync` beside the control log's own: at
/// 50 ms the flusher was 8.8 % of the masters' CPU under load, 4.7 % in the
/// commits alone, which now come five times less often (`docs/benchmarks.md`,
/// "Control plane", runs 17-19); a crash still re-applies only a fraction
/// of a second of the log.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The flushing thread; stopping it (drop) makes the last applies durable
/// and releases the file.
pub(crate) struct Flusher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(persister: Arc<Persister>) -> Result<Self, ControlError> {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("control-sm-flush".into())
            .spawn(move || {
                loop {
                    let stopping =
                        !matches!(rx.recv_timeout(FLUSH_EVERY), Err(RecvTimeoutError::Timeout));
                    // A failed flush keeps its rows owed; the next tries again.
                    if let Err(e) = persister.flush() {
                        tracing::warn!("control state machine: writing applies: {e}");
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
