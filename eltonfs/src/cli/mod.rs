//! The `elton` command line. `main` parses arguments and dispatches; each
//! module holds one group of subcommands.

pub(crate) mod client;
mod control;
mod docker;
mod fsck;
mod gc;
mod import;
mod inspect;
mod limit;
mod metadata;
mod mounts;
mod ps;
mod scrub;
mod servers;
mod stats;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::spec::Spec;

pub use client::Endpoints;

#[derive(Parser, Debug)]
#[command(
    name = "elton",
    version,
    about = "Share versioned directory trees between clusters"
)]
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
    Ls { spec: Spec },
    /// Print a file of a volume: VOLUME[@VERSION]:PATH.
    Cat { spec: Spec },
    /// Show a volume's versions, newest first.
    Log {
        volume: String,
        /// Print JSON records instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mount a volume at a version (Eltonfs overlay).
    Mount(mounts::MountArgs),
    /// Unmount an Eltonfs mount.
    Umount { mountpoint: PathBuf },
    /// Publish a mount's changes as the next version.
    Commit {
        #[arg(required_unless_present = "docker_volume")]
        mountpoint: Option<PathBuf>,
        #[command(flatten)]
        docker: docker::DockerVolumeArgs,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Show a mount's uncommitted changes.
    Status {
        #[arg(required_unless_present = "docker_volume")]
        mountpoint: Option<PathBuf>,
        #[command(flatten)]
        docker: docker::DockerVolumeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Move a mount without changes to another version.
    Checkout { mountpoint: PathBuf, version: u64 },
    /// List changed paths between two versions of a volume.
    Diff { volume: String, v1: u64, v2: u64 },
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
    /// List the processes of control group members (k2i): by host, read
    /// from each host's /proc.
    Ps(ps::PsArgs),
    /// Limit CPU, memory and IO of processes on control group hosts
    /// (drcond); `ls`, `release ID`.
    Limit(limit::LimitArgs),
    /// Show who the master takes you for.
    Whoami {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume homed on this master.
    Create {
        name: String,
        /// Keep only the newest N versions (older ones are dropped and
        /// their objects garbage-collected) [default: every version].
        #[arg(long, default_value_t = 0)]
        keep: u64,
    },
    /// List the master's volumes.
    Ls,
    /// Set how many versions a volume keeps: --keep N (the newest N) or
    /// --keep 0 (every version). Older versions are dropped at once.
    Retention {
        volume: String,
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
    let cli = Cli::parse();
    init_tracing(&cli.command);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("elton: error: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("elton: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn init_tracing(command: &Command) {
    let servers = matches!(
        command,
        Command::Up(_) | Command::Master(_) | Command::Slave(_) | Command::DockerPlugin(_)
    );
    let default = if servers { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ELTON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ep = cli.endpoints;
    match cli.command {
        Command::Up(a) => servers::up(a).await,
        Command::Master(a) => servers::master(*a).await,
        Command::Slave(a) => servers::slave(a).await,
        Command::Volume(VolumeCommand::Create { name, keep }) => {
            inspect::volume_create(&ep, &name, keep).await
        }
        Command::Volume(VolumeCommand::Retention { volume, keep }) => {
            gc::retention(&ep, &volume, keep).await
        }
        Command::Volume(VolumeCommand::Ls) => inspect::volume_ls(&ep).await,
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
        } => {
            let mountpoint = docker::mountpoint_of(mountpoint, &docker).await?;
            tokio::task::spawn_blocking(move || mounts::commit(&mountpoint, message)).await?
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
    }
}
