//! Volumes homed by peer masters: finding the home, caching its answers,
//! forwarding commits.
//!
//! Which peer homes a volume is learnt by asking every peer once and then
//! kept in memory. Version records are immutable, so cached ones are served
//! without asking again, also while the home is unreachable. Anything that
//! can change (the head, the version list, a commit) is always asked of the
//! home and fails fast when it cannot be reached.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use elton_proto::pb;
use elton_proto::{HEAD_METADATA_KEY, VersionInfo, VolumeName, VolumePath};
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;

use crate::MasterError;
use crate::peers::{Peer, PeerFailure, PeerSet};

/// Upper bound of cached remote version records; the cache is cleared when
/// full (records are small and can always be asked again).
const MAX_CACHED_RECORDS: usize = 100_000;

pub struct RemoteVolumes {
    peers: Arc<PeerSet>,
    /// volume → name of the peer that homes it
    homes: Mutex<HashMap<VolumeName, String>>,
    records: Mutex<HashMap<(VolumeName, u64), pb::VersionRecord>>,
    /// The home's incarnation each volume's cached records are of: a record
    /// of another one (the home was restored or started again) drops them,
    /// since their numbers may name other trees now.
    incarnations: Mutex<HashMap<VolumeName, String>>,
    /// Numbered versions already asked of the home with a read path: a
    /// record cached by a call without one (the head of a `latest` read,
    /// a listing) is asked once more by the first read with a path, so
    /// that the objects on it come along.
    walked: Mutex<HashSet<(VolumeName, u64)>>,
}

/// The outcome of asking every peer whether it homes a volume.
pub enum Lookup<'a> {
    Found(&'a Peer),
    /// No reachable peer homes it; `unreachable` lists the peers that did not
    /// answer.
    Absent {
        unreachable: Vec<String>,
    },
}

impl RemoteVolumes {
    pub fn new(peers: Arc<PeerSet>) -> Self {
        Self {
            peers,
            homes: Mutex::new(HashMap::new()),
            records: Mutex::new(HashMap::new()),
            incarnations: Mutex::new(HashMap::new()),
            walked: Mutex::new(HashSet::new()),
        }
    }

    fn cached_home(&self) -> std::sync::MutexGuard<'_, HashMap<VolumeName, String>> {
        self.homes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(VolumeName, u64), pb::VersionRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks every peer (in parallel) whether it homes `name`; remembers the
    /// answer. Uses the remembered home without asking when there is one.
    pub async fn lookup(&self, name: &VolumeName) -> Result<Lookup<'_>, MasterError> {
        if let Some(peer) = self.known_home_peer(name) {
            return Ok(Lookup::Found(peer));
        }
        let answers = join_all(
            self.peers
                .all()
                .iter()
                .map(|p| async move { (p, self.peers.get_volume(p, name.as_str()).await) }),
        )
        .await;
        let mut unreachable = Vec::new();
        for (peer, answer) in answers {
            match answer {
                Ok(info) => {
                    if info.home != peer.name {
                        tracing::warn!(volume = %name, peer = %peer.name, home = %info.home,
                            "peer reports another home name; check the peers' cluster names");
                    }
                    self.cached_home().insert(name.clone(), peer.name.clone());
                    return Ok(Lookup::Found(peer));
                }
                Err(PeerFailure::NotFound(_)) => {}
                Err(PeerFailure::Unreachable(e)) => {
                    unreachable.push(format!("{} ({e})", peer.name))
                }
                Err(PeerFailure::Status(s)) => {
                    unreachable.push(format!("{} ({})", peer.name, s.message()));
                }
            }
        }
        Ok(Lookup::Absent { unreachable })
    }

    /// The home of a volume not known locally, or the error to answer.
    async fn home(&self, name: &VolumeName) -> Result<&Peer, MasterError> {
        match self.lookup(name).await? {
            Lookup::Found(p) => Ok(p),
            Lookup::Absent { unreachable } if unreachable.is_empty() => {
                Err(MasterError::UnknownVolume(name.to_string()))
            }
            Lookup::Absent { unreachable } => Err(MasterError::PeersUnreachable {
                what: format!("volume {:?}", name.as_str()),
                peers: unreachable.join(", "),
            }),
        }
    }

    /// The home's peer name, if this volume is known to be homed elsewhere
    /// (from an earlier lookup; no call is made).
    pub fn known_home(&self, name: &VolumeName) -> Option<String> {
        self.cached_home().get(name).cloned()
    }

    fn known_home_peer(&self, name: &VolumeName) -> Option<&Peer> {
        self.known_home(name).and_then(|n| self.peers.get(&n))
    }

    pub async fn volume(&self, name: &VolumeName) -> Result<pb::VolumeInfo, MasterError> {
        let home = self.home(name).await?;
        self.peers
            .get_volume(home, name.as_str())
            .await
            .map_err(|f| failure(home, f))
    }

    /// `version` 0 is the head, always asked of the home; numbered records
    /// come from the cache when present. With `read_path` (ignored for the
    /// head, which is never cached: each call would make the home walk
    /// again), a record asked of the home brings the objects on that path
    /// along, passed on to the caller and never cached. The home of a
    /// volume not known yet is found by asking every peer for the record
    /// itself: one round trip where a lookup and then the record take two.
    pub async fn version(
        &self,
        name: &VolumeName,
        version: u64,
        read_path: Option<&VolumePath>,
    ) -> Result<pb::VersionRecord, MasterError> {
        let read_path = read_path.filter(|_| version != 0);
        let cached = (version != 0)
            .then(|| self.cache().get(&(name.clone(), version)).cloned())
            .flatten();
        if let Some(cached) = cached {
            let again = match read_path {
                Some(path) => self.ask_again_with_path(name, version, path).await,
                None => None,
            };
            return Ok(again.unwrap_or(cached));
        }
        if read_path.is_some() {
            // This record comes with the objects on the path.
            self.first_walk(name, version);
        }
        let record = match self.known_home_peer(name) {
            Some(home) => self
                .peers
                .get_version(home, name.as_str(), version, read_path)
                .await
                .map_err(|f| failure(home, f))?,
            None => self.version_from_any(name, version, read_path).await?,
        };
        self.remember(name, std::slice::from_ref(&record))?;
        Ok(record)
    }

    /// A record cached without a path (the head of a `latest` read, a
    /// listing), asked of the home once more with one, so that the objects
    /// on it come along: one round trip that saves one per object. `None`
    /// (the cached record answers) after the first such read of the
    /// version, while the home is known to be unreachable (no wait), or
    /// when the home cannot answer.
    async fn ask_again_with_path(
        &self,
        name: &VolumeName,
        version: u64,
        path: &VolumePath,
    ) -> Option<pb::VersionRecord> {
        let home = self.known_home_peer(name)?;
        if !self.peers.stats().reachable(&home.name) || !self.first_walk(name, version) {
            return None;
        }
        let record = self
            .peers
            .get_version(home, name.as_str(), version, Some(path))
            .await
            .ok()?;
        self.remember(name, std::slice::from_ref(&record)).ok()?;
        Some(record)
    }

    /// Whether this is the first read with a path of `name`'s `version`
    /// (and notes it). Bounded like the records' cache.
    fn first_walk(&self, name: &VolumeName, version: u64) -> bool {
        let mut walked = self.walked.lock().unwrap_or_else(|p| p.into_inner());
        if walked.len() >= MAX_CACHED_RECORDS {
            walked.clear();
        }
        walked.insert((name.clone(), version))
    }

    /// Asks every peer at once for the record; the first to answer with one
    /// of `name` is its home (remembered). When none does, the peers that
    /// answered "not found" are asked whether they home the volume, to
    /// tell an unknown version (the home's answer is passed on) from an
    /// unknown volume; peers that did not answer are not asked again.
    async fn version_from_any(
        &self,
        name: &VolumeName,
        version: u64,
        read_path: Option<&VolumePath>,
    ) -> Result<pb::VersionRecord, MasterError> {
        let mut asked: FuturesUnordered<_> = self
            .peers
            .all()
            .iter()
            .map(|p| async move {
                let answer = self
                    .peers
                    .get_version(p, name.as_str(), version, read_path)
                    .await;
                (p, answer)
            })
            .collect();
        let mut not_found = Vec::new();
        let mut unreachable = Vec::new();
        while let Some((peer, answer)) = asked.next().await {
            match answer {
                Ok(record) if record.volume == name.as_str() => {
                    self.cached_home().insert(name.clone(), peer.name.clone());
                    return Ok(record);
                }
                Ok(record) => {
                    tracing::warn!(volume = %name, peer = %peer.name, answered = %record.volume,
                        "peer answered a record of another volume; ignored");
                }
                Err(PeerFailure::NotFound(message)) => not_found.push((peer, message)),
                Err(PeerFailure::Unreachable(e)) => {
                    unreachable.push(format!("{} ({e})", peer.name));
                }
                // Only a home answers anything but "not found" about a
                // volume (a refusal, an error of its store): pass it on.
                Err(failed @ PeerFailure::Status(_)) => return Err(failure(peer, failed)),
            }
        }
        let homes = join_all(not_found.into_iter().map(|(p, message)| async move {
            let homes_it = self.peers.get_volume(p, name.as_str()).await.is_ok();
            (p, message, homes_it)
        }))
        .await;
        if let Some((home, message, _)) = homes.into_iter().find(|(_, _, homes_it)| *homes_it) {
            self.cached_home().insert(name.clone(), home.name.clone());
            return Err(failure(home, PeerFailure::NotFound(message)));
        }
        if unreachable.is_empty() {
            Err(MasterError::UnknownVolume(name.to_string()))
        } else {
            Err(MasterError::PeersUnreachable {
                what: format!("volume {:?}", name.as_str()),
                peers: unreachable.join(", "),
            })
        }
    }

    pub async fn versions(
        &self,
        name: &VolumeName,
    ) -> Result<pb::ListVersionsResponse, MasterError> {
        let home = self.home(name).await?;
        let list = self
            .peers
            .list_versions(home, name.as_str())
            .await
            .map_err(|f| failure(home, f))?;
        self.remember(name, &list.versions)?;
        Ok(list)
    }

    /// Forwards a commit to the home; its answer (conflicts included) is
    /// passed back unchanged.
    pub async fn commit(
        &self,
        name: &VolumeName,
        req: pb::CommitRequest,
    ) -> Result<pb::VersionRecord, MasterError> {
        let home = self.home(name).await?;
        let record = self
            .peers
            .commit(home, req)
            .await
            .map_err(|f| failure(home, f))?;
        self.remember(name, std::slice::from_ref(&record))?;
        Ok(record)
    }

    /// Caches records after checking they are well formed and belong to
    /// `name` (a peer's answer is input like any other).
    fn remember(
        &self,
        name: &VolumeName,
        records: &[pb::VersionRecord],
    ) -> Result<(), MasterError> {
        for r in records {
            let info = VersionInfo::try_from(r.clone())
                .map_err(|e| MasterError::Io(format!("bad version record from peer: {e}")))?;
            if &info.volume != name {
                return Err(MasterError::Io(format!(
                    "peer answered a record of {:?} for {:?}",
                    info.volume.as_str(),
                    name.as_str()
                )));
            }
        }
        let mut cache = self.cache();
        if let Some(inc) = records
            .iter()
            .map(|r| &r.incarnation)
            .find(|i| !i.is_empty())
        {
            let mut known = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
            let previous = known.insert(name.clone(), inc.clone());
            if previous.is_some_and(|p| &p != inc) {
                cache.retain(|(v, _), r| v != name || &r.incarnation == inc);
                tracing::warn!(volume = %name, incarnation = %inc,
                    "the home's metadata is a new incarnation: cached records of the volume dropped");
            }
        }
        if cache.len() + records.len() > MAX_CACHED_RECORDS {
            cache.clear();
        }
        for r in records {
            // Objects sent along are the reader's to store, not the
            // cache's to keep (a peer's answer is input like any other).
            let record = pb::VersionRecord {
                along_path: Vec::new(),
                ..r.clone()
            };
            cache.insert((name.clone(), r.version), record);
        }
        Ok(())
    }
}

/// A failed call to a volume's home, as the error this master answers.
fn failure(home: &Peer, f: PeerFailure) -> MasterError {
    match f {
        PeerFailure::Unreachable(reason) => MasterError::HomeUnreachable {
            home: home.name.clone(),
            reason,
        },
        PeerFailure::NotFound(message) => MasterError::Remote {
            code: tonic::Code::NotFound,
            message,
            head: None,
        },
        PeerFailure::Status(s) => MasterError::Remote {
            code: s.code(),
            message: s.message().to_string(),
            head: s
                .metadata()
                .get(HEAD_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterConfig;
    use crate::provision::Identity;
    use crate::wan::WanStats;

    fn record(volume: &str, version: u64, incarnation: &str) -> pb::VersionRecord {
        pb::VersionRecord {
            volume: volume.into(),
            version,
            root: vec![version as u8; 32],
            incarnation: incarnation.into(),
            ..Default::default()
        }
    }

    /// Remote volumes of a master without peers (nothing is asked here).
    fn remote_volumes() -> RemoteVolumes {
        let config = MasterConfig {
            insecure: true,
            ..MasterConfig::default()
        };
        let identity = Identity::load(&config).unwrap();
        let wan = Arc::new(WanStats::new(std::iter::empty::<(&str, &str)>()));
        RemoteVolumes::new(Arc::new(PeerSet::new(&config, wan, &identity).unwrap()))
    }

    #[test]
    fn a_record_of_a_new_home_incarnation_drops_the_volumes_cached_records() {
        let remote = remote_volumes();
        let (web, docs): (VolumeName, VolumeName) =
            ("web".parse().unwrap(), "docs".parse().unwrap());
        remote
            .remember(&web, &[record("web", 1, "aa"), record("web", 2, "aa")])
            .unwrap();
        remote.remember(&docs, &[record("docs", 1, "cc")]).unwrap();
        // The head of web, from a new incarnation of its home.
        remote.remember(&web, &[record("web", 1, "bb")]).unwrap();
        let cache = remote.cache();
        assert_eq!(cache.get(&(web.clone(), 1)).unwrap().incarnation, "bb");
        assert!(
            cache.get(&(web, 2)).is_none(),
            "web@2 of the old incarnation"
        );
        assert!(cache.get(&(docs, 1)).is_some());
    }

    #[test]
    fn records_never_keep_objects_sent_along_and_a_version_is_walked_once() {
        let remote = remote_volumes();
        let web: VolumeName = "web".parse().unwrap();
        let sent = pb::VersionRecord {
            along_path: vec![vec![1; 1 << 20]],
            ..record("web", 1, "aa")
        };
        remote.remember(&web, &[sent]).unwrap();
        assert!(remote.cache()[&(web.clone(), 1)].along_path.is_empty());

        assert!(remote.first_walk(&web, 1));
        assert!(!remote.first_walk(&web, 1), "asked with a path once");
        assert!(remote.first_walk(&web, 2));
    }
}
