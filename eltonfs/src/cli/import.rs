//! `elton import <dir> <volume>`: scan, upload objects to the slave, then
//! commit. The commit is the last step and atomic, so an interrupted import
//! publishes nothing (uploaded objects are harmless: content-addressed).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use elton_proto::pb::{CreateVolumeRequest, GetVolumeRequest};
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{Endpoints, check, status};
use crate::upload::{self, Item, Source};
use crate::walk;

#[derive(Args, Debug)]
pub struct ImportArgs {
    pub dir: PathBuf,
    pub volume: String,
    /// Commit message.
    #[arg(short, long, default_value = "import")]
    pub message: String,
    /// Create the volume if it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Expected head (compare-and-set); default: the current head.
    #[arg(long)]
    pub parent: Option<u64>,
    /// Files larger than this many bytes are stored as content-defined
    /// chunks plus a recipe (default 4 MiB).
    #[arg(long, default_value_t = crate::chunking::DEFAULT_THRESHOLD)]
    pub chunk_threshold: u64,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{what:>9} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb
}

pub async fn import(ep: &Endpoints, args: ImportArgs) -> Result<()> {
    let token = ep.token()?;
    let mut master = ep.master().await?;
    let volume = args.volume.clone();
    let head = match master
        .get_volume(GetVolumeRequest {
            name: volume.clone(),
        })
        .await
    {
        Ok(v) => v.into_inner().head,
        Err(e) if e.code() == tonic::Code::NotFound && args.create => {
            master
                .create_volume(CreateVolumeRequest {
                    name: volume.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status)?;
            0
        }
        Err(e) => return Err(status(e)),
    };
    let parent = args.parent.unwrap_or(head);

    let dir = args.dir.clone();
    let threshold = args.chunk_threshold;
    let hashing = ProgressBar::new_spinner().with_message("scanning");
    let h = hashing.clone();
    let scan = tokio::task::spawn_blocking(move || {
        walk::scan(&dir, threshold, &mut |bytes| {
            h.inc(bytes);
            h.set_message(format!("hashed {}", indicatif::HumanBytes(h.position())));
        })
    })
    .await??;
    hashing.finish_and_clear();
    let root = scan.root()?;

    let total: u64 = scan.files.values().map(|(_, s)| s).sum::<u64>()
        + scan.chunks.values().map(|(_, _, s)| s).sum::<u64>()
        + scan
            .manifests
            .iter()
            .chain(&scan.recipes)
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>();
    let pb = bar(total, "uploading");
    let http = reqwest::Client::new();
    let data = scan
        .files
        .iter()
        .map(|(id, (path, size))| Item {
            id: *id,
            size: *size,
            source: Source::File(path.clone()),
        })
        .chain(scan.chunks.iter().map(|(id, (path, offset, size))| Item {
            id: *id,
            size: *size,
            source: Source::Chunk(path.clone(), *offset),
        }))
        .collect();
    let trees = scan
        .recipes
        .iter()
        .chain(&scan.manifests)
        .map(|(id, bytes)| Item {
            id: *id,
            size: bytes.len() as u64,
            source: Source::Bytes(bytes.clone()),
        })
        .collect();
    // Files and chunks first, then recipes and manifests (children first),
    // so that whenever a recipe or manifest is stored, what it names is
    // already there.
    upload::upload_groups(
        &http,
        &ep.slave_url("/v1/objects"),
        &token,
        vec![data, trees],
        &pb,
    )
    .await
    .with_context(|| format!("uploading to slave {}", ep.slave))?;
    pb.finish_and_clear();

    let body = serde_json::json!({
        "parent": parent,
        "root": root,
        "message": args.message,
        "author": whoami(),
        "host": hostname(),
    });
    let resp = http
        .post(ep.slave_url(&format!("/v1/volumes/{volume}/versions")))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("contacting slave {}", ep.slave))?;
    let record: serde_json::Value = check(resp).await?.json().await?;
    for p in &scan.skipped {
        eprintln!(
            "elton: skipped {} (not a file, directory or symlink)",
            p.display()
        );
    }
    println!(
        "{volume}@{}: {} files, {} bytes, root {root}",
        record["version"],
        scan.file_count,
        scan.files.values().map(|(_, s)| s).sum::<u64>()
            + scan.chunks.values().map(|(_, _, s)| s).sum::<u64>()
    );
    Ok(())
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
