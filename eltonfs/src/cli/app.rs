//! `elton app`: FastContainer's configuration DB — web apps that run from
//! an Elton volume at a version, found by the `Host` of their requests.
//! The configuration is replicated state of the control group; every
//! value is checked before anything is proposed (see
//! `docs/operations.md`, "FastContainer apps").

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use elton_control::apps::fleet::{Fleet, InstanceRecord};
use elton_control::apps::spec::Unset;
use elton_control::apps::{App, AppPatch, AppSpec, parse};
use elton_control::drcond::parse as limits;
use elton_control::{Command, Response};
use elton_proto::pb::{GetVersionRequest, GetVolumeRequest};

use super::Endpoints;
use super::client::status;
use super::control::{app_view, client, submit};

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Add an app: requests for --host-name run --cmd (or --image) in
    /// --volume at its version.
    Create(CreateArgs),
    /// The apps.
    Ls {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One app's configuration.
    Show {
        /// The app's name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change an app's settings (the others are kept).
    Set(SetArgs),
    /// Run a new version of the app's volume.
    Deploy {
        /// The app's name.
        name: String,
        /// The volume version to run [default: the volume's head].
        #[arg(long)]
        version: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove an app.
    Rm {
        /// The app's name.
        name: String,
    },
}

/// The settings `create` and `set` share; on `set`, only those given
/// change.
#[derive(Args, Debug)]
pub struct Settings {
    /// The `Host` its requests carry, e.g. example.test.
    #[arg(long)]
    pub host_name: Option<String>,
    /// The Elton volume with its files: VOLUME[@VERSION] [default version:
    /// the head now].
    #[arg(long)]
    pub volume: Option<String>,
    /// Shell command run in the mounted volume; it must listen on $PORT.
    #[arg(long)]
    pub cmd: Option<String>,
    /// Run as a Docker container of this image.
    #[arg(long)]
    pub image: Option<String>,
    /// The environment variable with the port to listen on [default: PORT].
    #[arg(long)]
    pub port_env: Option<String>,
    /// Stop an instance after this long without a request [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
    /// Instances kept running however idle [default: 0].
    #[arg(long)]
    pub min: Option<u32>,
    /// Instances at most [default: 4].
    #[arg(long)]
    pub max: Option<u32>,
    /// Each instance's CPU, in percent of one core, e.g. 30% [default:
    /// unlimited].
    #[arg(long)]
    pub cpu: Option<String>,
    /// The most CPU scale-up may give one instance, e.g. 60% (equal to
    /// --cpu: scale out only) [default: 4 times --cpu].
    #[arg(long)]
    pub max_cpu: Option<String>,
    /// Each instance's memory, e.g. 512M [default: unlimited].
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU or in-flight load above which an instance asks for more
    /// [default: 80%].
    #[arg(long)]
    pub scale_at: Option<String>,
    /// No new scaling decision within this long of the last [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cooldown: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The app's name.
    pub name: String,
    #[command(flatten)]
    pub settings: Settings,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The app's name.
    pub name: String,
    #[command(flatten)]
    pub settings: Settings,
    /// Clear an optional setting: cmd, image, cpu, max-cpu or memory
    /// (repeatable).
    #[arg(long, value_parser = parse_unset)]
    pub unset: Vec<Unset>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_unset(s: &str) -> Result<Unset, String> {
    match s {
        "cmd" => Ok(Unset::Cmd),
        "image" => Ok(Unset::Image),
        "cpu" => Ok(Unset::Cpu),
        "max-cpu" => Ok(Unset::CpuMax),
        "memory" => Ok(Unset::Memory),
        _ => Err(format!("{s:?}: one of cmd, image, cpu, max-cpu, memory")),
    }
}

pub async fn app(ep: &Endpoints, c: AppCommand) -> Result<()> {
    match c {
        AppCommand::Create(a) => {
            let spec = create_spec(ep, &a).await?;
            let mut c = client(ep).await?;
            print_app(
                &expect_app(submit(&mut c, Command::AppCreate { spec }).await?)?,
                a.json,
            )
        }
        AppCommand::Ls { json } => {
            let apps = list(ep).await?;
            if json {
                let rows: Vec<_> = apps.iter().map(app_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                print_table(&apps);
            }
            Ok(())
        }
        AppCommand::Show { name, json } => {
            elton_control::apps::spec::check_name(&name).map_err(|e| anyhow!(e))?;
            let view = app_view(ep).await?;
            let app = view
                .apps
                .iter()
                .find(|a| a.spec.name == name)
                .ok_or_else(|| anyhow!("no app {name:?} (see `elton app ls`)"))?;
            print_app_instances(app, &view.fleet, json)
        }
        AppCommand::Set(a) => {
            let patch = set_patch(ep, &a).await?;
            let mut c = client(ep).await?;
            let command = Command::AppSet {
                name: a.name.clone(),
                patch,
            };
            print_app(&expect_app(submit(&mut c, command).await?)?, a.json)
        }
        AppCommand::Deploy {
            name,
            version,
            json,
        } => {
            elton_control::apps::spec::check_name(&name).map_err(|e| anyhow!(e))?;
            let apps = list(ep).await?;
            let app = apps
                .iter()
                .find(|a| a.spec.name == name)
                .ok_or_else(|| anyhow!("no app {name:?} (see `elton app ls`)"))?;
            let version = resolve(ep, &app.spec.volume, version).await?;
            let patch = AppPatch {
                version: Some(version),
                ..AppPatch::default()
            };
            let mut c = client(ep).await?;
            let command = Command::AppSet { name, patch };
            print_app(&expect_app(submit(&mut c, command).await?)?, json)
        }
        AppCommand::Rm { name } => {
            elton_control::apps::spec::check_name(&name).map_err(|e| anyhow!(e))?;
            let mut c = client(ep).await?;
            match submit(&mut c, Command::AppRemove { name }).await? {
                Response::AppRemoved { name } => {
                    println!("removed app {name}");
                    Ok(())
                }
                Response::Rejected { reason } => bail!("{reason}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
    }
}

/// A full spec from `create`'s arguments, checked before anything is
/// asked of the group.
async fn create_spec(ep: &Endpoints, a: &CreateArgs) -> Result<AppSpec> {
    elton_control::apps::spec::check_name(&a.name).map_err(|e| anyhow!(e))?;
    let s = &a.settings;
    let host = s
        .host_name
        .as_deref()
        .ok_or_else(|| anyhow!("an app needs --host-name (the Host its requests carry)"))?;
    let volume = s
        .volume
        .as_deref()
        .ok_or_else(|| anyhow!("an app needs --volume VOLUME[@VERSION] (its files)"))?;
    let (volume, version) = parse::volume_ref(volume).map_err(|e| anyhow!(e))?;
    let mut spec = AppSpec::new(&a.name, host, &volume, version.unwrap_or(1));
    let patch = patch_of(s)?;
    if !patch.is_empty() {
        spec = spec.patched(&patch);
    }
    // Everything but the version first, so a bad value is reported
    // without asking the master.
    spec.validate().map_err(|e| anyhow!(e))?;
    spec.version = resolve(ep, &volume, version).await?;
    Ok(spec)
}

async fn set_patch(ep: &Endpoints, a: &SetArgs) -> Result<AppPatch> {
    elton_control::apps::spec::check_name(&a.name).map_err(|e| anyhow!(e))?;
    let mut patch = patch_of(&a.settings)?;
    patch.unset = a.unset.iter().copied().collect::<BTreeSet<_>>();
    patch.validate().map_err(|e| anyhow!(e))?;
    if let Some(v) = &a.settings.volume {
        let (volume, version) = parse::volume_ref(v).map_err(|e| anyhow!(e))?;
        patch.version = Some(resolve(ep, &volume, version).await?);
    }
    Ok(patch)
}

/// The settings given, as a patch (the volume's version is resolved by
/// the caller).
fn patch_of(s: &Settings) -> Result<AppPatch> {
    let e = |r: Result<_, String>| r.map_err(|e| anyhow!(e));
    let volume = match &s.volume {
        Some(v) => Some(e(parse::volume_ref(v))?.0),
        None => None,
    };
    Ok(AppPatch {
        host_name: s.host_name.clone(),
        volume,
        version: None,
        cmd: s.cmd.clone(),
        image: s.image.clone(),
        port_env: s.port_env.clone(),
        idle_ms: s.idle.map(parse::millis),
        min: s.min,
        max: s.max,
        cpu_percent: s
            .cpu
            .as_deref()
            .map(limits::percent)
            .transpose()
            .map_err(|e| anyhow!(e))?,
        cpu_max_percent: s
            .max_cpu
            .as_deref()
            .map(limits::percent)
            .transpose()
            .map_err(|e| anyhow!(e))?,
        memory_bytes: s
            .memory
            .as_deref()
            .map(limits::size)
            .transpose()
            .map_err(|e| anyhow!(e))?,
        scale_at_percent: s
            .scale_at
            .as_deref()
            .map(parse::threshold)
            .transpose()
            .map_err(|e| anyhow!(e))?,
        cooldown_ms: s.cooldown.map(parse::millis),
        unset: BTreeSet::new(),
    })
}

/// The version an app runs: the one given, checked to exist, or the
/// volume's head, so the group records a fixed tree.
async fn resolve(ep: &Endpoints, volume: &str, version: Option<u64>) -> Result<u64> {
    let mut m = ep.master().await?;
    match version {
        Some(v) => {
            m.get_version(GetVersionRequest {
                volume: volume.to_string(),
                version: v,
                read_path: None,
            })
            .await
            .map_err(status)?;
            Ok(v)
        }
        None => {
            let head = m
                .get_volume(GetVolumeRequest {
                    name: volume.to_string(),
                })
                .await
                .map_err(status)?
                .into_inner()
                .head;
            if head == 0 {
                bail!("volume {volume:?} has no version yet: import or commit its files first");
            }
            Ok(head)
        }
    }
}

async fn list(ep: &Endpoints) -> Result<Vec<App>> {
    let mut c = client(ep).await?;
    match submit(&mut c, Command::Apps).await? {
        Response::Apps { apps } => Ok(apps),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn expect_app(r: Response) -> Result<App> {
    match r {
        Response::App { app } => Ok(app),
        Response::Rejected { reason } => bail!("{reason}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn app_json(a: &App) -> serde_json::Value {
    let mut v = serde_json::to_value(&a.spec).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("created".into(), a.created.into());
        o.insert("updated".into(), a.updated.into());
    }
    v
}

fn print_app(a: &App, json: bool) -> Result<()> {
    if json {
        println!("{}", app_json(a));
        return Ok(());
    }
    let s = &a.spec;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("name        {}", s.name);
    println!("host name   {}", s.host_name);
    println!("volume      {}@{}", s.volume, s.version);
    println!("cmd         {}", opt(s.cmd.clone()));
    println!("image       {}", opt(s.image.clone()));
    println!("port env    {}", s.port_env);
    println!("idle        {}", secs(s.idle_ms));
    println!("instances   {} to {}", s.min, s.max);
    println!(
        "cpu         {}",
        opt(s.cpu_percent.map(|c| format!("{c}%")))
    );
    if let Some(max) = s.cpu_max_percent {
        println!("max cpu     {max}%");
    }
    println!("memory      {}", opt(s.memory_bytes.map(mib)));
    println!("scale at    {}%", s.scale_at_percent);
    println!("cooldown    {}", secs(s.cooldown_ms));
    Ok(())
}

/// The app, its instances on every host (from the registry) and its
/// per-host assignments.
fn print_app_instances(a: &App, fleet: &Fleet, json: bool) -> Result<()> {
    let name = &a.spec.name;
    let instances: Vec<(&String, &InstanceRecord)> = fleet
        .hosts
        .iter()
        .flat_map(|(h, r)| r.instances.iter().map(move |i| (h, i)))
        .filter(|(_, i)| &i.app == name)
        .collect();
    let assigned = fleet.assignments.get(name).cloned().unwrap_or_default();
    if json {
        let mut v = app_json(a);
        if let Some(o) = v.as_object_mut() {
            let list: Vec<serde_json::Value> = instances
                .iter()
                .map(|(h, i)| {
                    let mut j = serde_json::to_value(i).unwrap_or_default();
                    if let Some(o) = j.as_object_mut() {
                        o.insert("host".into(), h.as_str().into());
                    }
                    j
                })
                .collect();
            o.insert("instances".into(), list.into());
            o.insert(
                "assigned".into(),
                serde_json::to_value(&assigned).unwrap_or_default(),
            );
            o.insert(
                "last_decision_ms".into(),
                fleet.decisions.get(name).copied().into(),
            );
        }
        println!("{v}");
        return Ok(());
    }
    print_app(a, false)?;
    let assigned_text: Vec<String> = assigned.iter().map(|(h, n)| format!("{h}={n}")).collect();
    println!(
        "assigned    {}",
        if assigned_text.is_empty() {
            "-".into()
        } else {
            assigned_text.join(" ")
        }
    );
    println!();
    if instances.is_empty() {
        println!("no instances (the next request starts one)");
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    println!(
        "{:<16} {:<12} {:<22} {:>7} {:<9} {:>8} {:>5} {:>6}  LAST REQUEST",
        "HOST", "ID", "ADDRESS", "VERSION", "STATE", "INFLIGHT", "CPU", "QUOTA"
    );
    for (h, i) in instances {
        let state = serde_json::to_value(i.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let last = if i.last_request_ms == 0 {
            "-".into()
        } else {
            format!("{}s ago", now.saturating_sub(i.last_request_ms) / 1000)
        };
        println!(
            "{:<16} {:<12} {:<22} {:>7} {:<9} {:>8} {:>4}% {:>6}  {}",
            h,
            i.id,
            i.addr,
            i.version,
            state,
            i.in_flight,
            i.cpu_percent_of_quota,
            i.quota_percent
                .map_or_else(|| "-".into(), |q| format!("{q}%")),
            last
        );
    }
    Ok(())
}

fn print_table(apps: &[App]) {
    println!(
        "{:<20} {:<28} {:<20} {:>3} {:>3} {:>6} {:>6} {:>8}  RUNS",
        "NAME", "HOST", "VOLUME", "MIN", "MAX", "IDLE", "CPU", "MEMORY"
    );
    for a in apps {
        let s = &a.spec;
        let runs = match (&s.image, &s.cmd) {
            (Some(i), _) => format!("image {i}"),
            (None, Some(c)) => c.clone(),
            (None, None) => "-".into(),
        };
        println!(
            "{:<20} {:<28} {:<20} {:>3} {:>3} {:>6} {:>6} {:>8}  {}",
            s.name,
            s.host_name,
            format!("{}@{}", s.volume, s.version),
            s.min,
            s.max,
            secs(s.idle_ms),
            s.cpu_percent
                .map_or_else(|| "-".into(), |c| format!("{c}%")),
            s.memory_bytes.map_or_else(|| "-".into(), mib),
            runs
        );
    }
}

fn secs(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn mib(b: u64) -> String {
    if b.is_multiple_of(1 << 20) {
        format!("{}M", b >> 20)
    } else {
        b.to_string()
    }
}
