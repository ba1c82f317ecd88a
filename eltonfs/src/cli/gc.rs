//! `elton gc` and `elton volume retention`: garbage collection on demand
//! (admin token), with progress on stderr and a summary (text or JSON).

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use elton_proto::pb::{GcRequest, GcSummary, SetRetentionRequest, gc_event};
use indicatif::ProgressBar;

use super::client::{Endpoints, status};

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Grace period in seconds: objects that arrived or were used on their
    /// slave more recently are kept [default: the master's --gc-grace-ms].
    #[arg(long)]
    pub grace_secs: Option<f64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn gc(ep: &Endpoints, a: GcArgs) -> Result<()> {
    let grace_ms = match a.grace_secs {
        None => 0,
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).as_millis().max(1) as u64,
        Some(s) => bail!("--grace-secs {s}: must be above 0"),
    };
    let mut stream = ep
        .master()
        .await?
        .gc(GcRequest {
            dry_run: a.dry_run,
            grace_ms,
        })
        .await
        .map_err(status)?
        .into_inner();
    let progress = ProgressBar::new_spinner().with_message("walking versions");
    let mut summary = None;
    while let Some(event) = stream.message().await.map_err(status)? {
        match event.event {
            Some(gc_event::Event::Progress(p)) => {
                let what = match p.phase.as_str() {
                    "walk" => "walking versions",
                    "sweep" => "slaves sweeping",
                    other => other,
                };
                progress.set_message(format!("{what}: {}/{}", p.done, p.total));
                progress.tick();
            }
            Some(gc_event::Event::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    progress.finish_and_clear();
    let Some(s) = summary else {
        bail!("the master ended garbage collection without a summary");
    };
    if a.json {
        println!("{}", summary_json(&s));
    } else {
        print_summary(&s);
    }
    if !s.nodes_skipped.is_empty() {
        eprintln!("elton: warning: not swept: {}", s.nodes_skipped.join("; "));
    }
    Ok(())
}

fn summary_json(s: &GcSummary) -> serde_json::Value {
    serde_json::json!({
        "dry_run": s.dry_run,
        "grace_ms": s.grace_ms,
        "versions": s.versions,
        "live_objects": s.live_objects,
        "candidates": s.candidates,
        "deleted": s.deleted,
        "deleted_bytes": s.deleted_bytes,
        "kept_in_use": s.kept_in_use,
        "nodes_swept": s.nodes_swept,
        "nodes_skipped": s.nodes_skipped,
        "duration_ms": s.duration_ms,
    })
}

fn print_summary(s: &GcSummary) {
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    println!(
        "walked {} versions: {} objects referenced",
        s.versions, s.live_objects
    );
    println!(
        "{verb} {} of {} old objects offered by {} slaves ({} bytes); {} kept because they were used meanwhile",
        s.deleted,
        s.candidates,
        s.nodes_swept.len(),
        s.deleted_bytes,
        s.kept_in_use
    );
    println!("took {} ms", s.duration_ms);
}

pub async fn retention(ep: &Endpoints, volume: &str, keep: u64) -> Result<()> {
    let info = ep
        .master()
        .await?
        .set_retention(SetRetentionRequest {
            volume: volume.into(),
            keep,
        })
        .await
        .map_err(status)?
        .into_inner();
    let policy = match info.keep {
        0 => "every version".to_string(),
        n => format!("the newest {n} versions"),
    };
    match info.oldest {
        0 => println!("{}: keeps {policy}; no version yet", info.name),
        oldest => println!(
            "{}: keeps {policy}; versions {}..{} remain",
            info.name, oldest, info.head
        ),
    }
    Ok(())
}
