//! The `elton` command line. `main` parses arguments and dispatches; each
//! module holds one group of subcommands.

mod app;
pub(crate) mod client;
mod commit_progress;
mod control;
mod docker;
mod flags;
mod fsck;
mod gc;
mod import;
mod inspect;
mod lean;
mod limit;
mod metadata;
mod mounts;
mod nodes;
mod proxy;
mod ps;
mod scrub;
mod servers;
mod stats;
mod trust;
mod up_lock;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{FromArgMatches, Parser, Subcommand};

use crate::spec::{Spec, VersionRef};

pub use client::Endpoints;

/// What `elton --help` says Elton is.
const ABOUT: &str = "Share versioned directory trees between clusters";

#[derive(Parser, Debug)]
#[command(name = "elton", version, about = ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub endpoints: Endpoints,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a single-node Elton (master and slave in one process).
    Up(servers::UpArgs),
    /// Run a master.
    Master(Box<servers::MasterArgs>),
    /// Run a slave (storage node with the HTTP interface).
    Slave(servers::SlaveArgs),
    /// Create or list volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Publish a local directory as the next version of a volume.
    Import(import::ImportArgs),
    /// List a directory of a volume: VOLUME[@VERSION][:PATH].
    Ls {
        /// VOLUME[@VERSION][:PATH]; default: the latest version's root.
        spec: Spec,
    },
    /// Print a file of a volume: VOLUME[@VERSION]:PATH.
    Cat {
        /// VOLUME[@VERSION]:PATH; default version: the latest.
        spec: Spec,
    },
    /// Show a volume's versions, newest first.
    Log {
        /// The volume.
        volume: String,
        /// Print JSON records instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mount a volume at a version (Eltonfs overlay).
    Mount(mounts::MountArgs),
    /// Unmount an Eltonfs mount.
    Umount {
        /// The mount's directory.
        mountpoint: PathBuf,
    },
    /// Publish a mount's changes as the next version.
    Commit {
        /// The mount, or any path in it [default: the working directory].
        mountpoint: Option<PathBuf>,
        #[command(flatten)]
        docker: docker::DockerVolumeArgs,
        /// What the version changes (required, as for `git commit`).
        #[arg(short, long, default_value = "")]
        message: String,
        /// Print the result as JSON ({"volume","version","committed"},
        /// plus "message" when there was nothing to commit); no progress.
        #[arg(long)]
        json: bool,
        /// Show progress on stderr even when it is not a terminal or with
        /// --json.
        #[arg(long, conflicts_with = "quiet")]
        progress: bool,
        /// Show no progress, even on a terminal.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a mount's uncommitted changes.
    Status {
        /// The mount, or any path in it [default: the working directory].
        mountpoint: Option<PathBuf>,
        #[command(flatten)]
        docker: docker::DockerVolumeArgs,
        /// Print the changes as JSON ({"added":[],"modified":[],"deleted":[]}).
        #[arg(long)]
        json: bool,
    },
    /// Move a mount without changes to another version.
    Checkout {
        /// The mount, or any path in it.
        mountpoint: PathBuf,
        /// The version to move to.
        version: u64,
    },
    /// Move a mount onto its volume's head, keeping its uncommitted changes
    /// (three-way merge; conflicts keep both sides). Exit 1 on conflicts.
    Update(update::UpdateArgs),
    /// List changed paths between two versions of a volume.
    Diff {
        /// The volume.
        volume: String,
        /// The old version: a number, or `latest`.
        v1: VersionRef,
        /// The new version: a number, or `latest`.
        v2: VersionRef,
    },
    /// Show the master's WAN traffic per peer master and per volume.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check replication and that every version can be read; exit 1 if not.
    Fsck(fsck::FsckArgs),
    /// Delete objects no version references, older than the grace period
    /// (admin token). Deletes nothing if any version cannot be walked.
    Gc(gc::GcArgs),
    /// Re-hash stored objects now; quarantine and repair bad ones (admin).
    Scrub(scrub::ScrubArgs),
    /// Serve Docker's volume plugin protocol (`docker volume create -d elton`).
    DockerPlugin(docker::DockerPluginArgs),
    /// Issue node certificates, export the cluster CA.
    #[command(subcommand)]
    Cert(trust::CertCommand),
    /// Create, list and revoke bearer tokens (admin).
    #[command(subcommand)]
    Token(trust::TokenCommand),
    /// Copy the master's metadata (a consistent snapshot; admin token).
    Backup(metadata::BackupArgs),
    /// The control plane's Raft group: init, join, leave, status, submit.
    #[command(subcommand)]
    Control(control::ControlCommand),
    #[command(about = ps::ABOUT)]
    Ps(ps::PsArgs),
    /// Limit CPU, memory and IO of processes on control group hosts
    /// (drcond); `ls`, `release ID`.
    Limit(limit::LimitArgs),
    /// The cluster's nodes: `ls`, `rm` (decommission; admin).
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// FastContainer apps: web apps run from a volume, started by their
    /// first request (create, ls, show, set, deploy, rm).
    #[command(subcommand)]
    App(app::AppCommand),
    /// FastContainer's HTTP proxy on this host: routes by Host, starts
    /// apps on their first request, stops them when idle.
    Proxy(proxy::ProxyArgs),
    /// Show who the master takes you for.
    Whoami {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume homed on this master.
    Create {
        /// The volume's name.
        name: String,
        /// Keep only the newest N versions (older ones are dropped and
        /// their objects garbage-collected) [default: every version].
        #[arg(long, default_value_t = 0)]
        keep: u64,
    },
    /// List the master's volumes.
    Ls,
    /// Delete a volume and all its versions (admin); refused while this
    /// host has it mounted or holds uncommitted changes to it.
    Rm(nodes::VolumeRmArgs),
    /// Set how many versions a volume keeps: --keep N (the newest N) or
    /// --keep 0 (every version). Older versions are dropped at once.
    Retention {
        /// The volume.
        volume: String,
        /// Versions to keep; 0: every version.
        #[arg(long)]
        keep: u64,
    },
}

/// Default data directory: `$ELTON_HOME`, else `$XDG_DATA_HOME/elton`, else
/// `~/.local/share/elton`.
pub fn default_data_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("ELTON_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("elton");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/elton"),
        None => PathBuf::from("/var/lib/elton"),
    }
}

/// Entry point of the binary: run, print a one-line error, set the exit code.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = lean::command_for(&args).get_matches_from(args);
    if let Err(e) = flags::reject_unused(&matches) {
        eprintln!("elton: error: {e}");
        return ExitCode::from(2);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if !is_server(&cli.command) {
        quiet_broken_pipe();
    }
    init_tracing(&cli.command);
    let runtime = if is_one_call(&cli.command) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("elton: error: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(e) => {
            eprintln!("elton: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The status a shell reports for a process killed by SIGPIPE (128 + 13).
const BROKEN_PIPE_EXIT: u8 = 141;

/// Like coreutils, a client whose reader went away (`elton diff | head -1`)
/// stops quietly with SIGPIPE's status instead of panicking in `println!`
/// (Rust ignores SIGPIPE, so writes fail with EPIPE instead).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT.into());
        }
        default(info);
    }));
}

/// An error from writing to a closed stdout: a bare `io::Error` passed up
/// by `writeln!(out, ..)?`. A broken connection to a server is no such
/// thing (it arrives wrapped, with context) and stays an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Long-running processes (and a mount's process), as opposed to clients.
fn is_server(command: &Command) -> bool {
    matches!(
        command,
        Command::Up(_)
            | Command::Master(_)
            | Command::Slave(_)
            | Command::DockerPlugin(_)
            | Command::Mount(_)
    )
}

/// Commands whose whole work is one call (to a master, or to a mount's
/// control socket) and printing its answer: they run on the calling
/// thread. Starting a runtime's worker threads (and reading the cgroup's
/// CPU quota to size them) was a tenth of `elton ps`'s CPU
/// (`docs/benchmarks.md`, k2i), more than the call.
fn is_one_call(command: &Command) -> bool {
    matches!(
        command,
        Command::Ps(_)
            | Command::Commit { .. }
            | Command::Status { .. }
            | Command::Checkout { .. }
            | Command::Umount { .. }
    )
}

fn init_tracing(command: &Command) {
    use std::io::IsTerminal;
    let default = if is_server(command) { "info" } else { "warn" };
    let asked = std::env::var("ELTON_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&asked)
        .ok()
        .filter(|_| !asked.is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    // fuser warns "Failed to umount" when its session ends after the
    // unmount that ended it, i.e. on every clean stop; keep its errors.
    if !asked.contains("fuser") {
        for d in ["fuser::session=error", "fuser::mnt=error"] {
            if let Ok(d) = d.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person: log files and pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ep = cli.endpoints;
    match cli.command {
        Command::Up(a) => servers::up(a).await,
        Command::Master(a) => servers::master(*a).await,
        Command::Slave(a) => servers::slave(&ep, a).await,
        Command::Volume(VolumeCommand::Create { name, keep }) => {
            inspect::volume_create(&ep, &name, keep).await
        }
        Command::Volume(VolumeCommand::Retention { volume, keep }) => {
            gc::retention(&ep, &volume, keep).await
        }
        Command::Volume(VolumeCommand::Ls) => inspect::volume_ls(&ep).await,
        Command::Volume(VolumeCommand::Rm(a)) => nodes::volume_rm(&ep, a).await,
        Command::Node(c) => nodes::node(&ep, c).await,
        Command::Import(a) => import::import(&ep, a).await,
        Command::Ls { spec } => inspect::ls(&ep, &spec).await,
        Command::Cat { spec } => inspect::cat(&ep, &spec).await,
        Command::Log { volume, json } => inspect::log(&ep, &volume, json).await,
        Command::Mount(a) => tokio::task::spawn_blocking(move || mounts::mount(&ep, a)).await?,
        Command::Umount { mountpoint } => mounts::umount(&mountpoint),
        Command::Commit {
            mountpoint,
            docker,
            message,
            json,
            progress,
            quiet,
        } => {
            let mountpoint = docker::mountpoint_of(mountpoint, &docker).await?;
            let out = mounts::CommitOutput {
                json,
                progress,
                quiet,
            };
            tokio::task::spawn_blocking(move || mounts::commit(&mountpoint, message, out)).await?
        }
        Command::Status {
            mountpoint,
            docker,
            json,
        } => {
            let mountpoint = docker::mountpoint_of(mountpoint, &docker).await?;
            mounts::status(&mountpoint, json)
        }
        Command::Checkout {
            mountpoint,
            version,
        } => mounts::checkout(&mountpoint, version),
        Command::Update(a) => tokio::task::spawn_blocking(move || update::update(a)).await?,
        Command::Diff { volume, v1, v2 } => mounts::diff(&ep, &volume, v1, v2).await,
        Command::Stats { json } => stats::stats(&ep, json).await,
        Command::DockerPlugin(a) => docker::docker_plugin(&ep, a).await,
        Command::Fsck(a) => fsck::fsck(&ep, a).await,
        Command::Gc(a) => gc::gc(&ep, a).await,
        Command::Scrub(a) => scrub::scrub(&ep, a).await,
        Command::Cert(c) => trust::cert(c),
        Command::Token(c) => trust::token(&ep, c).await,
        Command::Backup(a) => metadata::backup(&ep, a).await,
        Command::Whoami { json } => trust::whoami(&ep, json).await,
        Command::Control(c) => control::control(&ep, c).await,
        Command::Ps(a) => ps::ps(&ep, a).await,
        Command::Limit(a) => limit::limit(&ep, a).await,
        Command::App(c) => app::app(&ep, c).await,
        Command::Proxy(a) => proxy::proxy(&ep, a).await,
    }
}
