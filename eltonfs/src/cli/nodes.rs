//! `elton node ls|rm` and `elton volume rm`: cluster membership and volume
//! removal (admin token for the removals).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use elton_proto::VolumeName;
use elton_proto::pb::{DeleteVolumeRequest, ListNodesRequest, RemoveNodeRequest};
use indicatif::ProgressBar;

use super::client::{Endpoints, status};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the master's nodes: id, address, alive, objects, bytes, last
    /// heartbeat.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decommission a node (admin): objects only it holds are copied to
    /// other live nodes first, then it is forgotten for good.
    Rm(NodeRmArgs),
}

#[derive(Args, Debug)]
pub struct NodeRmArgs {
    /// The node's id (see `elton node ls`).
    pub node: String,
    /// Forget the node even if it is down and holds the only copy of
    /// objects (they are lost).
    #[arg(long)]
    pub force: bool,
    /// Give up (and keep the node) if its objects are not copied by then.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct VolumeRmArgs {
    /// The volume to delete.
    pub volume: String,
    /// Delete even while this host has the volume mounted or holds
    /// uncommitted changes to it (they can no longer be committed).
    #[arg(long)]
    pub force: bool,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn ago(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(unix))
}

pub async fn node(ep: &Endpoints, c: NodeCommand) -> Result<()> {
    match c {
        NodeCommand::Ls { json } => ls(ep, json).await,
        NodeCommand::Rm(a) => rm(ep, a).await,
    }
}

async fn ls(ep: &Endpoints, json: bool) -> Result<()> {
    let nodes = ep
        .master()
        .await?
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .nodes;
    if json {
        let list: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.node_id,
                    "address": n.http_addr,
                    "alive": n.up,
                    "objects": n.objects,
                    "stored_objects": n.stored_objects,
                    "stored_bytes": n.stored_bytes,
                    "last_heartbeat_unix": n.last_seen_unix,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<6} {:>9} {:>12}  LAST HEARTBEAT",
        "NODE", "ADDRESS", "ALIVE", "OBJECTS", "BYTES"
    );
    for n in nodes {
        println!(
            "{:<20} {:<24} {:<6} {:>9} {:>12}  {}",
            n.node_id,
            n.http_addr,
            if n.up { "yes" } else { "no" },
            n.objects,
            n.stored_bytes,
            ago(n.last_seen_unix)
        );
    }
    Ok(())
}

async fn rm(ep: &Endpoints, a: NodeRmArgs) -> Result<()> {
    let mut master = ep.master().await?;
    let deadline = Instant::now() + a.timeout;
    let mut bar: Option<(ProgressBar, u64)> = None;
    loop {
        let r = master
            .remove_node(RemoveNodeRequest {
                node_id: a.node.clone(),
                force: a.force,
            })
            .await
            .map_err(status)?
            .into_inner();
        if r.removed {
            if let Some((b, _)) = &bar {
                b.finish_and_clear();
            }
            let lost = if a.force && r.sole_copies > 0 {
                format!(
                    "; {} object(s) had no other copy and are lost",
                    r.sole_copies
                )
            } else {
                String::new()
            };
            println!(
                "removed node {} ({} object location(s) forgotten){lost}",
                a.node, r.objects
            );
            return Ok(());
        }
        let (b, total) = bar.get_or_insert_with(|| {
            let b = ProgressBar::new(r.sole_copies);
            b.set_message(format!("copying objects only {} holds", a.node));
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} {pos}/{len} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            (b, r.sole_copies)
        });
        b.set_position(total.saturating_sub(r.sole_copies));
        if Instant::now() >= deadline {
            b.finish_and_clear();
            bail!(
                "node {} kept: {} object(s) still have no other copy after {}; run again to \
                 go on waiting",
                a.node,
                r.sole_copies,
                humantime::format_duration(a.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Mounts of `volume` this host knows of: mounted ones (from /proc/mounts)
/// and state directories under the local slave's data directory whose
/// upper holds changes.
fn local_mounts(volume: &VolumeName, slave_data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let fsname = format!("elton:{volume}");
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        for l in mounts.lines() {
            let mut f = l.split_whitespace();
            if let (Some(src), Some(dst)) = (f.next(), f.next())
                && src == fsname
            {
                out.push(format!("mounted at {dst}"));
            }
        }
    }
    if let Ok(dirs) = std::fs::read_dir(slave_data.join("mounts")) {
        let prefix = format!("{volume}-");
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let dirty =
                std::fs::read_dir(d.path().join("upper")).is_ok_and(|mut r| r.next().is_some());
            if name.starts_with(&prefix) && dirty {
                out.push(format!("uncommitted changes in {}", d.path().display()));
            }
        }
    }
    out
}

pub async fn volume_rm(ep: &Endpoints, a: VolumeRmArgs) -> Result<()> {
    let volume: VolumeName = a.volume.parse()?;
    let slave_data = std::env::var_os("ELTON_SLAVE_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| super::default_data_dir().join("slave"));
    let in_use = local_mounts(&volume, &slave_data);
    if !in_use.is_empty() && !a.force {
        bail!(
            "volume {volume} is in use on this host ({}); unmount it and commit or drop the \
             changes first, or delete anyway with --force",
            in_use.join("; ")
        );
    }
    let mut master = ep.master().await?;
    let r = master
        .delete_volume(DeleteVolumeRequest {
            name: volume.to_string(),
            dry_run: a.dry_run,
        })
        .await
        .map_err(status)?
        .into_inner();
    let what = if r.head == 0 {
        "no version".to_string()
    } else {
        format!("{} version(s), head {}", r.versions, r.head)
    };
    if r.deleted {
        println!(
            "removed volume {volume} ({what}); `elton gc` reclaims the objects no other \
             version uses; the name cannot be used again"
        );
    } else {
        println!("would remove volume {volume} ({what})");
    }
    Ok(())
}
