//! Volumes homed by peer masters: finding the home, caching its answers,
//! forwarding commits.
//!
//! Which peer homes a volume is learnt by asking every peer once and then
//! kept in memory. Version records are immutable, so cached ones are served
//! without asking again, also while the home is unreachable. Anything that
//! can change (the head, the version list, a commit) is always asked of the
//! home and fails fast when it cannot be reached.

use std::collections::HashMap;
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
        let known = self.cached_home().get(name).cloned();
        if let Some(peer) = known.and_then(|n| self.peers.get(&n)) {
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

    pub async fn volume(&self, name: &VolumeName) -> Result<pb::VolumeInfo, MasterError> {
        let home = self.home(name).await?;
        self.peers
            .get_volume(home, name.as_str())
            .await
            .map_err(|f| failure(home, f))
    }

    /// `version` 0 is the head, always asked of the home; numbered records
    /// come from the cache when present. With `read_path`, a record asked
    /// of the home brings the objects on that path along (passed on to the
    /// caller, not cached: the reader stores them). The home of a volume
    /// not known yet is found by asking every peer for the record itself,
    /// one round trip where a lookup and then the record take two.
    pub async fn version(
        &self,
        name: &VolumeName,
        version: u64,
        read_path: Option<&VolumePath>,
    ) -> Result<pb::VersionRecord, MasterError> {
        if version != 0
            && let Some(r) = self.cache().get(&(name.clone(), version))
        {
            return Ok(r.clone());
        }
        let known = self.known_home(name).and_then(|n| self.peers.get(&n));
        let found = match known {
            Some(home) => Some(self.version_from(home, name, version, read_path).await?),
            None => self.version_from_any(name, version, read_path).await,
        };
        let record = match found {
            Some(record) => record,
            // Nobody answered with a record: the lookup tells an unknown
            // volume from an unknown version or an unreachable home.
            None => {
                let home = self.home(name).await?;
                self.version_from(home, name, version, read_path).await?
            }
        };
        let stored = pb::VersionRecord {
            along_path: Vec::new(),
            ..record.clone()
        };
        self.remember(name, std::slice::from_ref(&stored))?;
        Ok(record)
    }

    async fn version_from(
        &self,
        home: &Peer,
        name: &VolumeName,
        version: u64,
        read_path: Option<&VolumePath>,
    ) -> Result<pb::VersionRecord, MasterError> {
        self.peers
            .get_version(home, name.as_str(), version, read_path)
            .await
            .map_err(|f| failure(home, f))
    }

    /// Asks every peer at once for the record; the first to answer with one
    /// of `name` is its home (remembered). `None` when none did, whatever
    /// the reasons (the caller's lookup reports them).
    async fn version_from_any(
        &self,
        name: &VolumeName,
        version: u64,
        read_path: Option<&VolumePath>,
    ) -> Option<pb::VersionRecord> {
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
        while let Some((peer, answer)) = asked.next().await {
            let Ok(record) = answer else { continue };
            if record.volume != name.as_str() {
                tracing::warn!(volume = %name, peer = %peer.name, answered = %record.volume,
                    "peer answered a record of another volume; ignored");
                continue;
            }
            self.cached_home().insert(name.clone(), peer.name.clone());
            return Some(record);
        }
        None
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
            cache.insert((name.clone(), r.version), r.clone());
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

    #[test]
    fn a_record_of_a_new_home_incarnation_drops_the_volumes_cached_records() {
        let config = MasterConfig {
            insecure: true,
            ..MasterConfig::default()
        };
        let identity = Identity::load(&config).unwrap();
        let wan = Arc::new(WanStats::new(std::iter::empty::<(&str, &str)>()));
        let remote = RemoteVolumes::new(Arc::new(PeerSet::new(&config, wan, &identity).unwrap()));
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
}
