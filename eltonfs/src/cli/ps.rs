//! `elton ps`: the processes of one, some or every host of the control
//! group (k2i). A query changes nothing, so it takes the direct read path
//! (not the Raft log): the master asked reads its own `/proc` and asks the
//! other hosts over its member connections; hosts that miss the deadline
//! are listed.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use elton_control::k2i::ProcQuery;
use elton_control::k2i::answer::{HostAnswer, PsAnswer, decode, to_json};
use elton_proto::control_pb::QueryRequest;

use super::Endpoints;
use super::client::status;
use super::control::client;

/// What `elton --help` says `ps` does (shared with its lean command
/// line, `lean.rs`).
pub const ABOUT: &str =
    "List the processes of control group members (k2i): by host, read from each host's /proc";

#[derive(Args, Debug)]
pub struct PsArgs {
    /// A member's node name (repeatable) [default: the master asked].
    #[arg(long, conflicts_with = "all")]
    pub host: Vec<String>,
    /// Every member of the control group.
    #[arg(long)]
    pub all: bool,
    /// Only this process id.
    #[arg(long)]
    pub pid: Option<i32>,
    /// A substring of the command name or command line.
    #[arg(long)]
    pub name: Option<String>,
    /// Processes in this cgroup or below it (a path as in /proc/PID/cgroup).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// How long CPU use is sampled over; 0ms: each process's average over
    /// its life, as `ps` shows it (no wait).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// How long to wait for the hosts' answers; later ones are listed as
    /// missing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn ps(ep: &Endpoints, a: PsArgs) -> Result<()> {
    let query = ProcQuery {
        pid: a.pid,
        name: a.name.clone(),
        cgroup: a.cgroup.clone(),
        window_ms: u64::try_from(a.window.as_millis()).unwrap_or(u64::MAX),
    };
    let action = elton_control::Action::Ps { query };
    elton_control::direct::select::check(&action, a.deadline).map_err(|e| anyhow!("{e}"))?;
    let mut c = client(ep).await?;
    let r = c
        .query(QueryRequest {
            action: serde_json::to_vec(&action).context("encoding the query")?,
            hosts: a.host.clone(),
            all: a.all,
            deadline_ms: u32::try_from(a.deadline.as_millis()).unwrap_or(u32::MAX),
            local: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    let PsAnswer {
        hosts: answers,
        missing,
    } = decode(&r.result).context("the member's answer")?;
    // One buffered write, not one per line (stdout is line-buffered): a
    // whole host's table is a few hundred lines.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if a.json {
        writeln!(out, "{}", to_json(&answers, &missing))?;
    } else {
        print_table(&mut out, &answers, &missing)?;
    }
    out.flush()?;
    Ok(())
}

fn print_table(
    out: &mut impl Write,
    answers: &[(String, HostAnswer)],
    missing: &[String],
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:>7} {:>7} {:<10} {:<2} {:>6} {:>10} {:<20} COMMAND",
        "HOST", "PID", "PPID", "USER", "S", "CPU%", "RSS", "STARTED"
    )?;
    for (host, a) in answers {
        match a {
            HostAnswer::Procs(p) => {
                for pr in &p.procs {
                    let cmd = if pr.cmdline.is_empty() {
                        format!("[{}]", pr.name)
                    } else {
                        pr.cmdline.join(" ")
                    };
                    let started = humantime::format_rfc3339_seconds(
                        UNIX_EPOCH + Duration::from_secs(pr.start_time),
                    );
                    writeln!(
                        out,
                        "{:<12} {:>7} {:>7} {:<10} {:<2} {:>6.1} {:>10} {:<20} {}",
                        host,
                        pr.pid,
                        pr.ppid,
                        pr.user,
                        pr.state,
                        pr.cpu_percent,
                        pr.rss_bytes,
                        started,
                        cmd
                    )?;
                }
                if p.truncated > 0 {
                    out.flush()?;
                    eprintln!(
                        "{host}: {} more processes left out (answer size limit; filter with --name, --pid or --cgroup)",
                        p.truncated
                    );
                }
            }
            HostAnswer::Failed(e) => {
                out.flush()?;
                eprintln!("{host}: failed: {e}");
            }
        }
    }
    out.flush()?;
    for m in missing {
        eprintln!("{m}: no answer before the deadline");
    }
    Ok(())
}
