//! `elton import <dir> <volume>`: scan, upload objects to the slave, then
//! commit. The commit is the last step and atomic, so an interrupted import
//! publishes nothing (uploaded objects are harmless: content-addressed).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use elton_proto::ObjectId;
use elton_proto::pb::{CreateVolumeRequest, GetVolumeRequest};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::io::ReaderStream;

use super::client::{Endpoints, check, status};
use crate::walk;

/// Uploads in flight at once.
const PARALLEL_UPLOADS: usize = 8;

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
    let http = reqwest::Client::new();
    if head != 0 && !args.allow_empty && head_root(ep, &http, &volume, head).await? == root {
        eprintln!(
            "nothing to import: {volume}@{head} already has this tree (root {root}); \
             pass --allow-empty to publish a version anyway"
        );
        return Ok(());
    }

    let total: u64 = scan.files.values().map(|(_, s)| s).sum::<u64>()
        + scan.chunks.values().map(|(_, _, s)| s).sum::<u64>()
        + scan
            .manifests
            .iter()
            .chain(&scan.recipes)
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>();
    let pb = bar(total, "uploading");
    let token = Arc::new(token);
    let files = scan
        .files
        .iter()
        .map(|(id, (path, size))| Upload::File(*id, path.clone(), *size));
    let chunks = scan
        .chunks
        .iter()
        .map(|(id, (path, offset, size))| Upload::Chunk(*id, path.clone(), *offset, *size));
    let manifests = scan
        .recipes
        .iter()
        .chain(&scan.manifests)
        .map(|(id, bytes)| Upload::Bytes(*id, bytes.clone()));
    // Files and chunks first, then recipes, then manifests children-first,
    // so that whenever a recipe or manifest is stored, what it names is
    // already there.
    futures::stream::iter(files.chain(chunks).map(Ok))
        .try_for_each_concurrent(PARALLEL_UPLOADS, |u| upload(ep, &http, &token, u, &pb))
        .await?;
    for m in manifests {
        upload(ep, &http, &token, m, &pb).await?;
    }
    pb.finish_and_clear();

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
        .bearer_auth(token.as_str())
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

enum Upload {
    File(ObjectId, PathBuf, u64),
    /// A chunk of a large file: (path, offset, size).
    Chunk(ObjectId, PathBuf, u64, u64),
    Bytes(ObjectId, Vec<u8>),
}

async fn upload(
    ep: &Endpoints,
    http: &reqwest::Client,
    token: &str,
    item: Upload,
    pb: &ProgressBar,
) -> Result<()> {
    let (id, body, size, what) = match item {
        Upload::File(id, path, size) => {
            let f = tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let p = pb.clone();
            let stream = ReaderStream::with_capacity(f, 256 << 10).inspect(move |c| {
                if let Ok(c) = c {
                    p.inc(c.len() as u64);
                }
            });
            (
                id,
                reqwest::Body::wrap_stream(stream),
                size,
                path.display().to_string(),
            )
        }
        Upload::Chunk(id, path, offset, size) => {
            let p = path.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&p)?;
                let mut buf = vec![0u8; size as usize];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset)?;
                Ok::<_, std::io::Error>(buf)
            })
            .await?
            .with_context(|| format!("reading {}", path.display()))?;
            pb.inc(size);
            (
                id,
                reqwest::Body::from(bytes),
                size,
                format!("{} (chunk at {offset})", path.display()),
            )
        }
        Upload::Bytes(id, bytes) => {
            pb.inc(bytes.len() as u64);
            let n = bytes.len() as u64;
            (id, reqwest::Body::from(bytes), n, format!("manifest {id}"))
        }
    };
    let resp = http
        .put(ep.slave_url(&format!("/v1/objects/{id}")))
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await
        .with_context(|| format!("uploading {what} to {}", ep.slave))?;
    check(resp)
        .await
        .with_context(|| format!("uploading {what}"))?;
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
