//! The control log: openraft's entries, vote, committed id and purge
//! point in append-only segment files (`<name>.wal/`, format in
//! `docs/formats.md` §12.2a), one `write` and one `fdatasync` per batch.
//!
//! It replaced a redb transaction per append (format 1 of the store): on
//! the control plane's write path, redb's copy-on-write pages, page cache
//! and B-tree upkeep for every append were about a quarter of the masters'
//! CPU (`docs/benchmarks.md`, "Control plane"), for data that is only ever
//! appended, cut at the tail, purged at the head and read by index — what
//! etcd's WAL does with a file.
//!
//! What is known is kept in memory ([`Tables`]: each live entry's location,
//! the vote, committed and purge ids); entries are read back from the files
//! with `pread`. Every segment starts with the vote, committed and purge
//! ids as they were when it was created, so the segments before the first
//! live entry can be deleted without losing them.

mod record;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use record::{HEADER_LEN, Kind, Stop};

use super::log_store::{decode, encode};
use crate::error::ControlError;
use crate::types::{Entry, LogId, Vote};

/// A segment is closed and a new one started once it is this long.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Where a live entry's record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    /// Start of the record (its head).
    at: u64,
    /// Length of the whole record.
    len: u64,
    log_id: LogId,
}

/// One change to the log, as a record says it or a write makes it.
pub(crate) enum Change<'a> {
    Entry(&'a Entry),
    Truncate(u64),
    Purged(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

/// The log as the records describe it.
#[derive(Default)]
struct Tables {
    entries: BTreeMap<u64, Loc>,
    /// Open read handles by segment number; a deleted segment's handle
    /// stays readable for a read under way.
    segments: BTreeMap<u64, Arc<File>>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

impl Tables {
    /// Applies one change; `at` locates an entry's record.
    fn apply(&mut self, change: &Change<'_>, at: Option<(u64, u64, u64)>) {
        match change {
            Change::Entry(e) => {
                let index = e.log_id.index;
                // Below the purge point an entry is history, and must not
                // cut the live log.
                if self.purged.is_some_and(|p| index <= p.index) {
                    return;
                }
                // An entry replaces whatever the log held from its index on
                // (openraft truncates first; this keeps the map a log even
                // if it did not).
                self.entries.split_off(&index);
                if let Some((seg, at, len)) = at {
                    self.entries.insert(
                        index,
                        Loc {
                            seg,
                            at,
                            len,
                            log_id: e.log_id,
                        },
                    );
                }
            }
            Change::Truncate(from) => {
                self.entries.split_off(from);
            }
            Change::Purged(upto) => {
                if self.purged.is_none_or(|p| upto.index >= p.index) {
                    self.purged = Some(*upto);
                }
                self.entries = self.entries.split_off(&upto.index.saturating_add(1));
            }
            Change::Vote(v) => self.vote = Some(*v),
            Change::Committed(c) => self.committed = *c,
        }
    }

    /// The oldest segment still needed: the one holding the first live
    /// entry (live entries lie in segments in index order), else `current`.
    fn first_needed(&self, current: u64) -> u64 {
        self.entries
            .first_key_value()
            .map_or(current, |(_, l)| l.seg.min(current))
    }
}

/// The log's shared half: what readers see. Writes go through the single
/// [`Appender`].
pub(crate) struct Wal {
    dir: PathBuf,
    tables: RwLock<Tables>,
}

/// The writer's half: the segment being appended to. Owned by the log
/// writer thread.
pub(crate) struct Appender {
    file: File,
    seq: u64,
    len: u64,
    /// [`SEGMENT_BYTES`]; smaller in tests.
    segment_bytes: u64,
    /// Set when a write or flush failed: what is on disk after a failed
    /// `fdatasync` is unknown, so nothing more is written until a restart
    /// replays the files.
    failed: Option<String>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn sync_dir(dir: &Path) -> Result<(), ControlError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> ControlError {
    ControlError::Storage(format!("{what}: {e}"))
}

/// Encodes a change as its record, appended to `out`; returns the record's
/// start and length in `out`.
fn encode_change(out: &mut Vec<u8>, change: &Change<'_>) -> Result<(usize, usize), ControlError> {
    let start = out.len();
    match change {
        Change::Entry(e) => record::encode(out, Kind::Entry, &encode(e)?)?,
        Change::Truncate(from) => record::encode(out, Kind::Truncate, &from.to_le_bytes())?,
        Change::Purged(p) => record::encode(out, Kind::Purged, &encode(p)?)?,
        Change::Vote(v) => record::encode(out, Kind::Vote, &encode(v)?)?,
        Change::Committed(c) => record::encode(out, Kind::Committed, &encode(c)?)?,
    };
    Ok((start, out.len() - start))
}

/// A new segment's first bytes: the header and the state it starts from.
fn segment_start(t: &Tables) -> Result<Vec<u8>, ControlError> {
    let mut out = record::header().to_vec();
    if let Some(v) = t.vote {
        encode_change(&mut out, &Change::Vote(v))?;
    }
    encode_change(&mut out, &Change::Committed(t.committed))?;
    if let Some(p) = t.purged {
        encode_change(&mut out, &Change::Purged(p))?;
    }
    Ok(out)
}

/// Writes a complete segment `seq` holding `bytes` under `dir`: first as a
/// temporary file, synced, then renamed into place and the directory
/// synced, so a crash leaves the whole segment or none of it.
fn write_segment(dir: &Path, seq: u64, bytes: &[u8]) -> Result<File, ControlError> {
    let name = segment_name(seq);
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(&name);
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io(tmp.display(), e))?;
        f.write_all_at(bytes, 0).map_err(|e| io(tmp.display(), e))?;
        f.sync_all().map_err(|e| io(tmp.display(), e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| io(path.display(), e))?;
    sync_dir(dir)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io(path.display(), e))
}

impl Wal {
    /// Creates an empty log in `dir` (which must not hold one), with the
    /// given starting state and entries (a migration from format 1), then
    /// makes the directory itself durable.
    pub(crate) fn create(
        dir: &Path,
        vote: Option<Vote>,
        committed: Option<LogId>,
        purged: Option<LogId>,
        entries: &[Entry],
    ) -> Result<(), ControlError> {
        fs::create_dir(dir).map_err(|e| io(dir.display(), e))?;
        let t = Tables {
            vote,
            committed,
            purged,
            ..Tables::default()
        };
        let mut bytes = segment_start(&t)?;
        for e in entries {
            encode_change(&mut bytes, &Change::Entry(e))?;
        }
        write_segment(dir, 1, &bytes)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Whether `dir` holds any segment (a log to be careful with).
    pub(crate) fn exists(dir: &Path) -> Result<bool, ControlError> {
        match fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e?;
                    if parse_segment_name(&e.file_name().to_string_lossy()).is_some() {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(dir.display(), e)),
        }
    }

    /// Replays the log in `dir`. A record cut short at the end of the last
    /// segment is a write that never finished (never acknowledged: its
    /// `fdatasync` did not return) and is cut off; anything else that does
    /// not read back is an error, never skipped.
    pub(crate) fn open(dir: &Path) -> Result<(Arc<Self>, Appender), ControlError> {
        let mut seqs = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| io(dir.display(), e))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(seq) = parse_segment_name(&name) {
                seqs.push(seq);
            } else if name.ends_with(".seg.tmp") {
                // A segment whose creation did not finish; never used.
                fs::remove_file(e.path()).map_err(|err| io(e.path().display(), err))?;
            }
        }
        seqs.sort_unstable();
        let Some(&last) = seqs.last() else {
            return Err(ControlError::Corrupt(format!(
                "control log {} has no segment",
                dir.display()
            )));
        };
        let mut t = Tables::default();
        let mut appender = None;
        for &seq in &seqs {
            let path = dir.join(segment_name(seq));
            let file = OpenOptions::new()
                .read(true)
                .write(seq == last)
                .open(&path)
                .map_err(|e| io(path.display(), e))?;
            let bytes = fs::read(&path).map_err(|e| io(path.display(), e))?;
            record::check_header(&bytes)
                .map_err(|e| ControlError::Corrupt(format!("{}: {e}", path.display())))?;
            let end = match replay(&mut t, seq, &bytes) {
                Ok(end) => end,
                // A write cut by a crash can leave blocks of zeros where the
                // file grew but the data did not land (etcd's "torn
                // entry"); only at the end of the last segment.
                Err((at, _)) if seq == last && torn(&bytes[at..], at) => at,
                Err((at, why)) => {
                    return Err(ControlError::Corrupt(format!(
                        "{} at byte {at}: {why}",
                        path.display()
                    )));
                }
            };
            if (end as u64) < bytes.len() as u64 {
                if seq != last {
                    return Err(ControlError::Corrupt(format!(
                        "{}: a record is cut short at byte {end}, but a later segment exists",
                        path.display()
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    kept = end,
                    dropped = bytes.len() - end,
                    "control log: dropping a write that did not finish before a crash"
                );
                file.set_len(end as u64)
                    .map_err(|e| io(path.display(), e))?;
                file.sync_all().map_err(|e| io(path.display(), e))?;
            }
            let file = Arc::new(file);
            t.segments.insert(seq, file.clone());
            if seq == last {
                let f = file.try_clone().map_err(|e| io(path.display(), e))?;
                appender = Some(Appender {
                    file: f,
                    seq,
                    len: end as u64,
                    segment_bytes: SEGMENT_BYTES,
                    failed: None,
                });
            }
        }
        let appender = appender.ok_or_else(|| ControlError::Corrupt("no last segment".into()))?;
        Ok((
            Arc::new(Self {
                dir: dir.to_path_buf(),
                tables: RwLock::new(t),
            }),
            appender,
        ))
    }

    fn read_tables(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn vote(&self) -> Option<Vote> {
        self.read_tables().vote
    }

    pub(crate) fn committed(&self) -> Option<LogId> {
        self.read_tables().committed
    }

    pub(crate) fn purged(&self) -> Option<LogId> {
        self.read_tables().purged
    }

    pub(crate) fn last(&self) -> Option<LogId> {
        self.read_tables()
            .entries
            .last_key_value()
            .map(|(_, l)| l.log_id)
    }

    /// The durable entries in `range`, read back from their segments and
    /// checked (record check, and the log id the index expects).
    pub(crate) fn entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry>, ControlError> {
        let wanted: Vec<(Loc, Arc<File>)> = {
            let t = self.read_tables();
            t.entries
                .range(range)
                .map(|(_, l)| {
                    t.segments
                        .get(&l.seg)
                        .map(|f| (*l, f.clone()))
                        .ok_or_else(|| {
                            ControlError::Corrupt(format!("control log segment {} is gone", l.seg))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(wanted.len());
        // Neighbouring records of one segment are read with one `pread`.
        let mut i = 0;
        while i < wanted.len() {
            let (first, file) = &wanted[i];
            let mut j = i + 1;
            while j < wanted.len()
                && wanted[j].0.seg == first.seg
                && wanted[j].0.at == wanted[j - 1].0.at + wanted[j - 1].0.len
            {
                j += 1;
            }
            let span_end = wanted[j - 1].0.at + wanted[j - 1].0.len;
            let mut buf = vec![0u8; usize::try_from(span_end - first.at).unwrap_or(usize::MAX)];
            file.read_exact_at(&mut buf, first.at)
                .map_err(|e| io(format!("control log segment {}", first.seg), e))?;
            for (loc, _) in &wanted[i..j] {
                let from = (loc.at - first.at) as usize;
                let rec = &buf[from..from + loc.len as usize];
                let body = record::verify_at(rec, Kind::Entry)?;
                let entry: Entry = decode("log entry", body)?;
                if entry.log_id != loc.log_id {
                    return Err(ControlError::Corrupt(format!(
                        "control log: entry {} read back as {}",
                        loc.log_id, entry.log_id
                    )));
                }
                out.push(entry);
            }
            i = j;
        }
        Ok(out)
    }
}

/// Whether `tail`, which starts at byte `at` of the last segment with a
/// record that does not check, is a write a crash cut: a 512-byte sector
/// of it that is all zeros, as a grown file whose data never reached the
/// disk reads. Anything else is damage to acknowledged records.
fn torn(tail: &[u8], at: usize) -> bool {
    const SECTOR: usize = 512;
    if tail.iter().all(|&b| b == 0) {
        return true;
    }
    let first_full = (SECTOR - at % SECTOR) % SECTOR;
    tail.get(first_full..)
        .unwrap_or_default()
        .chunks(SECTOR)
        .any(|s| s.iter().all(|&b| b == 0))
}

/// Applies the records of one segment to `t`; returns where they end (the
/// segment's length, or the start of a record cut short), or the offset
/// and reason of a record that is damaged.
fn replay(t: &mut Tables, seq: u64, bytes: &[u8]) -> Result<usize, (usize, String)> {
    let mut at = HEADER_LEN;
    loop {
        let found = match record::next(bytes, at) {
            Ok(Some(f)) => f,
            Ok(None) | Err(Stop::Short) => return Ok(at),
            Err(Stop::Bad(why)) => return Err((at, why)),
        };
        let bad = |e: ControlError| (at, e.to_string());
        match found.kind {
            Kind::Entry => {
                let e: Entry = decode("log entry", found.body).map_err(bad)?;
                t.apply(
                    &Change::Entry(&e),
                    Some((seq, at as u64, (found.end - at) as u64)),
                );
            }
            Kind::Truncate => {
                let from = record::u64_body(found.body).map_err(bad)?;
                t.apply(&Change::Truncate(from), None);
            }
            Kind::Purged => {
                let p: LogId = decode("purge record", found.body).map_err(bad)?;
                t.apply(&Change::Purged(p), None);
            }
            Kind::Vote => {
                let v: Vote = decode("vote record", found.body).map_err(bad)?;
                t.apply(&Change::Vote(v), None);
            }
            Kind::Committed => {
                let c: Option<LogId> = decode("committed record", found.body).map_err(bad)?;
                t.apply(&Change::Committed(c), None);
            }
        }
        at = found.end;
    }
}

impl Appender {
    /// Writes `changes` as one batch (one `write`, and one `fdatasync` if
    /// `durable`), then makes them visible to readers; returns each
    /// change's record length. A batch whose write or flush failed is not
    /// made visible, and nothing is written after it.
    pub(crate) fn write(
        &mut self,
        wal: &Wal,
        changes: &[Change<'_>],
        durable: bool,
    ) -> Result<Vec<u64>, ControlError> {
        if let Some(why) = &self.failed {
            return Err(ControlError::Storage(format!(
                "the control log stopped after a failed write ({why}); restart the member"
            )));
        }
        if self.len >= self.segment_bytes {
            self.rotate(wal)?;
        }
        let mut buf = Vec::with_capacity(256 * changes.len());
        let mut spans = Vec::with_capacity(changes.len());
        for c in changes {
            spans.push(encode_change(&mut buf, c)?);
        }
        let written = self.file.write_all_at(&buf, self.len).and_then(|()| {
            if durable {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let why = e.to_string();
            self.failed = Some(why.clone());
            return Err(ControlError::Storage(format!(
                "writing the control log: {why}"
            )));
        }
        let base = self.len;
        self.len += buf.len() as u64;
        let mut t = wal.tables.write().unwrap_or_else(PoisonError::into_inner);
        let mut purged = false;
        let mut lengths = Vec::with_capacity(spans.len());
        for (c, (start, len)) in changes.iter().zip(spans) {
            t.apply(c, Some((self.seq, base + start as u64, len as u64)));
            purged |= matches!(c, Change::Purged(_));
            lengths.push(len as u64);
        }
        if purged {
            self.delete_unneeded(wal, &mut t);
        }
        Ok(lengths)
    }

    /// Makes everything written so far durable (the committed id rides
    /// without a flush of its own; see `log_writer::FLUSH_AFTER`).
    pub(crate) fn flush(&mut self) -> Result<(), ControlError> {
        if self.failed.is_some() {
            return Ok(()); // the next write reports it
        }
        self.file.sync_data().map_err(|e| {
            self.failed = Some(e.to_string());
            io("flushing the control log", e)
        })
    }

    /// Starts the next segment with the current state. The current one
    /// is flushed first: its last committed-id record may not be yet.
    fn rotate(&mut self, wal: &Wal) -> Result<(), ControlError> {
        self.flush()?;
        let seq = self.seq + 1;
        let start = segment_start(&wal.read_tables())?;
        let file = write_segment(&wal.dir, seq, &start)?;
        let read = file.try_clone().map_err(|e| io(segment_name(seq), e))?;
        wal.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .segments
            .insert(seq, Arc::new(read));
        self.file = file;
        self.seq = seq;
        self.len = start.len() as u64;
        Ok(())
    }

    /// Deletes the segments before the first one still needed. A deletion
    /// that does not reach disk before a crash is harmless: replaying the
    /// old segment's records first and the later ones after gives the same
    /// log.
    fn delete_unneeded(&self, wal: &Wal, t: &mut Tables) {
        let keep_from = t.first_needed(self.seq);
        let old: Vec<u64> = t.segments.range(..keep_from).map(|(s, _)| *s).collect();
        for seq in old {
            let path = wal.dir.join(segment_name(seq));
            match fs::remove_file(&path) {
                Ok(()) => {
                    t.segments.remove(&seq);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    t.segments.remove(&seq);
                }
                // Kept and tried again at the next purge.
                Err(e) => tracing::warn!(segment = %path.display(), "control log: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
