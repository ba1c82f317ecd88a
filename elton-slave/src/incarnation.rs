//! Which incarnation of its master's metadata this slave last heard of, and
//! the version records it cached under it.
//!
//! A version number names one tree only within one incarnation: after a
//! restore or a new incarnation the master may issue `web@1` again for
//! another tree. So cached records are dropped when the master's
//! incarnation changes (told with every registration and heartbeat answer),
//! a record of a volume replaces the cached ones of another incarnation,
//! and a cached record is only used without asking while the link to the
//! master is confirmed (the last heartbeat was answered).

use std::collections::HashMap;
use std::sync::Mutex;

use elton_proto::{Version, VersionInfo, VolumeName};

#[derive(Default)]
struct State {
    /// The master's incarnation as last told; `None` before the first answer.
    master: Option<String>,
    /// Whether the last heartbeat was answered.
    confirmed: bool,
    /// How often the master's incarnation changed under this slave.
    changes: u64,
    /// (volume, version) → (incarnation it was issued in, record).
    records: HashMap<(VolumeName, Version), (String, VersionInfo)>,
}

/// A cached record.
#[derive(Debug, PartialEq, Eq)]
pub struct Hit {
    pub incarnation: String,
    pub info: VersionInfo,
    /// Usable without asking the master; else only when the master cannot
    /// be asked (the link is not confirmed).
    pub confirmed: bool,
}

#[derive(Default)]
pub struct VersionCache {
    state: Mutex<State>,
}

impl VersionCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The master answered (registration or heartbeat) from `incarnation`:
    /// on a change, every cached record of another incarnation goes.
    pub fn master_answered(&self, incarnation: &str) {
        let mut s = self.state();
        s.confirmed = true;
        if s.master.as_deref() == Some(incarnation) {
            return;
        }
        let before = s.records.len();
        s.records.retain(|_, (inc, _)| inc == incarnation);
        let dropped = before - s.records.len();
        if let Some(old) = s.master.clone() {
            s.changes += 1;
            tracing::warn!(old = %old, new = %incarnation, dropped,
                "the master's metadata is a new incarnation: cached version records dropped");
        }
        s.master = Some(incarnation.to_string());
    }

    /// How often the master answered from another incarnation than the one
    /// before (a restore or `--new-incarnation`), since this slave started.
    pub fn incarnation_changes(&self) -> u64 {
        self.state().changes
    }

    /// A heartbeat failed: cached records are checked with the master
    /// before use until it answers again.
    pub fn master_unreachable(&self) {
        self.state().confirmed = false;
    }

    pub fn get(&self, volume: &VolumeName, v: Version) -> Option<Hit> {
        let s = self.state();
        s.records.get(&(volume.clone(), v)).map(|(inc, info)| Hit {
            incarnation: inc.clone(),
            info: info.clone(),
            confirmed: s.confirmed,
        })
    }

    /// Caches `info`, issued in `incarnation`; records of the same volume
    /// from another incarnation are dropped (they may name other trees).
    pub fn put(&self, incarnation: &str, info: &VersionInfo) {
        self.seen(incarnation, &info.volume);
        self.state().records.insert(
            (info.volume.clone(), info.version),
            (incarnation.to_string(), info.clone()),
        );
    }

    /// A record of `volume` from `incarnation` was seen (e.g. the head):
    /// cached records of the volume from another incarnation go.
    pub fn seen(&self, incarnation: &str, volume: &VolumeName) {
        let mut s = self.state();
        let before = s.records.len();
        s.records
            .retain(|(v, _), (inc, _)| v != volume || inc == incarnation);
        let dropped = before - s.records.len();
        if dropped > 0 {
            tracing::warn!(%volume, incarnation, dropped,
                "version records of another incarnation dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(volume: &str, v: u64, root: &[u8]) -> VersionInfo {
        VersionInfo {
            format: 1,
            volume: volume.parse().unwrap(),
            version: Version::new(v).unwrap(),
            root: elton_proto::ObjectId::of(root),
            parent: None,
            message: String::new(),
            author: String::new(),
            host: String::new(),
            time: 0,
        }
    }

    #[test]
    fn records_are_used_only_while_the_master_is_confirmed_and_the_same() {
        let cache = VersionCache::default();
        let web: VolumeName = "web".parse().unwrap();
        let one = Version::new(1).unwrap();
        let old = info("web", 1, b"old tree");
        let hit = |confirmed| {
            Some(Hit {
                incarnation: "aaaa".into(),
                info: old.clone(),
                confirmed,
            })
        };
        cache.put("aaaa", &old);
        // Before any heartbeat answer nothing is confirmed.
        assert_eq!(cache.get(&web, one), hit(false));
        cache.master_answered("aaaa");
        assert_eq!(cache.get(&web, one), hit(true));
        cache.master_unreachable();
        assert_eq!(cache.get(&web, one), hit(false));
        cache.master_answered("aaaa");
        assert_eq!(cache.get(&web, one), hit(true));
        assert_eq!(cache.incarnation_changes(), 0);
        // A new incarnation: the old web@1 is gone.
        cache.master_answered("bbbb");
        assert_eq!(cache.get(&web, one), None);
        assert_eq!(cache.incarnation_changes(), 1);
    }

    #[test]
    fn a_record_of_another_incarnation_replaces_the_volumes_records() {
        let cache = VersionCache::default();
        cache.master_answered("aaaa");
        let web: VolumeName = "web".parse().unwrap();
        let docs: VolumeName = "docs".parse().unwrap();
        cache.put("aaaa", &info("web", 1, b"a"));
        cache.put("aaaa", &info("web", 2, b"b"));
        cache.put("cccc", &info("docs", 1, b"c"));
        // The head of web, seen from incarnation bbbb (e.g. a peer's).
        cache.seen("bbbb", &web);
        assert_eq!(cache.get(&web, Version::new(1).unwrap()), None);
        assert_eq!(cache.get(&web, Version::new(2).unwrap()), None);
        assert!(cache.get(&docs, Version::new(1).unwrap()).is_some());
    }
}
