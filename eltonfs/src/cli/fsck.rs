//! `elton fsck`: asks the master to check replication and the readability
//! of every version, shows its progress, prints what is wrong.

use anyhow::{Result, bail};
use clap::Args;
use elton_proto::ObjectId;
use elton_proto::pb::{FsckRequest, FsckSummary, fsck_event};
use indicatif::ProgressBar;

use super::client::{Endpoints, status};

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Also make a live holder confirm every file object of every version
    /// (it re-hashes copies it has not verified since it started: slow on
    /// large stores). Manifests are always read and checked.
    #[arg(long)]
    pub check_files: bool,
    /// Most problems of each kind listed one by one (counts stay complete).
    #[arg(long, default_value_t = 100)]
    pub max_listed: u32,
}

fn hex(raw: &[u8]) -> String {
    ObjectId::from_bytes(raw).map_or_else(|_| "<invalid id>".into(), |id| id.to_string())
}

pub async fn fsck(ep: &Endpoints, a: FsckArgs) -> Result<()> {
    let mut stream = ep
        .master()
        .await?
        .fsck(FsckRequest {
            check_files: a.check_files,
            max_listed: a.max_listed,
        })
        .await
        .map_err(status)?
        .into_inner();
    let progress = ProgressBar::new_spinner().with_message("checking objects");
    let mut summary = None;
    while let Some(event) = stream.message().await.map_err(status)? {
        match event.event {
            Some(fsck_event::Event::Progress(p)) => {
                let msg = if p.total > 0 {
                    format!("checking {}: {}/{}", p.phase, p.done, p.total)
                } else {
                    format!("checking {}: {}", p.phase, p.done)
                };
                progress.set_message(msg);
                progress.tick();
            }
            Some(fsck_event::Event::Object(o)) => progress.suspend(|| {
                let what = if o.live_holders == 0 {
                    "lost"
                } else {
                    "under-replicated"
                };
                println!(
                    "{what} object {}: {} live of {} wanted ({} registered holders)",
                    hex(&o.object),
                    o.live_holders,
                    o.target,
                    o.holders
                );
            }),
            Some(fsck_event::Event::Version(v)) => progress.suspend(|| {
                let path = if v.path.is_empty() { "/" } else { &v.path };
                println!(
                    "unreadable version {}@{}: {path} (object {}): {}",
                    v.volume,
                    v.version,
                    hex(&v.object),
                    v.reason
                );
            }),
            Some(fsck_event::Event::Conflict(c)) => progress.suspend(|| {
                println!(
                    "volume name conflict: {} is homed here and by peer {} (created on both sides while they were partitioned; each side keeps serving its own)",
                    c.volume, c.peer
                );
            }),
            Some(fsck_event::Event::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    progress.finish_and_clear();
    let Some(s) = summary else {
        bail!("the master ended the check without a summary");
    };
    print_summary(&s);
    if s.under_replicated > 0 || s.unreadable_versions > 0 || s.name_conflicts > 0 {
        bail!(
            "fsck found problems: {} objects under-replicated ({} lost), {} versions unreadable, {} volume names homed on two sides",
            s.under_replicated,
            s.lost,
            s.unreadable_versions,
            s.name_conflicts
        );
    }
    println!("fsck: clean");
    Ok(())
}

fn print_summary(s: &FsckSummary) {
    println!(
        "slaves: {} live of {} registered; replication {} (target {} copies)",
        s.live_slaves, s.registered_slaves, s.replication, s.target
    );
    println!(
        "objects: {} checked, {} under-replicated, {} lost",
        s.objects, s.under_replicated, s.lost
    );
    println!(
        "versions: {} checked, {} unreadable ({} distinct objects walked)",
        s.versions, s.unreadable_versions, s.objects_walked
    );
    if !s.peers_unchecked.is_empty() {
        println!(
            "volume names: {} homed here and by a peer; not compared with unreachable peers: {}",
            s.name_conflicts,
            s.peers_unchecked.join(", ")
        );
    } else if s.name_conflicts > 0 {
        println!(
            "volume names: {} homed here and by a peer",
            s.name_conflicts
        );
    }
    if s.under_replicated > s.lost && (s.live_slaves as u64) < s.target as u64 {
        println!(
            "note: {} live slaves cannot hold {} copies; missing copies are made when slaves return or join",
            s.live_slaves, s.target
        );
    }
}
