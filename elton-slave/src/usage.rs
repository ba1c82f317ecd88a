//! Counting what the store holds (objects and bytes) for the heartbeats'
//! usage report, cheaply enough to do every few seconds.
//!
//! A full count lists every shard directory and stats every object: too
//! slow to repeat often on a large store. But adding or removing an object
//! always changes its shard directory's modification time, whichever
//! process did it (a mount shares the store), so a shard whose directory
//! time is unchanged since it was last listed still holds what it held.
//! A recount stats the 256 shard directories and lists only the changed
//! ones.
//!
//! As in Git's index, a shard listed within [`RACY`] of its directory's
//! last change is not trusted: a change landing in the same clock tick as
//! the listing would leave the time unchanged and go unseen. Such a shard
//! is listed again next time.
//!
//! A commit of a few hundred objects changes nearly every shard, and
//! listing them all again stats every object of the store: on a store of
//! 100,000 objects that was most of the slave's CPU time during a run of
//! small commits (issue 16). So a recount lists at most
//! [`RELISTS_PER_COUNT`] shards that were counted before, taking them in
//! turn; the others report their last count until their turn comes. A
//! shard never counted is always listed, so the first count is whole.
//!
//! Objects never change size (a name is the hash of the bytes), so a
//! shard listed again stats only the names it did not have before: the
//! sizes of the others are remembered, 16 bytes per object (up to
//! [`REMEMBERED_PER_SHARD`] objects per shard, about 8 million in all;
//! the others are statted at every listing). Listing names is about a
//! sixth of the cost of statting them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How close to a directory's last change a listing may be and still be
/// trusted to have seen it (coarse filesystem clocks tick in 1 s or
/// 10 ms steps).
const RACY: Duration = Duration::from_secs(2);

/// Shards counted before that one recount lists again, at most: with a
/// recount every 2 s, a store whose every shard changed is counted anew
/// within 16 s.
pub const RELISTS_PER_COUNT: usize = 32;

/// Objects per shard whose sizes are remembered, at most.
const REMEMBERED_PER_SHARD: usize = 32 << 10;

#[derive(Clone, Default)]
struct Shard {
    /// The directory's modification time when listed (seconds, nanos);
    /// `None` when it must be listed again.
    listed_at_mtime: Option<(i64, i64)>,
    /// Whether it was ever listed (its counts stand for something).
    counted: bool,
    objects: u64,
    bytes: u64,
    /// (the first 16 hex digits of an object's file name, its size),
    /// sorted: the sizes of the objects listed last time.
    sizes: Vec<(u64, u64)>,
}

/// The store's usage, recounted incrementally by [`Self::count`].
pub struct UsageCounter {
    objects_dir: PathBuf,
    shards: Vec<Shard>,
    /// The shard a recount looks at first, so that shards waiting for
    /// their turn get it.
    next: usize,
}

impl UsageCounter {
    pub fn new(objects_dir: &Path) -> Self {
        Self {
            objects_dir: objects_dir.to_path_buf(),
            shards: vec![Shard::default(); 256],
            next: 0,
        }
    }

    /// Objects and bytes stored now. Blocking: stats every shard
    /// directory, lists the changed ones.
    pub fn count(&mut self) -> (u64, u64) {
        let (mut objects, mut bytes) = (0, 0);
        let mut relisted = 0;
        let shards = self.shards.len();
        let first = self.next;
        for n in (first..shards).chain(0..first) {
            let shard = &mut self.shards[n];
            let dir = self.objects_dir.join(format!("{n:02x}"));
            let mtime = fs::metadata(&dir).ok().map(|m| (m.mtime(), m.mtime_nsec()));
            if mtime.is_none() {
                // No directory, nothing to list.
                *shard = Shard::default();
                continue;
            }
            let changed = mtime != shard.listed_at_mtime;
            if changed && (!shard.counted || relisted < RELISTS_PER_COUNT) {
                if shard.counted {
                    relisted += 1;
                    self.next = (n + 1) % shards;
                }
                *shard = list(&dir, mtime, std::mem::take(&mut shard.sizes));
            }
            objects += shard.objects;
            bytes += shard.bytes;
        }
        (objects, bytes)
    }
}

/// Lists one shard; remembers `mtime` (read before listing, so a change
/// during the listing shows as a newer time next round) unless it is too
/// recent to trust. `known` holds the sizes of the previous listing: only
/// the other files are statted.
fn list(dir: &Path, mtime: Option<(i64, i64)>, known: Vec<(u64, u64)>) -> Shard {
    let mut shard = Shard {
        listed_at_mtime: mtime.filter(|&(s, ns)| settled(s, ns)),
        counted: true,
        ..Shard::default()
    };
    let Ok(files) = fs::read_dir(dir) else {
        return shard;
    };
    for f in files.flatten() {
        // From the directory entry's type where the filesystem gives it.
        if !f.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let key = name_key(&f.file_name());
        let known_size = key.and_then(|k| {
            known
                .binary_search_by_key(&k, |&(k, _)| k)
                .ok()
                .map(|i| known[i].1)
        });
        let size = match known_size {
            Some(size) => size,
            None => match f.metadata() {
                Ok(m) if m.is_file() => m.len(),
                // Gone since listed, or replaced by something else.
                _ => continue,
            },
        };
        shard.objects += 1;
        shard.bytes += size;
        if let Some(k) = key
            && shard.sizes.len() < REMEMBERED_PER_SHARD
        {
            shard.sizes.push((k, size));
        }
    }
    shard.sizes.sort_unstable();
    shard
}

/// An object file's key among the remembered sizes: the first 16 hex
/// digits of its name (the id after the shard's two). Two objects of a
/// shard sharing them would share a size in the count, which is a report;
/// names that are not hex are statted every time.
fn name_key(name: &std::ffi::OsStr) -> Option<u64> {
    let digits = name.as_encoded_bytes().get(..16)?;
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

fn settled(secs: i64, nanos: i64) -> bool {
    let Ok(secs) = u64::try_from(secs) else {
        return false;
    };
    let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
    SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age >= RACY)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shard_dir(root: &Path, n: u8) -> PathBuf {
        let d = root.join(format!("{n:02x}"));
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Sets the directory's time a minute back; returns that time.
    fn settle(dir: &Path) -> SystemTime {
        let t = SystemTime::now() - Duration::from_secs(60);
        set_mtime(dir, t);
        t
    }

    fn set_mtime(dir: &Path, t: SystemTime) {
        fs::File::open(dir).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn counts_objects_and_bytes_of_every_shard() {
        let root = tempfile::tempdir().unwrap();
        fs::write(shard_dir(root.path(), 0x00).join("a"), b"12345").unwrap();
        fs::write(shard_dir(root.path(), 0xff).join("b"), b"123").unwrap();
        assert_eq!(UsageCounter::new(root.path()).count(), (2, 8));
    }

    #[test]
    fn a_settled_shard_is_not_listed_again_until_its_directory_changes() {
        let root = tempfile::tempdir().unwrap();
        let d = shard_dir(root.path(), 0x10);
        fs::write(d.join("a"), b"12345").unwrap();
        let settled = settle(&d);
        let mut c = UsageCounter::new(root.path());
        assert_eq!(c.count(), (1, 5));
        // Growing a file in place does not change the directory's time:
        // the cached count stands, which proves the shard was not listed
        // again.
        fs::write(d.join("a"), b"1234567890").unwrap();
        set_mtime(&d, settled);
        assert_eq!(c.count(), (1, 5));
        // Adding an object changes the directory: it is listed again.
        fs::write(d.join("b"), b"1").unwrap();
        assert_eq!(c.count(), (2, 11));
    }

    #[test]
    fn a_shard_changed_just_now_is_listed_again_next_time() {
        let root = tempfile::tempdir().unwrap();
        let d = shard_dir(root.path(), 0x20);
        fs::write(d.join("a"), b"12345").unwrap();
        let mut c = UsageCounter::new(root.path());
        assert_eq!(c.count(), (1, 5));
        // Same directory time (an in-place change stands in for a change
        // within one clock tick): still seen, because the first listing
        // was too recent to trust.
        let mtime = fs::metadata(&d).unwrap().modified().unwrap();
        fs::write(d.join("a"), b"1234567890").unwrap();
        set_mtime(&d, mtime);
        assert_eq!(c.count(), (1, 10));
    }

    #[test]
    fn many_changed_shards_are_listed_again_in_turns() {
        let root = tempfile::tempdir().unwrap();
        let shards = 3 * RELISTS_PER_COUNT / 2;
        for n in 0..shards {
            let d = shard_dir(root.path(), n as u8);
            fs::write(d.join("a"), b"1").unwrap();
            settle(&d);
        }
        let mut c = UsageCounter::new(root.path());
        // Never counted: all listed at once.
        assert_eq!(c.count(), (shards as u64, shards as u64));
        for n in 0..shards {
            let d = shard_dir(root.path(), n as u8);
            fs::write(d.join("b"), b"22").unwrap();
            settle(&d);
        }
        // One turn's worth, then the rest.
        let grown = |listed: usize| ((shards + listed) as u64, (shards + 2 * listed) as u64);
        assert_eq!(c.count(), grown(RELISTS_PER_COUNT));
        assert_eq!(c.count(), grown(shards));
        // The turns wrap around: the shards after the last one listed go
        // first.
        for n in 0..shards {
            fs::remove_file(shard_dir(root.path(), n as u8).join("b")).unwrap();
        }
        assert_eq!(c.count(), grown(shards - RELISTS_PER_COUNT));
        assert_eq!(c.count(), grown(0));
    }

    #[test]
    fn a_relisting_stats_only_names_it_did_not_have() {
        let root = tempfile::tempdir().unwrap();
        let d = shard_dir(root.path(), 0x40);
        let name = |n: u64| format!("{n:016x}{}", "0".repeat(46));
        let (old, new) = (name(1), name(2));
        fs::write(d.join(&old), b"12345").unwrap();
        settle(&d);
        let mut c = UsageCounter::new(root.path());
        assert_eq!(c.count(), (1, 5));
        // An object never changes size; one that did (here, in place)
        // shows that its size came from memory, not from a stat.
        fs::write(d.join(&old), b"1234567890").unwrap();
        fs::write(d.join(&new), b"123").unwrap();
        settle(&d);
        assert_eq!(c.count(), (2, 8));
        fs::remove_file(d.join(&old)).unwrap();
        settle(&d);
        assert_eq!(c.count(), (1, 3));
        // Re-added under the same name: statted again, as it was forgotten.
        fs::write(d.join(&old), b"1234567").unwrap();
        settle(&d);
        assert_eq!(c.count(), (2, 10));
    }

    #[test]
    fn name_keys_are_the_first_sixteen_hex_digits() {
        let key = |s: &str| name_key(std::ffi::OsStr::new(s));
        assert_eq!(key(&format!("{:016x}{}", 7u64, "f".repeat(46))), Some(7));
        assert_eq!(key("a"), None);
        assert_eq!(key("tmp-not-an-object-name"), None);
    }

    #[test]
    fn removed_objects_and_missing_shards_count_nothing() {
        let root = tempfile::tempdir().unwrap();
        let d = shard_dir(root.path(), 0x30);
        fs::write(d.join("a"), b"12345").unwrap();
        settle(&d);
        let mut c = UsageCounter::new(root.path());
        assert_eq!(c.count(), (1, 5));
        fs::remove_file(d.join("a")).unwrap();
        assert_eq!(c.count(), (0, 0));
        fs::remove_dir(&d).unwrap();
        assert_eq!(c.count(), (0, 0));
    }
}
