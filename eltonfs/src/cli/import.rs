//! `elton import <dir> <volume>`: scan, upload objects to the slave, then
//! commit. The commit is the last step and atomic, so an interrupted import
//! publishes nothing (uploaded objects are harmless: content-addressed).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use elton_proto::ObjectId;
use elton_proto::pb::{CreateVolumeRequest, GetVolumeRequest};
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{Endpoints, check, status};
use crate::upload::{self, Item, Source};
use crate::walk;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The local directory to publish.
    pub dir: PathBuf,
    /// The volume to publish it to.
    pub volume: String,
    /// Commit message.
    #[arg(short, long, default_value = "import")]
    pub message: String,
    /// Create the volume if it does not exist (only once the import
    /// succeeds up to its commit).
    #[arg(long)]
    pub create: bool,
    /// Publish a version even when the tree equals the head's (as
    /// `git commit --allow-empty`).
    #[arg(long)]
    pub allow_empty: bool,
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
    // Checked before anything is created: a failed import leaves no trace.
    if !args.dir.is_dir() {
        bail!(
            "{} is not a directory; nothing was imported",
            args.dir.display()
        );
    }
    let token = ep.token()?;
    let mut master = ep.master().await?;
    let volume = args.volume.clone();
    let (head, create) = match master
        .get_volume(GetVolumeRequest {
            name: volume.clone(),
        })
        .await
    {
        Ok(v) => (v.into_inner().head, false),
        Err(e) if e.code() == tonic::Code::NotFound && args.create => (0, true),
        Err(e) if e.code() == tonic::Code::NotFound => bail!(
            "volume {volume} does not exist; pass --create to create it (nothing was imported)"
        ),
        Err(e) => return Err(status(e)),
    };
    let parent = args.parent.unwrap_or(head);

    // Phase times, for `ELTON_LOG=eltonfs=debug` (where an import's
    // time goes; docs/benchmarks.md).
    let started = std::time::Instant::now();
    let phase = |what: &str| {
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "import: {what}"
        )
    };
    let dir = args.dir.clone();
    let threshold = args.chunk_threshold;
    let hashing = ProgressBar::new_spinner().with_message("scanning");
    let h = hashing.clone();
    let mut scan = tokio::task::spawn_blocking(move || {
        walk::scan(&dir, threshold, &|bytes| {
            h.inc(bytes);
            h.set_message(format!("hashed {}", indicatif::HumanBytes(h.position())));
        })
    })
    .await??;
    hashing.finish_and_clear();
    phase("scanned and hashed");
    let root = scan.root()?;
    let http = reqwest::Client::new();

    let mut contents = std::mem::take(&mut scan.contents);
    let data: Vec<Item> = scan
        .files
        .iter()
        .map(|(id, (path, size))| Item {
            id: *id,
            size: *size,
            // The bytes the scan read and hashed, when it kept them.
            source: match contents.remove(id) {
                Some(bytes) => Source::Bytes(bytes),
                None => Source::File(path.clone()),
            },
        })
        .chain(scan.chunks.iter().map(|(id, (path, offset, size))| Item {
            id: *id,
            size: *size,
            source: Source::Chunk(path.clone(), *offset),
        }))
        .collect();
    let trees: Vec<Item> = scan
        .recipes
        .iter()
        .chain(&scan.manifests)
        .map(|(id, bytes)| Item {
            id: *id,
            size: bytes.len() as u64,
            source: Source::Bytes(bytes.clone()),
        })
        .collect();
    // Only what the slave lacks is sent: re-importing an unchanged tree
    // sends nothing, and an object a slave lost is sent again.
    let ids: Vec<ObjectId> = data.iter().chain(&trees).map(|i| i.id).collect();
    let lacking = upload::missing(&http, &ep.slave_url("/v1/objects/missing"), &token, &ids)
        .await
        .with_context(|| format!("asking slave {}", ep.slave))?;
    let (data, trees): (Vec<Item>, Vec<Item>) = (
        data.into_iter()
            .filter(|i| lacking.contains(&i.id))
            .collect(),
        trees
            .into_iter()
            .filter(|i| lacking.contains(&i.id))
            .collect(),
    );
    phase("asked the slave which objects it lacks");
    let total: u64 = data.iter().chain(&trees).map(|i| i.size).sum();
    let pb = bar(total, "uploading");
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
    phase("uploaded");

    // An identical tree publishes no version (as `git commit` with nothing
    // to commit), but only after the objects the slave lacked were sent:
    // re-importing is also how an operator puts back objects a slave lost.
    if head != 0 && !args.allow_empty && head_root(ep, &http, &volume, head).await? == root {
        eprintln!(
            "nothing to import: {volume}@{head} already has this tree (root {root}); \
             objects the slave lacked were stored again; pass --allow-empty to publish a \
             version anyway"
        );
        return Ok(());
    }

    // Created last, just before the commit: an import that failed earlier
    // (unreadable file, slave down) leaves no empty volume behind.
    if create {
        match master
            .create_volume(CreateVolumeRequest {
                name: volume.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            // Made meanwhile by someone else: the commit's compare-and-set
            // on version 0 still decides.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {}
            Err(e) => return Err(status(e)),
        }
    }
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
    phase("committed");
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

/// The root manifest of `volume`@`version`, as the slave serves it.
async fn head_root(
    ep: &Endpoints,
    http: &reqwest::Client,
    volume: &str,
    version: u64,
) -> Result<ObjectId> {
    let url = ep.slave_url(&format!("/v1/volumes/{volume}/{version}/"));
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("contacting slave {}", ep.slave))?;
    let j: serde_json::Value = check(resp).await?.json().await?;
    j["manifest"]
        .as_str()
        .unwrap_or("")
        .parse::<ObjectId>()
        .map_err(|e| anyhow::anyhow!("the slave answered a bad manifest id: {e}"))
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
