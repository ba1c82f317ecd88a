//! `elton limit`: drcond's CPU, memory and IO limits on processes of the
//! control group's hosts. A limit is desired state in the group; every
//! host it names makes its cgroups match (see `docs/operations.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use elton_control::direct::DirectResult;
use elton_control::drcond::status::HostLimits;
use elton_control::drcond::{Limit, LimitSpec, Resources, Selector, parse};
use elton_control::{Action, Command, NodeResult, Response, Targets};
use elton_proto::control_pb::{QueryRequest, StatusRequest};

use super::Endpoints;
use super::client::status;
use super::control::{Client, client, submit};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LimitArgs {
    #[command(subcommand)]
    pub command: Option<LimitCommand>,
    #[command(flatten)]
    pub set: SetArgs,
}

#[derive(Subcommand, Debug)]
pub enum LimitCommand {
    /// The limits in force.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lift a limit: its processes go back to their groups.
    Release {
        /// The limit's id (`elton limit ls`).
        id: u64,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("selector").args(["pid", "name", "cgroup"])))]
pub struct SetArgs {
    /// One process.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Processes whose command name or line contains this (also ones that
    /// start later).
    #[arg(long)]
    pub name: Option<String>,
    /// Processes in this cgroup or below (a /proc/PID/cgroup path).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// A member's node name (repeatable) [default: the master asked].
    #[arg(long, conflicts_with = "all")]
    pub host: Vec<String>,
    /// Every member of the control group.
    #[arg(long)]
    pub all: bool,
    /// CPU, in percent of one core (150% = one and a half cores).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory, e.g. 512M.
    #[arg(long)]
    pub memory: Option<String>,
    /// Read rate from --dev per second, e.g. 10M.
    #[arg(long)]
    pub io_read: Option<String>,
    /// Write rate to --dev per second, e.g. 10M.
    #[arg(long)]
    pub io_write: Option<String>,
    /// The block device of the IO limits, MAJ:MIN (see lsblk).
    #[arg(long)]
    pub dev: Option<String>,
    /// Release the limit after this long (e.g. 60s, 10m).
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub for_: Option<Duration>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn limit(ep: &Endpoints, a: LimitArgs) -> Result<()> {
    let mut c = client(ep).await?;
    match a.command {
        Some(LimitCommand::Ls { json }) => {
            let limits = match submit(&mut c, Command::Limits).await? {
                Response::Limits { limits } => limits,
                other => bail!("unexpected answer: {other:?}"),
            };
            let names = member_names(&mut c).await?;
            let report = if limits.is_empty() {
                DirectResult::default()
            } else {
                host_reports(&mut c).await
            };
            if json {
                let rows: Vec<serde_json::Value> = limits
                    .iter()
                    .map(|l| limit_json(l, &names, &report))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                print_limits(&limits, &names, &report);
            }
        }
        Some(LimitCommand::Release { id }) => {
            match submit(&mut c, Command::Release { id }).await? {
                Response::Released { id } => println!("released limit {id}"),
                Response::Rejected { reason } => bail!("{reason}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        None => set(&mut c, a.set).await?,
    }
    Ok(())
}

async fn set(c: &mut Client, a: SetArgs) -> Result<()> {
    let selector = match (a.pid, a.name, a.cgroup) {
        (Some(pid), None, None) => Selector::Pid { pid },
        (None, Some(name), None) => Selector::Name { name },
        (None, None, Some(path)) => Selector::Cgroup { path },
        _ => bail!("say which processes: --pid P, --name SUBSTR or --cgroup PATH"),
    };
    let opt = |v: Option<String>, f: fn(&str) -> Result<u64, String>| {
        v.map(|s| f(&s)).transpose().map_err(|e| anyhow!(e))
    };
    let resources = Resources {
        cpu_percent: a
            .cpu
            .map(|s| parse::percent(&s))
            .transpose()
            .map_err(|e| anyhow!(e))?,
        memory_bytes: opt(a.memory, parse::size)?,
        io_read_bps: opt(a.io_read, parse::size)?,
        io_write_bps: opt(a.io_write, parse::size)?,
        dev: a
            .dev
            .map(|s| parse::device(&s))
            .transpose()
            .map_err(|e| anyhow!(e))?,
    };
    let st = c
        .status(StatusRequest { local: false })
        .await
        .map_err(status)?
        .into_inner();
    let ids: BTreeMap<String, u64> = st
        .members
        .iter()
        .map(|m| (m.name.clone(), m.raft_id))
        .collect();
    let hosts = if a.all {
        Targets::All
    } else {
        let wanted = if a.host.is_empty() {
            vec![st.node.clone()]
        } else {
            a.host
        };
        let mut set = BTreeSet::new();
        for h in &wanted {
            set.insert(
                *ids.get(h)
                    .ok_or_else(|| anyhow!("host {h:?} is not a member of the control group"))?,
            );
        }
        Targets::Nodes { ids: set }
    };
    let spec = LimitSpec {
        selector,
        hosts,
        resources,
        for_ms: a
            .for_
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    spec.validate().map_err(|e| anyhow!(e))?;
    let names: BTreeMap<u64, String> = ids.into_iter().map(|(n, i)| (i, n)).collect();
    match submit(
        c,
        Command::Limit {
            spec,
            expires_at_ms: None,
        },
    )
    .await?
    {
        Response::Limited {
            id,
            hosts,
            expires_at_ms,
        } => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": id,
                        "hosts": hosts.iter().map(|h| name(&names, *h)).collect::<Vec<_>>(),
                        "expires_at_ms": expires_at_ms,
                    })
                );
            } else {
                let hosts: Vec<String> = hosts.iter().map(|h| name(&names, *h)).collect();
                println!("limit {id} on {}", hosts.join(", "));
            }
            Ok(())
        }
        Response::Rejected { reason } => bail!("{reason}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn member_names(c: &mut Client) -> Result<BTreeMap<u64, String>> {
    let st = c
        .status(StatusRequest { local: false })
        .await
        .map_err(status)?
        .into_inner();
    Ok(st
        .members
        .iter()
        .map(|m| (m.raft_id, m.name.clone()))
        .collect())
}

/// Every host's report on its limits (a direct query, not through the
/// log). Hosts that do not answer within 2 s are listed as missing; a
/// master too old to answer leaves the report empty, with a warning.
async fn host_reports(c: &mut Client) -> DirectResult {
    let asked = c
        .query(QueryRequest {
            action: serde_json::to_vec(&Action::LimitStatus).unwrap_or_default(),
            hosts: Vec::new(),
            all: true,
            deadline_ms: 2000,
            local: false,
        })
        .await;
    match asked {
        Ok(r) => serde_json::from_slice(&r.into_inner().result).unwrap_or_else(|e| {
            eprintln!("warning: unreadable host reports: {e}");
            DirectResult::default()
        }),
        Err(e) => {
            eprintln!("warning: no host reports: {}", e.message());
            DirectResult::default()
        }
    }
}

/// Where limit `id` stands on `host`, as JSON: the host's own report
/// (`state`: applied or failed with `reason`; `procs`; `oom_kills`;
/// `held`: selected processes another host on the machine holds; `root`:
/// the host's cgroup root directory), pending with why (no pass of the
/// host has it yet), or `state` unknown with why.
fn host_state(report: &DirectResult, host: &str, id: u64) -> serde_json::Value {
    let unknown = |why: String| serde_json::json!({ "state": "unknown", "reason": why });
    if report.missing.iter().any(|m| m == host) {
        return unknown("no answer from the host".into());
    }
    match report.hosts.get(host) {
        None => unknown("not asked".into()),
        Some(NodeResult::Failed { error }) => unknown(error.clone()),
        Some(NodeResult::Ok { output }) => {
            match serde_json::from_value::<HostLimits>(output.clone()) {
                Err(e) => unknown(format!("unreadable report: {e}")),
                Ok(h) => {
                    let mut v = match (h.off, h.limits.into_iter().find(|l| l.id == id)) {
                        (Some(off), _) => {
                            serde_json::json!({ "state": "failed", "reason": format!("drcond is off on this host: {off}") })
                        }
                        (None, Some(l)) => serde_json::to_value(l).unwrap_or_default(),
                        (None, None) => serde_json::json!({
                            "state": "pending",
                            "reason": pending_reason(h.pass_at_ms),
                            "procs": [],
                            "oom_kills": 0,
                        }),
                    };
                    if let Some(root) = h.root {
                        v["root"] = root.into();
                    }
                    v
                }
            }
        }
    }
}

/// Why a host's report does not list a limit yet: a host reconciles on
/// every applied entry and every tick, so a last pass long ago means its
/// reconciler is stuck (its log says why). The age compares this
/// machine's clock with the host's, so it is off by their skew.
fn pending_reason(pass_at_ms: Option<u64>) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match pass_at_ms {
        None => "the host has not finished a reconcile pass yet".into(),
        Some(at) => {
            let ago = Duration::from_millis(now_ms.saturating_sub(at));
            if ago > 4 * elton_control::node::RECONCILE_TICK {
                format!(
                    "not in the host's last reconcile pass, {:.1} s ago: its reconciler is stuck (see its log)",
                    ago.as_secs_f64()
                )
            } else {
                format!(
                    "not in the host's last reconcile pass ({} ms ago); the next one applies it",
                    ago.as_millis()
                )
            }
        }
    }
}

fn state_text(v: &serde_json::Value) -> String {
    let mut text = v["state"].as_str().unwrap_or("unknown").to_string();
    if let Some(r) = v["reason"].as_str() {
        text.push_str(&format!(" ({r})"));
    }
    if let Some(procs) = v["procs"].as_array() {
        let pids: Vec<String> = procs.iter().map(ToString::to_string).collect();
        text.push_str(&format!(
            ", {} process{} [{}], {} OOM kill{}",
            procs.len(),
            if procs.len() == 1 { "" } else { "es" },
            pids.join(" "),
            v["oom_kills"].as_u64().unwrap_or(0),
            if v["oom_kills"].as_u64() == Some(1) {
                ""
            } else {
                "s"
            },
        ));
    }
    for h in v["held"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "; process {} not taken: another Elton host on this machine holds it in {}",
            h["pid"],
            h["group"].as_str().unwrap_or("?"),
        ));
    }
    text
}

fn name(names: &BTreeMap<u64, String>, id: u64) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

fn selector_text(s: &Selector) -> String {
    match s {
        Selector::Pid { pid } => format!("pid {pid}"),
        Selector::Name { name } => format!("name {name:?}"),
        Selector::Cgroup { path } => format!("cgroup {path}"),
    }
}

fn limit_json(
    l: &Limit,
    names: &BTreeMap<u64, String>,
    report: &DirectResult,
) -> serde_json::Value {
    let status: serde_json::Map<String, serde_json::Value> = l
        .hosts
        .iter()
        .map(|h| {
            let host = name(names, *h);
            let state = host_state(report, &host, l.id);
            (host, state)
        })
        .collect();
    serde_json::json!({
        "status": status,
        "id": l.id,
        "selector": l.selector,
        "hosts": l.hosts.iter().map(|h| name(names, *h)).collect::<Vec<_>>(),
        "resources": l.resources,
        "expires_at_ms": l.expires_at_ms,
    })
}

fn print_limits(limits: &[Limit], names: &BTreeMap<u64, String>, report: &DirectResult) {
    println!(
        "{:>6}  {:<24} {:<36} {:<20} HOSTS",
        "ID", "SELECTOR", "LIMITS", "EXPIRES"
    );
    for l in limits {
        let expires = l.expires_at_ms.map_or_else(
            || "-".to_string(),
            |ms| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            },
        );
        let hosts: Vec<String> = l.hosts.iter().map(|h| name(names, *h)).collect();
        println!(
            "{:>6}  {:<24} {:<36} {:<20} {}",
            l.id,
            selector_text(&l.selector),
            l.resources.to_string(),
            expires,
            hosts.join(",")
        );
        for host in &hosts {
            println!(
                "        {host}: {}",
                state_text(&host_state(report, host, l.id))
            );
        }
    }
}
