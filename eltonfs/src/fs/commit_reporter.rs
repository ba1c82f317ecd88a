//! Sends a commit's progress to the client that asked for it. The commit
//! only bumps counters (it holds the mount's lock and must never wait on a
//! client); a separate thread samples them and writes the lines, so a slow
//! or vanished client cannot slow the commit down or fail it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::commit_progress::{CommitProgress, Phase, encode_progress};

/// How often a changed count is sent (a phase change is sent at once).
const EVERY: Duration = Duration::from_millis(100);

/// What the commit has done so far; cheap to bump from the commit's loop.
#[derive(Default)]
pub struct Counters {
    phase: AtomicU8,
    total_files: AtomicU64,
    files: AtomicU64,
    dirs: AtomicU64,
    new_objects: AtomicU64,
    bytes: AtomicU64,
    /// Wakes the reporting thread; taken (dropped) to stop it.
    wake: Mutex<Option<Sender<()>>>,
}

impl Counters {
    /// Counters that nobody reads (a client that did not ask for progress).
    pub fn silent() -> Counters {
        Counters::default()
    }

    pub fn set_phase(&self, phase: Phase, total_files: u64) {
        self.total_files.store(total_files, Ordering::Relaxed);
        // Release: whoever sees the new phase also sees every count bumped
        // before it (a `publishing` report has all files done).
        self.phase.store(phase.as_u8(), Ordering::Release);
        if let Some(w) = self.wake.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = w.send(());
        }
    }

    /// One file of the upper committed; `new` when its object was not in
    /// the store before.
    pub fn file(&self, bytes: u64, new: bool) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if new {
            self.new_objects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A file that is not committed (a FIFO, socket or device) or a
    /// symlink (kept in its manifest): done, no content.
    pub fn entry(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    /// Objects stored besides whole files (chunks, recipes, manifests).
    pub fn objects(&self, n: u64) {
        self.new_objects.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dir(&self) {
        self.dirs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CommitProgress {
        // The phase is read first (Acquire; see `set_phase`).
        CommitProgress {
            phase: Phase::from_u8(self.phase.load(Ordering::Acquire)),
            total_files: self.total_files.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            dirs: self.dirs.load(Ordering::Relaxed),
            new_objects: self.new_objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// The thread writing progress lines to one client.
pub struct Reporter {
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting to `conn`; the first line (scanning) goes out at once.
    pub fn start(conn: &UnixStream) -> std::io::Result<Reporter> {
        let mut conn = conn.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters {
            wake: Mutex::new(Some(tx)),
            ..Counters::default()
        });
        // Sent before the commit starts, so the client always learns first
        // that it is scanning.
        let first = counters.snapshot();
        conn.write_all(&encode_progress(&first))?;
        let c = counters.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = Some(first);
            let mut outcome = Ok(());
            loop {
                let now = c.snapshot();
                if sent != Some(now) {
                    if conn.write_all(&encode_progress(&now)).is_err() {
                        // The client went away: the commit goes on.
                        return;
                    }
                    sent = Some(now);
                }
                if outcome == Err(RecvTimeoutError::Disconnected) {
                    return;
                }
                outcome = rx.recv_timeout(EVERY);
            }
        });
        Ok(Reporter {
            counters,
            thread: Some(thread),
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sends what is left and waits for the thread, so that the final
    /// answer follows every progress line on the socket.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Dropping the only sender ends the thread's loop after one last
        // sample.
        self.counters
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop();
    }
}
