//! `Fsck`: checks the cluster and streams what it finds.
//!
//! 1. Objects: every object in the location table is compared with its
//!    target, min(replication, registered slaves). A down slave still counts
//!    towards the target (it is meant to come back or be replaced), so after
//!    a slave loss the objects it held show as under-replicated even while
//!    the planner, which can only use live slaves, has nothing to do.
//! 2. Versions: every version of every volume is walked ([`Walker`]); a
//!    version is unreadable when some object of it has no live holder, or
//!    (manifests always, files on request) no live holder serves it.
//! 3. Names: the volumes homed here are compared with each peer's; a name
//!    homed on both sides (created on each while they were partitioned) is
//!    reported. Peers that cannot be reached are listed as unchecked.
//!
//! Read-only: it reports, it never repairs or removes locations.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elton_proto::NodeId;
use elton_proto::pb::{
    FsckEvent, FsckNameConflict, FsckObjectProblem, FsckProgress, FsckSummary, FsckVersionProblem,
    fsck_event,
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::MasterError;
use crate::nodes::Liveness;
use crate::peers::PeerSet;
use crate::store::MetaStore;
use crate::walk::Walker;

/// Objects read per store transaction.
const SCAN_BATCH: usize = 20_000;
/// Least time between two progress events.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const DEFAULT_LISTED: u32 = 100;

pub type EventSender = mpsc::Sender<Result<FsckEvent, Status>>;

pub struct Fsck {
    pub store: Arc<MetaStore>,
    pub liveness: Arc<Liveness>,
    pub http: reqwest::Client,
    pub replication: u32,
    /// Asked for their volume names, to find names homed on both sides.
    pub peers: Arc<PeerSet>,
    pub check_files: bool,
    /// 0 means the default.
    pub max_listed: u32,
}

/// Sends one event; false when the client went away.
async fn send(tx: &EventSender, event: fsck_event::Event) -> bool {
    tx.send(Ok(FsckEvent { event: Some(event) })).await.is_ok()
}

struct Throttle(Instant);

impl Throttle {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.0) >= PROGRESS_EVERY {
            self.0 = now;
            return true;
        }
        false
    }
}

impl Fsck {
    /// Compares the volume names homed here with each reachable peer's.
    /// False when the client went away.
    async fn name_conflicts(
        &self,
        tx: &EventSender,
        summary: &mut FsckSummary,
        max_listed: u64,
    ) -> Result<bool, MasterError> {
        if self.peers.is_empty() {
            return Ok(true);
        }
        let local: HashSet<String> = self
            .blocking(|s| s.volumes())
            .await?
            .into_iter()
            .map(|v| v.name.to_string())
            .collect();
        let mut listed = 0;
        for peer in self.peers.all() {
            let theirs = match self.peers.list_volumes(peer).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(peer = %peer.name, "volume names not compared: {e:?}");
                    summary.peers_unchecked.push(peer.name.clone());
                    continue;
                }
            };
            let mut both: Vec<String> = theirs
                .into_iter()
                .map(|v| v.name)
                .filter(|n| local.contains(n))
                .collect();
            both.sort();
            for volume in both {
                summary.name_conflicts += 1;
                tracing::warn!(%volume, peer = %peer.name, "volume name homed here and by a peer");
                if listed < max_listed {
                    listed += 1;
                    let c = FsckNameConflict {
                        volume,
                        peer: peer.name.clone(),
                    };
                    if !send(tx, fsck_event::Event::Conflict(c)).await {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MetaStore) -> Result<T, MasterError> + Send + 'static,
    ) -> Result<T, MasterError> {
        crate::store::blocking(&self.store, f).await
    }

    /// Runs the check, sending events to `tx`; a failure ends the stream
    /// with an error status.
    pub async fn run(self, tx: EventSender) {
        if let Err(e) = self.check(&tx).await {
            let _ = tx.send(Err(e.into())).await;
        }
    }

    async fn check(self, tx: &EventSender) -> Result<(), MasterError> {
        let max_listed = match self.max_listed {
            0 => DEFAULT_LISTED,
            n => n,
        } as u64;
        let nodes = self.blocking(|s| s.nodes()).await?;
        let now = Instant::now();
        let live: HashMap<NodeId, String> = nodes
            .iter()
            .filter(|n| self.liveness.is_up(&n.id, now))
            .map(|n| (n.id.clone(), n.http_addr.clone()))
            .collect();
        let target = (self.replication as usize).min(nodes.len());
        let mut summary = FsckSummary {
            replication: self.replication,
            target: target as u32,
            live_slaves: live.len() as u32,
            registered_slaves: nodes.len() as u32,
            ..FsckSummary::default()
        };
        tracing::info!(target, live = live.len(), "fsck started");

        let mut throttle = Throttle(Instant::now());
        let mut cursor = None;
        let mut listed = 0;
        loop {
            let (page, next) = self
                .blocking(move |s| s.scan_holdings(cursor.as_ref(), SCAN_BATCH))
                .await?;
            for h in page {
                summary.objects += 1;
                let live_holders = h.holders.iter().filter(|n| live.contains_key(n)).count();
                if live_holders >= target {
                    continue;
                }
                summary.under_replicated += 1;
                if live_holders == 0 {
                    summary.lost += 1;
                }
                if listed < max_listed {
                    listed += 1;
                    let p = FsckObjectProblem {
                        object: h.object.as_bytes().to_vec(),
                        live_holders: live_holders as u32,
                        holders: h.holders.len() as u32,
                        target: target as u32,
                    };
                    if !send(tx, fsck_event::Event::Object(p)).await {
                        return Ok(());
                    }
                }
            }
            let progress = FsckProgress {
                phase: "objects".into(),
                done: summary.objects,
                total: 0,
            };
            if (next.is_none() || throttle.due())
                && !send(tx, fsck_event::Event::Progress(progress)).await
            {
                return Ok(());
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }

        let versions = self
            .blocking(|s| {
                let mut all = Vec::new();
                for v in s.volumes()? {
                    all.extend(s.versions(&v.name)?);
                }
                Ok(all)
            })
            .await?;
        let total = versions.len() as u64;
        let mut walker = Walker::new(
            self.store.clone(),
            self.http.clone(),
            live,
            self.check_files,
        );
        let mut listed = 0;
        for v in versions {
            if let Some(u) = walker.tree(v.root).await? {
                summary.unreadable_versions += 1;
                tracing::warn!(volume = %v.volume, version = %v.version, path = %u.path, object = %u.object, "unreadable: {}", u.reason);
                if listed < max_listed {
                    listed += 1;
                    let p = FsckVersionProblem {
                        volume: v.volume.to_string(),
                        version: v.version.get(),
                        path: u.path,
                        object: u.object.as_bytes().to_vec(),
                        reason: u.reason,
                    };
                    if !send(tx, fsck_event::Event::Version(p)).await {
                        return Ok(());
                    }
                }
            }
            summary.versions += 1;
            let progress = FsckProgress {
                phase: "versions".into(),
                done: summary.versions,
                total,
            };
            if (summary.versions == total || throttle.due())
                && !send(tx, fsck_event::Event::Progress(progress)).await
            {
                return Ok(());
            }
        }
        summary.objects_walked = walker.objects_walked();
        if !self.name_conflicts(tx, &mut summary, max_listed).await? {
            return Ok(());
        }
        tracing::info!(
            objects = summary.objects,
            under_replicated = summary.under_replicated,
            lost = summary.lost,
            versions = summary.versions,
            unreadable = summary.unreadable_versions,
            "fsck finished"
        );
        send(tx, fsck_event::Event::Summary(summary)).await;
        Ok(())
    }
}
