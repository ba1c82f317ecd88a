//! `elton docker-plugin`, and finding a Docker volume's mount for
//! `elton commit|status --docker-volume`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::client::Endpoints;
use super::default_data_dir;
use crate::docker::plugin::{self, Plugin, PluginConfig};
use crate::docker::{DEFAULT_SOCKET_DIR, client};

#[derive(Args, Debug)]
pub struct DockerPluginArgs {
    /// Plugin name: `docker volume create -d NAME`.
    #[arg(long, default_value = "elton")]
    pub name: String,
    /// Directory of plugin sockets Docker watches.
    #[arg(long, env = "ELTON_DOCKER_PLUGIN_DIR", hide_env_values = true, default_value = DEFAULT_SOCKET_DIR)]
    pub socket_dir: PathBuf,
    /// Where the plugin keeps its state and mounts [default: $ELTON_HOME/docker/NAME].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The local slave's data directory (mounts cache lower files there).
    #[arg(long, env = "ELTON_SLAVE_DATA", hide_env_values = true)]
    pub slave_data: Option<PathBuf>,
}

/// Picks the Docker volume for `commit`/`status`.
#[derive(Args, Debug, Clone)]
pub struct DockerVolumeArgs {
    /// A Docker volume of the plugin, instead of a mountpoint.
    #[arg(long, value_name = "NAME", conflicts_with = "mountpoint")]
    pub docker_volume: Option<String>,
    /// The plugin serving `--docker-volume`.
    #[arg(long, default_value = "elton", requires = "docker_volume")]
    pub plugin: String,
    #[arg(long, env = "ELTON_DOCKER_PLUGIN_DIR", hide_env_values = true, default_value = DEFAULT_SOCKET_DIR, hide = true)]
    pub plugin_dir: PathBuf,
}

fn check_plugin_name(name: &str) -> Result<()> {
    crate::docker::registry::check_docker_name(name)
        .with_context(|| format!("plugin name {name:?}"))
}

pub async fn docker_plugin(ep: &Endpoints, a: DockerPluginArgs) -> Result<()> {
    check_plugin_name(&a.name)?;
    let state_dir = a
        .state_dir
        .unwrap_or_else(|| default_data_dir().join("docker").join(&a.name));
    let slave_data = a
        .slave_data
        .unwrap_or_else(|| default_data_dir().join("slave"));
    let plugin = Plugin::open(PluginConfig {
        state_dir: state_dir.clone(),
        endpoints: ep.clone(),
        slave_url: ep.slave.clone(),
        slave_data,
        token: ep.token_opt()?,
    })?;
    std::fs::create_dir_all(&a.socket_dir)
        .with_context(|| format!("creating {}", a.socket_dir.display()))?;
    let socket = a.socket_dir.join(format!("{}.sock", a.name));
    // A socket left by a plugin that was killed; nobody listens on it.
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_err() {
        std::fs::remove_file(&socket)?;
    }
    let listener = tokio::net::UnixListener::bind(&socket).with_context(|| {
        format!(
            "binding {} (is the plugin already running?)",
            socket.display()
        )
    })?;
    tracing::info!(socket = %socket.display(), state = %state_dir.display(), master = %ep.master, slave = %ep.slave, "docker volume plugin {} listening", a.name);
    let result = plugin::serve(plugin, listener, shutdown_signal()).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("plugin stopped; mounts stay up");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The mountpoint for `commit`/`status`: given, or asked of the plugin.
pub async fn mountpoint_of(mountpoint: Option<PathBuf>, d: &DockerVolumeArgs) -> Result<PathBuf> {
    let Some(name) = &d.docker_volume else {
        return super::mounts::mountpoint_or_cwd(mountpoint);
    };
    check_plugin_name(&d.plugin)?;
    let socket = d.plugin_dir.join(format!("{}.sock", d.plugin));
    client::mountpoint(&socket, name)
        .await
        .with_context(|| format!("Docker volume {name:?} of plugin {}", d.plugin))
}
