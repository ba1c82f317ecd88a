//! The log's newest entries, decoded, in memory.
//!
//! An entry is here from its `append` on: openraft reads an entry as soon
//! as it has asked for its append, before the log writer has made it
//! durable, so until then this is the only place to read it from. Once
//! written it stays, within a bound ([`MAX_TAIL_ENTRIES`],
//! [`MAX_TAIL_BYTES`]), because the entries read most are the ones just
//! appended: each follower's replication and the state machine read every
//! entry once right after its append. Served from here, those reads cost a
//! clone; from the control log they cost a `pread`, a record check and a
//! JSON decode on a blocking-pool thread, about 7 % of the masters' CPU
//! under load (`docs/benchmarks.md`, "Control plane").
//!
//! What is held is always a run of consecutive entries that ends at the
//! log's last entry: an append follows the log's last entry (openraft
//! truncates before it appends over a conflict, and an append replaces
//! whatever was held from its index on), a truncation cuts the end, a purge
//! and the bound cut the start. So a read whose first index is held is
//! served whole from here ([`Tail::covering`]); any other read goes to the
//! log, overlaid with what is held ([`Tail::range`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use crate::types::{Entry, LogId};

/// Most entries kept once written. A few seconds of a busy group's entries
/// (batches of requests); a follower further behind reads the log.
pub(crate) const MAX_TAIL_ENTRIES: usize = 1024;

/// Most bytes (as the control log's records) of written entries kept.
pub(crate) const MAX_TAIL_BYTES: usize = 16 << 20;

struct Held {
    entry: Entry,
    /// The entry's record length once it is durable in the log; `None`
    /// while the log writer has it queued (such an entry is never dropped
    /// for the bound: the log cannot serve it yet).
    written: Option<u64>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<u64, Held>,
    /// Sum of `written` over `entries`.
    written_bytes: u64,
}

impl Inner {
    fn drop_from(&mut self, from: u64) {
        for (_, h) in self.entries.split_off(&from) {
            self.written_bytes -= h.written.unwrap_or(0);
        }
    }

    fn drop_upto(&mut self, upto: u64) {
        let kept = self.entries.split_off(&upto.saturating_add(1));
        for h in std::mem::replace(&mut self.entries, kept).into_values() {
            self.written_bytes -= h.written.unwrap_or(0);
        }
    }

    /// Drops the oldest written entries while over a bound.
    fn trim(&mut self, max_entries: usize, max_bytes: u64) {
        while self.entries.len() > max_entries || self.written_bytes > max_bytes {
            let Some(first) = self.entries.first_entry() else {
                return;
            };
            let Some(len) = first.get().written else {
                return; // queued, and so is everything after it
            };
            first.remove();
            self.written_bytes -= len;
        }
    }
}

/// See the module documentation. Shared by the log store and its writer.
pub(crate) struct Tail {
    inner: RwLock<Inner>,
    max_entries: usize,
    max_bytes: u64,
}

impl Default for Tail {
    fn default() -> Self {
        Self::with_bounds(MAX_TAIL_ENTRIES, MAX_TAIL_BYTES)
    }
}

impl Tail {
    pub(crate) fn with_bounds(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: RwLock::default(),
            max_entries,
            max_bytes: max_bytes as u64,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries handed to the log writer (an `append`), in index order.
    pub(crate) fn insert(&self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let mut t = self.write();
        t.drop_from(first.log_id.index);
        // Not right after what is held (openraft appends after the last
        // entry, so this is not expected): what is held would no longer
        // end where the new entries begin, so start over from them.
        if t.entries
            .last_key_value()
            .is_some_and(|(i, _)| i.checked_add(1) != Some(first.log_id.index))
        {
            t.entries.clear();
            t.written_bytes = 0;
        }
        for e in entries {
            t.entries.insert(
                e.log_id.index,
                Held {
                    entry: e.clone(),
                    written: None,
                },
            );
        }
    }

    /// Entries now durable in the log, with their record lengths. An entry
    /// replaced meanwhile (truncated and appended again with another log
    /// id) stays queued.
    pub(crate) fn written(&self, records: &[(LogId, u64)]) {
        let mut t = self.write();
        for (id, len) in records {
            let Some(h) = t.entries.get_mut(&id.index) else {
                continue;
            };
            if h.entry.log_id != *id || h.written.is_some() {
                continue;
            }
            h.written = Some(*len);
            t.written_bytes += len;
        }
        t.trim(self.max_entries, self.max_bytes);
    }

    /// Drops entries at `index >= from` (a truncation).
    pub(crate) fn truncate(&self, from: u64) {
        self.write().drop_from(from);
    }

    /// Drops entries at `index <= upto` (a purge).
    pub(crate) fn purge(&self, upto: u64) {
        self.write().drop_upto(upto);
    }

    /// Every entry of `range`, when the tail holds its first index (and so
    /// everything after it; see the module documentation); `None` when the
    /// log must be read.
    pub(crate) fn covering(&self, range: (Bound<u64>, Bound<u64>)) -> Option<Vec<Entry>> {
        let start = match range.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        // `BTreeMap::range` panics on an inverted range; openraft asks for
        // none, but an empty answer is the right one.
        let empty = match range.1 {
            Bound::Included(end) => end < start,
            Bound::Excluded(end) => end <= start,
            Bound::Unbounded => false,
        };
        if empty {
            return Some(Vec::new());
        }
        let t = self.read();
        let (&first, _) = t.entries.first_key_value()?;
        if start < first {
            return None;
        }
        Some(
            t.entries
                .range(range)
                .map(|(_, h)| h.entry.clone())
                .collect(),
        )
    }

    /// What the tail holds of `range`, to overlay a read of the log.
    pub(crate) fn range(&self, range: (Bound<u64>, Bound<u64>)) -> Vec<Entry> {
        self.read()
            .entries
            .range(range)
            .map(|(_, h)| h.entry.clone())
            .collect()
    }

    /// The newest entry held (the log's last, when anything is held).
    pub(crate) fn last(&self) -> Option<LogId> {
        self.read()
            .entries
            .last_key_value()
            .map(|(_, h)| h.entry.log_id)
    }
}

#[cfg(test)]
mod tests;
