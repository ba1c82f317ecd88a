//! Read-side subcommands: `volume create|ls`, `ls`, `cat`, `log`.

use std::io::Write;

use anyhow::{Context, Result, bail};
use elton_proto::pb::{CreateVolumeRequest, ListVersionsRequest, ListVolumesRequest};
use elton_proto::{Entry, EntryKind, VersionInfo};
use futures::StreamExt;

use super::client::{Endpoints, check, status};
use crate::spec::Spec;

pub async fn volume_create(ep: &Endpoints, name: &str, keep: u64) -> Result<()> {
    let v = ep
        .master()
        .await?
        .create_volume(CreateVolumeRequest {
            name: name.into(),
            keep,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("created volume {} (home {})", v.name, v.home);
    Ok(())
}

pub async fn volume_ls(ep: &Endpoints) -> Result<()> {
    let list = ep
        .master()
        .await?
        .list_volumes(ListVolumesRequest {})
        .await
        .map_err(status)?;
    println!("{:<32} {:>8} HOME", "VOLUME", "HEAD");
    for v in list.into_inner().volumes {
        let head = if v.head == 0 {
            "-".to_string()
        } else {
            v.head.to_string()
        };
        println!("{:<32} {head:>8} {}", v.name, v.home);
    }
    Ok(())
}

async fn get(ep: &Endpoints, spec: &Spec) -> Result<reqwest::Response> {
    let url = ep.slave_url(&spec.url_path());
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("contacting slave {}", ep.slave))?;
    check(resp).await.with_context(|| spec.to_string())
}

fn is_listing(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
        && resp.headers().get("etag").is_some()
}

pub async fn ls(ep: &Endpoints, spec: &Spec) -> Result<()> {
    let resp = get(ep, spec).await?;
    if !is_listing(&resp) && !resp.headers().contains_key("x-elton-type") {
        bail!("{spec} is not a directory");
    }
    let json: serde_json::Value = resp.json().await.context("reading listing")?;
    if json.get("type").and_then(|t| t.as_str()) == Some("symlink") {
        println!(
            "{} -> {}",
            json["name"].as_str().unwrap_or(""),
            json["target"].as_str().unwrap_or("")
        );
        return Ok(());
    }
    let Some(entries) = json.get("entries") else {
        // A file: the server sent its bytes, not a listing.
        bail!("{spec} is not a directory");
    };
    let entries: Vec<Entry> = serde_json::from_value(entries.clone()).context("parsing listing")?;
    let mut out = std::io::stdout().lock();
    for e in entries {
        let kind = match e.kind {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
        };
        let link = e.target.map(|t| format!(" -> {t}")).unwrap_or_default();
        writeln!(
            out,
            "{kind}{:04o} {:>5} {:>5} {:>12} {}{link}",
            e.mode, e.uid, e.gid, e.size, e.name
        )?;
    }
    Ok(())
}

pub async fn cat(ep: &Endpoints, spec: &Spec) -> Result<()> {
    let resp = get(ep, spec).await?;
    if is_listing(&resp) || resp.headers().contains_key("x-elton-type") {
        bail!("{spec} is not a regular file");
    }
    let mut body = resp.bytes_stream();
    let mut out = tokio::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading from slave")?;
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    Ok(())
}

pub async fn log(ep: &Endpoints, volume: &str, json: bool) -> Result<()> {
    let list = ep
        .master()
        .await?
        .list_versions(ListVersionsRequest {
            volume: volume.into(),
        })
        .await
        .map_err(status)?
        .into_inner();
    if list.versions.is_empty() && !json {
        // stdout stays empty for scripts; a person learns why.
        eprintln!("{volume} has no versions yet");
    }
    let mut out = std::io::stdout().lock();
    for record in list.versions.into_iter().rev() {
        let v = VersionInfo::try_from(record).context("bad version record from master")?;
        if json {
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
            continue;
        }
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(v.time);
        writeln!(
            out,
            "version {}  {}  {}@{}",
            v.version,
            humantime::format_rfc3339_seconds(when),
            v.author,
            v.host
        )?;
        writeln!(out, "    root {}", v.root)?;
        writeln!(out, "    {}", v.message)?;
    }
    Ok(())
}
