//! `elton ps`: the processes of one, some or every host of the control
//! group (k2i). The leader orders a `ps` execution; each target reads its
//! own `/proc` and reports; hosts that miss the deadline are listed.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use elton_control::k2i::{HostProcs, ProcQuery};
use elton_control::{Action, Command, ExecutionResult, NodeResult, Request, RequestId, Targets};
use elton_proto::control_pb::{StatusRequest, SubmitRequest};

use super::Endpoints;
use super::client::status;
use super::control::{client, default_client_id};

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
    /// How long CPU use is sampled over.
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

/// One host's outcome, by name.
enum HostAnswer {
    Procs(HostProcs),
    Failed(String),
}

pub async fn ps(ep: &Endpoints, a: PsArgs) -> Result<()> {
    let mut c = client(ep).await?;
    let st = c
        .status(StatusRequest { local: false })
        .await
        .map_err(status)?
        .into_inner();
    if !st.initialized {
        bail!(
            "{} is in no control group (see `elton control init`)",
            st.node
        );
    }
    let ids: BTreeMap<String, u64> = st
        .members
        .iter()
        .map(|m| (m.name.clone(), m.raft_id))
        .collect();
    let names: BTreeMap<u64, String> = ids.iter().map(|(n, i)| (*i, n.clone())).collect();
    let targets = if a.all {
        Targets::All
    } else {
        let wanted = if a.host.is_empty() {
            vec![st.node.clone()]
        } else {
            a.host.clone()
        };
        let mut set = std::collections::BTreeSet::new();
        for h in &wanted {
            let id = ids.get(h).ok_or_else(|| {
                anyhow!(
                    "host {h:?} is not a member of the control group (members: {})",
                    ids.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            set.insert(*id);
        }
        Targets::Nodes { ids: set }
    };
    let query = ProcQuery {
        pid: a.pid,
        name: a.name.clone(),
        cgroup: a.cgroup.clone(),
        window_ms: u64::try_from(a.window.as_millis()).unwrap_or(u64::MAX),
    };
    query.validate().map_err(|e| anyhow!("{e}"))?;
    let request = Request::new(
        RequestId {
            client: default_client_id(),
            seq: 1,
        },
        Command::Execute {
            targets,
            action: Action::Ps { query },
            deadline_ms: u64::try_from(a.deadline.as_millis()).unwrap_or(u64::MAX),
        },
    );
    let r = c
        .submit(SubmitRequest {
            command: request.encode(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let result: ExecutionResult = match serde_json::from_slice(&r.response) {
        Ok(result) => result,
        Err(_) => {
            let v: serde_json::Value =
                serde_json::from_slice(&r.response).context("the member's response")?;
            bail!("ps was not run: {v}");
        }
    };
    let name_of = |id: &u64| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let mut answers = BTreeMap::new();
    for (id, res) in &result.results {
        let answer = match res {
            NodeResult::Ok { output } => match serde_json::from_value(output.clone()) {
                Ok(p) => HostAnswer::Procs(p),
                Err(e) => HostAnswer::Failed(format!("unreadable answer: {e}")),
            },
            NodeResult::Failed { error } => HostAnswer::Failed(error.clone()),
        };
        answers.insert(name_of(id), answer);
    }
    let missing: Vec<String> = result.missing.iter().map(name_of).collect();
    if a.json {
        println!("{}", to_json(&answers, &missing));
    } else {
        print_table(&answers, &missing);
    }
    Ok(())
}

fn to_json(answers: &BTreeMap<String, HostAnswer>, missing: &[String]) -> serde_json::Value {
    let hosts: serde_json::Map<String, serde_json::Value> = answers
        .iter()
        .map(|(host, a)| {
            let v = match a {
                HostAnswer::Procs(p) => serde_json::json!({
                    "procs": p.procs,
                    "truncated": p.truncated,
                }),
                HostAnswer::Failed(e) => serde_json::json!({ "error": e }),
            };
            (host.clone(), v)
        })
        .collect();
    serde_json::json!({ "hosts": hosts, "missing": missing })
}

fn print_table(answers: &BTreeMap<String, HostAnswer>, missing: &[String]) {
    println!(
        "{:<12} {:>7} {:>7} {:<10} {:<2} {:>6} {:>10} {:<20} COMMAND",
        "HOST", "PID", "PPID", "USER", "S", "CPU%", "RSS", "STARTED"
    );
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
                    println!(
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
                    );
                }
                if p.truncated > 0 {
                    eprintln!(
                        "{host}: {} more processes left out (answer size limit; filter with --name, --pid or --cgroup)",
                        p.truncated
                    );
                }
            }
            HostAnswer::Failed(e) => eprintln!("{host}: failed: {e}"),
        }
    }
    for m in missing {
        eprintln!("{m}: no answer before the deadline");
    }
}
