//! `elton-raftbench`: the control plane benchmark's load generator. Speaks to
//! etcd (v3 gRPC) and to Elton's control group (`Control.Submit`) with the
//! same workload; prints one JSON line per measurement on stdout. Driven by
//! `bench/control.sh`.
//!
//!   elton-raftbench load --system etcd --endpoints URL,URL,URL --clients 16
//!   elton-raftbench failover --system elton --member NAME=URL=PIDFILE ...

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use elton_tests::raftbench::{Writer, elton, etcd, failover, load};
use serde_json::json;

#[derive(Parser)]
#[command(name = "elton-raftbench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Elton: a bearer token of scope write (not needed by --insecure
    /// masters).
    #[arg(long, global = true, env = "ELTON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Elton: the cluster CA certificate, for https members.
    #[arg(long, global = true, env = "ELTON_CA")]
    ca: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum System {
    Etcd,
    Elton,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop small writes with N concurrent clients.
    Load {
        #[arg(long, value_enum)]
        system: System,
        /// Members' client URLs; clients are spread over them.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        warmup_seconds: u64,
        /// Bytes of each value (keys are 14 bytes).
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
    },
    /// Kills the leader (SIGKILL) and prints the ms until the next
    /// acknowledged write. The killed member stays down: restart it.
    Failover {
        #[arg(long, value_enum)]
        system: System,
        /// NAME=URL=PIDFILE for every member.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        #[arg(long, default_value_t = 30)]
        limit_seconds: u64,
    },
}

struct Member {
    name: String,
    url: String,
    pidfile: String,
}

fn parse_member(s: &str) -> Result<Member> {
    let mut parts = s.splitn(3, '=');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(url), Some(pidfile)) => Ok(Member {
            name: name.into(),
            url: url.into(),
            pidfile: pidfile.into(),
        }),
        _ => bail!("--member {s:?}: expected NAME=URL=PIDFILE"),
    }
}

fn kill_member(m: &Member) -> Result<()> {
    let pid: i32 = std::fs::read_to_string(&m.pidfile)
        .with_context(|| format!("reading {}", m.pidfile))?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid", m.pidfile))?;
    let pid =
        rustix::process::Pid::from_raw(pid).with_context(|| format!("{}: not a pid", m.pidfile))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .with_context(|| format!("kill -9 {} ({})", pid.as_raw_nonzero(), m.name))?;
    Ok(())
}

async fn writers_etcd(endpoints: &[String], n: usize) -> Result<Vec<etcd::EtcdWriter>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(etcd::connect(&endpoints[i % endpoints.len()]).await?);
    }
    Ok(out)
}

async fn writers_elton(
    endpoints: &[String],
    n: usize,
    auth: &elton::Auth,
) -> Result<Vec<elton::EltonWriter>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(elton::connect(&endpoints[i % endpoints.len()], auth).await?);
    }
    Ok(out)
}

async fn run_load<W: Writer>(
    system: &str,
    writers: Vec<W>,
    warmup: Duration,
    duration: Duration,
    value_bytes: usize,
) {
    let clients = writers.len();
    let s = load::run(writers, warmup, duration, value_bytes).await;
    println!(
        "{}",
        json!({"system": system, "test": "load", "clients": clients, "value_bytes": value_bytes,
               "ops": s.ops, "errors": s.errors, "seconds": s.seconds,
               "writes_per_s": s.writes_per_s, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms})
    );
}

async fn run(cli: Cli) -> Result<()> {
    let auth = elton::Auth {
        token: cli.token,
        ca_pem: match &cli.ca {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        },
    };
    match cli.cmd {
        Cmd::Load {
            system,
            endpoints,
            clients,
            seconds,
            warmup_seconds,
            value_bytes,
        } => {
            if clients == 0 {
                bail!("--clients must be at least 1");
            }
            let warmup = Duration::from_secs(warmup_seconds);
            let duration = Duration::from_secs(seconds);
            match system {
                System::Etcd => {
                    let w = writers_etcd(&endpoints, clients).await?;
                    run_load("etcd", w, warmup, duration, value_bytes).await;
                }
                System::Elton => {
                    let w = writers_elton(&endpoints, clients, &auth).await?;
                    run_load("elton", w, warmup, duration, value_bytes).await;
                }
            }
        }
        Cmd::Failover {
            system,
            members,
            limit_seconds,
        } => {
            let members = members
                .iter()
                .map(|m| parse_member(m))
                .collect::<Result<Vec<_>>>()?;
            let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
            let limit = Duration::from_secs(limit_seconds);
            let (leader, took) = match system {
                System::Etcd => {
                    let leader = etcd::leader(&urls).await?;
                    let mut survivors = Vec::new();
                    for (i, u) in urls.iter().enumerate() {
                        if i != leader {
                            survivors.push(etcd::connect(u).await?);
                        }
                    }
                    let took =
                        failover::measure(&survivors, || kill_member(&members[leader]), limit)
                            .await?;
                    (leader, took)
                }
                System::Elton => {
                    let name = elton::leader(&urls, &auth).await?;
                    let leader = members
                        .iter()
                        .position(|m| m.name == name)
                        .with_context(|| format!("the leader {name:?} is not among --member"))?;
                    let mut survivors = Vec::new();
                    for (i, u) in urls.iter().enumerate() {
                        if i != leader {
                            survivors.push(elton::connect(u, &auth).await?);
                        }
                    }
                    let took =
                        failover::measure(&survivors, || kill_member(&members[leader]), limit)
                            .await?;
                    (leader, took)
                }
            };
            println!(
                "{}",
                json!({"system": format!("{system:?}").to_lowercase(), "test": "failover",
                       "killed": members[leader].name,
                       "failover_ms": took.as_secs_f64() * 1000.0})
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("elton-raftbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("elton-raftbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
