//! The master's metadata: `elton backup` (online, admin token) and the
//! report of `elton master --restore` (offline, on the master's host).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use elton_master::restore::RestoreReport;
use elton_proto::pb::BackupRequest;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{Endpoints, status};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the copy (replaced if it exists, only once complete).
    pub file: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

fn bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("   backup [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    pb.set_style(style);
    pb
}

/// Streams a consistent copy of the master's metadata into `file`: written
/// to a temp file next to it, checked for length, fsynced, then renamed, so
/// `file` is either the previous one or a complete copy.
pub async fn backup(ep: &Endpoints, a: BackupArgs) -> Result<()> {
    let mut master = ep.master().await?;
    let mut stream = master
        .backup(BackupRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let dir = match a.file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let first = stream
        .message()
        .await
        .map_err(status)?
        .context("the master sent no backup")?;
    let (size, cluster, incarnation, volumes) = (
        first.size,
        first.cluster_id.clone(),
        first.incarnation.clone(),
        first.volumes,
    );
    let progress = bar(size);
    let mut written = 0u64;
    let mut chunk = Some(first);
    while let Some(c) = chunk {
        tmp.write_all(&c.data)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        written += c.data.len() as u64;
        progress.set_position(written);
        chunk = stream.message().await.map_err(status)?;
    }
    progress.finish_and_clear();
    if written != size {
        bail!("the backup stream ended after {written} of {size} bytes; nothing was written");
    }
    tmp.as_file().sync_all().context("syncing the backup")?;
    tmp.persist(&a.file)
        .with_context(|| format!("writing {}", a.file.display()))?;
    sync_dir(&dir)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "file": a.file,
                "bytes": size,
                "volumes": volumes,
                "cluster_id": cluster,
                "incarnation": incarnation,
            })
        );
    } else {
        println!(
            "backed up {volumes} volume(s), {size} bytes, cluster {cluster} incarnation \
             {incarnation}, to {}",
            a.file.display()
        );
        println!(
            "restore it with `elton master --restore {}` (master stopped)",
            a.file.display()
        );
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Prints what a restore did: the new incarnation and every volume it
/// moved back (or why it could not tell).
pub fn print_restore(r: &RestoreReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "restored {} volume(s) of cluster {}: now incarnation {} (backup taken at incarnation \
         {}, data directory was at {})",
        r.volumes,
        r.cluster_id,
        r.incarnation,
        r.backup_incarnation.as_deref().unwrap_or("none"),
        r.previous_incarnation.as_deref().unwrap_or("none"),
    );
    if let Some(p) = &r.set_aside {
        println!("the replaced database was moved to {}", p.display());
    }
    match &r.not_compared_because {
        Some(why) => println!(
            "could not tell what was rolled back ({why}): versions issued after the backup may \
             be issued again, under the new incarnation; slaves drop what they cached of the old one"
        ),
        None if r.rolled_back.is_empty() => println!("nothing rolled back"),
        None => {
            println!(
                "rolled back (version numbers after the restored head will be issued again, under the new incarnation):"
            );
            for v in &r.rolled_back {
                match v.restored_head {
                    Some(h) => println!("  {:<20} head {} -> {h}", v.volume, v.last_head),
                    None => println!(
                        "  {:<20} head {} -> (not in the backup)",
                        v.volume, v.last_head
                    ),
                }
            }
        }
    }
    Ok(())
}
