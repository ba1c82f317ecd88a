//! `elton scrub`: asks slaves to re-hash their whole store now (admin
//! token), shows progress, prints what was bad and whether it was repaired.

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use elton_proto::pb::ListNodesRequest;
use elton_slave::scrub::{SHARDS, ScrubEvent, ScrubReport};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde::Serialize;

use super::client::{Endpoints, check, status};

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// Scrub every slave the master lists as up (default: the slave at
    /// --slave).
    #[arg(long, conflicts_with = "node")]
    pub all: bool,
    /// Scrub the slave with this node id (its address from the master).
    #[arg(long)]
    pub node: Option<String>,
    /// Bound the scrub to this many MiB/s (0: as fast as the disk goes).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Print a JSON summary on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One slave's result.
#[derive(Serialize)]
struct SlaveResult {
    slave: String,
    #[serde(flatten)]
    report: ScrubReport,
    /// Ids of the bad objects and mount copies found.
    bad_objects: Vec<String>,
    seconds: f64,
}

#[derive(Serialize)]
struct Summary {
    objects: u64,
    bytes: u64,
    bad: u64,
    repaired: u64,
    mount_copies: u64,
    mount_copies_bad: u64,
    seconds: f64,
    slaves: Vec<SlaveResult>,
}

pub async fn scrub(ep: &Endpoints, a: ScrubArgs) -> Result<()> {
    let token = ep.token()?;
    let slaves = targets(ep, &a).await?;
    let started = Instant::now();
    let http = reqwest::Client::new();
    let mut results = Vec::new();
    for url in slaves {
        let r = scrub_one(&http, &url, &token, &a)
            .await
            .with_context(|| format!("scrubbing {url}"))?;
        results.push(r);
    }
    let sum = |f: fn(&ScrubReport) -> u64| results.iter().map(|r| f(&r.report)).sum::<u64>();
    let summary = Summary {
        objects: sum(|r| r.objects),
        bytes: sum(|r| r.bytes),
        bad: sum(|r| r.bad),
        repaired: sum(|r| r.repaired),
        mount_copies: sum(|r| r.mount_copies),
        mount_copies_bad: sum(|r| r.mount_copies_bad),
        seconds: started.elapsed().as_secs_f64(),
        slaves: results,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "scrubbed {} objects ({}) on {} slave(s) in {:.1} s: {} bad, {} repaired; {} mount copies checked, {} bad (removed)",
            summary.objects,
            HumanBytes(summary.bytes),
            summary.slaves.len(),
            summary.seconds,
            summary.bad,
            summary.repaired,
            summary.mount_copies,
            summary.mount_copies_bad
        );
    }
    if summary.repaired < summary.bad {
        bail!(
            "{} corrupt objects could not be repaired (no other holder had a good copy); they are quarantined and withdrawn",
            summary.bad - summary.repaired
        );
    }
    Ok(())
}

/// The slave URLs to scrub.
async fn targets(ep: &Endpoints, a: &ScrubArgs) -> Result<Vec<String>> {
    if !a.all && a.node.is_none() {
        return Ok(vec![ep.slave.trim_end_matches('/').to_string()]);
    }
    let nodes = ep
        .master()
        .await?
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .nodes;
    if let Some(id) = &a.node {
        let n = nodes
            .iter()
            .find(|n| &n.node_id == id)
            .ok_or_else(|| anyhow!("the master knows no node {id:?}"))?;
        return Ok(vec![format!("http://{}", n.http_addr)]);
    }
    let up: Vec<String> = nodes
        .iter()
        .filter(|n| n.up)
        .map(|n| format!("http://{}", n.http_addr))
        .collect();
    if up.is_empty() {
        bail!("the master lists no slave that is up");
    }
    Ok(up)
}

async fn scrub_one(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    a: &ScrubArgs,
) -> Result<SlaveResult> {
    let started = Instant::now();
    let mut resp = check(
        http.post(format!("{url}/v1/scrub?rate={}", a.rate))
            .bearer_auth(token)
            .send()
            .await?,
    )
    .await?;
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} shards {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(u64::from(SHARDS))
        .with_style(style)
        .with_prefix(format!("scrub {url}"));
    let mut buf = Vec::new();
    let mut bad_objects = Vec::new();
    let mut summary = None;
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: ScrubEvent = serde_json::from_slice(&line)
                .with_context(|| format!("malformed progress line from {url}"))?;
            match event {
                ScrubEvent::Progress(r) => {
                    bar.set_position(u64::from(r.shards_done));
                    bar.set_message(format!(
                        "{} objects, {}, {} bad",
                        r.objects,
                        HumanBytes(r.bytes),
                        r.bad
                    ));
                }
                ScrubEvent::Bad {
                    what,
                    object,
                    repaired,
                } => {
                    if !a.json {
                        let outcome = if repaired {
                            "repaired from another holder"
                        } else if what == "object" {
                            "NOT repaired (quarantined and withdrawn)"
                        } else {
                            "removed; the mount assembles it again"
                        };
                        bar.suspend(|| println!("bad {what} {object} on {url}: {outcome}"));
                    }
                    bad_objects.push(object);
                }
                ScrubEvent::Summary(r) => summary = Some(r),
            }
        }
    }
    bar.finish_and_clear();
    let report = summary.ok_or_else(|| anyhow!("{url} ended the scrub without a summary"))?;
    Ok(SlaveResult {
        slave: url.to_string(),
        report,
        bad_objects,
        seconds: started.elapsed().as_secs_f64(),
    })
}
