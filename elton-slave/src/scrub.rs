//! The scrub: re-hashes every stored object at a bounded rate
//! ([`crate::scrub_pace`]), in the background and on demand
//! (`POST /v1/scrub`, `elton scrub`).
//!
//! A bad object is quarantined ([`crate::quarantine`]: earlier descriptors,
//! such as a mount's passthrough files, stop seeing it at once), withdrawn
//! from the master (`RemoveLocations`, so the planner stops counting the
//! copy), and fetched again from another holder with the ordinary fetch
//! path ([`Fetcher::ensure`]); once good bytes are stored they are written
//! into the emptied inode too. Whole-file copies that Eltonfs mounts keep
//! in their default state directories ([`crate::mount_copies`]) are checked
//! in the same pass.
//!
//! The store is walked shard by shard (`objects/00` .. `objects/ff`); only
//! one shard is scrubbed at a time across all scrubs, and the background
//! scrub records the next shard in `<data>/scrub.json`, so it resumes there
//! after a restart.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use elton_proto::ObjectId;
use serde::{Deserialize, Serialize};

use crate::fetcher::Fetcher;
use crate::master_link::MasterLink;
use crate::metrics::{Metrics, inc};
use crate::mount_copies;
use crate::scrub_pace::Pace;
use crate::store::ObjectStore;

/// Shards of the store (`objects/<2 hex>/`).
pub const SHARDS: u32 = 256;
/// Pause between two background passes.
const PASS_PAUSE: Duration = Duration::from_secs(3600);
/// Pause before the first background pass after a start: a starting slave
/// registers, announces and serves its first reads first (a restarted one
/// then resumes its interrupted pass).
const FIRST_PASS_DELAY: Duration = Duration::from_secs(300);
/// Read size while hashing.
const HASH_BUF: usize = 256 << 10;
/// Format of `<data>/scrub.json`.
const CURSOR_FORMAT: u32 = 1;

/// Counts of one pass, also its progress.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct ScrubReport {
    /// Shards finished, of [`SHARDS`].
    pub shards_done: u32,
    /// Objects re-hashed, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Objects that did not hash to their id (quarantined).
    pub bad: u64,
    /// Bad objects replaced by a good copy fetched from another holder.
    pub repaired: u64,
    /// Mounts' whole-file copies checked, and those found bad (removed).
    pub mount_copies: u64,
    pub mount_copies_bad: u64,
}

/// What a scrub reports as it goes (one JSON line each on the HTTP API).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScrubEvent {
    Progress(ScrubReport),
    /// A bad object or mount copy, and whether a good copy replaced it.
    Bad {
        what: String,
        object: String,
        repaired: bool,
    },
    Summary(ScrubReport),
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    format: u32,
    next_shard: u32,
}

pub struct Scrubber {
    store: Arc<ObjectStore>,
    fetcher: Arc<Fetcher>,
    link: MasterLink,
    metrics: Arc<Metrics>,
    data_dir: PathBuf,
    /// Held while a shard is scrubbed: scrubs take turns shard by shard.
    turn: tokio::sync::Mutex<()>,
}

/// A bad object found in a shard.
struct Found {
    id: ObjectId,
    emptied: Option<File>,
}

impl Scrubber {
    pub fn new(
        fetcher: Arc<Fetcher>,
        link: MasterLink,
        metrics: Arc<Metrics>,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            store: fetcher.store().clone(),
            fetcher,
            link,
            metrics,
            data_dir,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Scrubs the store once, from shard `first` on, at `rate_mib` MiB/s (0:
    /// unlimited), then the mounts' copies (on a pass from shard 0 only: a
    /// resumed pass did them before its restart, or does them next time).
    /// `sink` gets progress; when it answers false the pass stops after the
    /// current shard. `persist` records the next shard in `scrub.json`.
    pub async fn pass(
        &self,
        first: u32,
        rate_mib: u64,
        persist: bool,
        sink: &mut (dyn FnMut(ScrubEvent) -> bool + Send),
    ) -> ScrubReport {
        let mut report = ScrubReport {
            shards_done: first.min(SHARDS),
            ..ScrubReport::default()
        };
        let mut pace = Pace::new(rate_mib, Instant::now());
        for shard in first.min(SHARDS)..SHARDS {
            let turn = self.turn.lock().await;
            let store = self.store.clone();
            let counts = report.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut counts = counts;
                let found = check_shard(&store, shard as u8, &mut pace, &mut counts);
                (found, counts, pace)
            })
            .await;
            drop(turn);
            let (found, counts, p) = match done {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("scrub task: {e}");
                    return report;
                }
            };
            pace = p;
            inc(
                &self.metrics.scrubbed_objects_total,
                counts.objects - report.objects,
            );
            inc(
                &self.metrics.scrubbed_bytes_total,
                counts.bytes - report.bytes,
            );
            report = counts;
            // Every object found is already quarantined: repair them all,
            // even if the listener has gone.
            let mut listening = true;
            for f in found {
                let id = f.id;
                let repaired = self.repair(f).await;
                report.bad += 1;
                report.repaired += u64::from(repaired);
                listening &= sink(ScrubEvent::Bad {
                    what: "object".into(),
                    object: id.to_string(),
                    repaired,
                });
            }
            report.shards_done = shard + 1;
            if persist {
                self.save_cursor((shard + 1) % SHARDS);
            }
            if !listening || !sink(ScrubEvent::Progress(report.clone())) {
                return report;
            }
        }
        if first == 0 {
            let dir = self.data_dir.join("mounts");
            let store = self.store.clone();
            let mut counts = report.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let bad = mount_copies::check_all(&store, &dir, &mut pace, &mut counts);
                (bad, counts)
            })
            .await;
            match checked {
                Ok((bad, counts)) => {
                    report = counts;
                    for recipe in bad {
                        sink(ScrubEvent::Bad {
                            what: "mount copy".into(),
                            object: recipe.to_string(),
                            repaired: false,
                        });
                    }
                }
                Err(e) => tracing::error!("scrub task: {e}"),
            }
        }
        report
    }

    /// Quarantined already; withdraws the location, fetches a good copy,
    /// writes it into the emptied inode. True when a good copy is stored.
    async fn repair(&self, found: Found) -> bool {
        let Found { id, emptied } = found;
        inc(&self.metrics.corrupt_objects_total, 1);
        if let Err(e) = self.link.withdraw(&[id]).await {
            tracing::warn!(object = %id, "withdrawing the corrupt copy from the master: {e}");
        }
        match self.fetcher.ensure(id).await {
            Ok(true) => {} // fetched, so announced
            Ok(false) => {
                // A read fetched a good copy (and announced it) before the
                // withdrawal above: announce it again.
                if let Err(e) = self.link.announce(vec![id]).await {
                    tracing::warn!(object = %id, "announcing the repaired object: {e}");
                }
            }
            Err(e) => {
                tracing::error!(object = %id, "no good copy of the corrupt object could be fetched: {e}");
                return false;
            }
        }
        inc(&self.metrics.scrub_repaired_total, 1);
        if let Some(mut emptied) = emptied {
            let store = self.store.clone();
            let refilled = tokio::task::spawn_blocking(move || {
                let Some((mut good, _)) = store.open_verified(&id)? else {
                    return Ok(false);
                };
                crate::quarantine::refill(&mut emptied, &mut good, &id)
                    .map_err(|e| crate::SlaveError::Io(format!("refilling {id}: {e}")))
            })
            .await;
            match refilled {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::warn!(object = %id, "old descriptors of the corrupt copy stay empty")
                }
                Ok(Err(e)) => tracing::warn!(object = %id, "{e}"),
                Err(e) => tracing::warn!(object = %id, "refill task: {e}"),
            }
        }
        tracing::info!(object = %id, "corrupt object replaced by a good copy");
        true
    }

    /// Runs passes forever at `rate_mib` MiB/s (0: never), resuming an
    /// interrupted pass at the shard `scrub.json` names.
    pub async fn run_background(self: Arc<Self>, rate_mib: u64) {
        if rate_mib == 0 {
            tracing::info!("background scrub disabled (--scrub-rate 0)");
            return;
        }
        tokio::time::sleep(FIRST_PASS_DELAY).await;
        loop {
            let first = self.load_cursor();
            let started = Instant::now();
            let r = self.pass(first, rate_mib, true, &mut |_| true).await;
            tracing::info!(
                objects = r.objects,
                bytes = r.bytes,
                bad = r.bad,
                repaired = r.repaired,
                secs = started.elapsed().as_secs(),
                "scrub pass finished"
            );
            tokio::time::sleep(PASS_PAUSE).await;
        }
    }

    fn cursor_path(&self) -> PathBuf {
        self.data_dir.join("scrub.json")
    }

    fn load_cursor(&self) -> u32 {
        let Ok(bytes) = std::fs::read(self.cursor_path()) else {
            return 0;
        };
        match serde_json::from_slice::<Cursor>(&bytes) {
            Ok(c) if c.format == CURSOR_FORMAT && c.next_shard < SHARDS => c.next_shard,
            _ => {
                tracing::warn!(path = %self.cursor_path().display(), "unreadable scrub cursor; starting a new pass");
                0
            }
        }
    }

    fn save_cursor(&self, next_shard: u32) {
        let c = Cursor {
            format: CURSOR_FORMAT,
            next_shard,
        };
        let Ok(bytes) = serde_json::to_vec(&c) else {
            return;
        };
        // Not worth an fsync: a lost cursor only repeats some shards.
        if let Err(e) = std::fs::write(self.cursor_path(), bytes) {
            tracing::warn!("saving the scrub cursor: {e}");
        }
    }
}

/// Re-hashes every object of one shard, waiting as `pace` says; quarantines
/// the bad ones and returns them. Blocking.
fn check_shard(
    store: &ObjectStore,
    shard: u8,
    pace: &mut Pace,
    report: &mut ScrubReport,
) -> Vec<Found> {
    let ids = match store.list_shard(shard) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!("scrub: {e}");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    // One buffer for the shard: a fresh 1 MiB buffer per small object
    // would cost more than hashing it.
    let mut buf = vec![0u8; HASH_BUF];
    for id in ids {
        match check_object(store, &id, pace, report, &mut buf) {
            Ok(Some(ino)) => found.push(Found {
                id,
                emptied: store.quarantine_inode(&id, Some(ino)),
            }),
            Ok(None) => {}
            Err(e) => tracing::warn!(object = %id, "scrub: {e}"),
        }
    }
    found
}

/// Hashes one object; `Some(inode)` when it is bad.
fn check_object(
    store: &ObjectStore,
    id: &ObjectId,
    pace: &mut Pace,
    report: &mut ScrubReport,
    buf: &mut [u8],
) -> io::Result<Option<u64>> {
    let mut file = match File::open(store.path(id)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None), // removed meanwhile
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let wait = pace.charge(meta.len(), Instant::now());
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = ObjectId::from_hash(hasher.finalize());
    report.objects += 1;
    report.bytes += meta.len();
    if actual == *id {
        // Stamped as it was before hashing: a change during the hash makes
        // the next read hash again.
        store.mark_verified(*id, &meta);
        return Ok(None);
    }
    Ok(Some(meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_scrub_finds_and_quarantines_only_the_bad_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let good = store.put_bytes(b"good").unwrap();
        let bad = store.put_bytes(b"soon bad").unwrap();
        std::fs::write(store.path(&bad), b"rotten!!").unwrap();
        let mut reader = File::open(store.path(&bad)).unwrap();

        let mut pace = Pace::new(0, Instant::now());
        let mut report = ScrubReport::default();
        let mut found = Vec::new();
        for shard in 0..=255u8 {
            found.extend(check_shard(&store, shard, &mut pace, &mut report));
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, bad);
        assert!(found[0].emptied.is_some());
        assert_eq!((report.objects, report.bytes), (2, 12));
        assert!(store.contains(&good) && !store.contains(&bad));
        let evidence: Vec<_> = std::fs::read_dir(store.corrupt_dir())
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(evidence, vec![b"rotten!!".to_vec()]);
        // A reader that had the file open sees nothing, not the bad bytes.
        let mut seen = Vec::new();
        reader.read_to_end(&mut seen).unwrap();
        assert!(seen.is_empty());
    }

    fn scrubber(dir: &std::path::Path) -> Scrubber {
        let store = ObjectStore::open(dir).unwrap();
        // Connects lazily: nothing here talks to a master.
        let (link, _queue) =
            MasterLink::new("http://127.0.0.1:9", "n1".parse().unwrap(), None).unwrap();
        let metrics = Arc::new(Metrics::default());
        let fetcher = Arc::new(Fetcher::new(store, link.clone(), metrics.clone()));
        Scrubber::new(fetcher, link, metrics, dir.to_path_buf())
    }

    #[tokio::test]
    async fn a_resumed_pass_starts_at_its_shard_and_the_cursor_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let s = scrubber(dir.path());
        // Objects until both a low and a high shard hold one.
        let (mut low, mut high) = (0, 0);
        for i in 0u32.. {
            let id = s.store.put_bytes(&i.to_le_bytes()).unwrap();
            match id.as_bytes()[0] {
                0..=127 => low += 1,
                _ => high += 1,
            }
            if low > 0 && high > 0 {
                break;
            }
        }
        assert_eq!(s.load_cursor(), 0, "no cursor yet");
        let mut events = Vec::new();
        let r = s
            .pass(128, 0, true, &mut |e| {
                events.push(e);
                true
            })
            .await;
        assert_eq!(r.objects, high, "only shards 128..=255");
        assert_eq!(r.shards_done, SHARDS);
        assert_eq!(events.len(), 128, "one progress event per shard");
        assert_eq!(s.load_cursor(), 0, "a finished pass starts over");

        // A sink that stops after the first shard leaves the cursor there.
        let r = s.pass(7, 0, true, &mut |_| false).await;
        assert_eq!(r.shards_done, 8);
        assert_eq!(s.load_cursor(), 8);
        std::fs::write(dir.path().join("scrub.json"), b"{junk").unwrap();
        assert_eq!(s.load_cursor(), 0, "an unreadable cursor starts a new pass");
    }
}
