//! Docker instances: an app with `--image` runs as a container started
//! through the engine API (bollard, the API version negotiated with the
//! engine on first use). The app's read-only mount is bind-mounted
//! read-only at [`WORKDIR`], its working directory; the port is in its
//! environment; the app's limits are the container's CPU and memory
//! limits; it uses the host's network, so it listens on 127.0.0.1 as a
//! process instance does (no published port, no userland proxy, and it
//! works on engines run without a bridge). Containers carry the proxy's
//! directory as a label, so a proxy that was killed removes what it left
//! on its next start. The proxy never pulls: images are put on each host
//! beforehand (a pull would outlast any readiness deadline).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountTypeEnum};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptions,
};
use elton_control::apps::AppSpec;
use futures::StreamExt;

use super::instance::{Instance, Runtime, StartFuture, free_port, tail};
use super::mounts::Mounts;

/// The label naming the proxy (its directory) that made a container.
pub const LABEL_DIR: &str = "elton.proxy.dir";
/// The label naming the container's app.
pub const LABEL_APP: &str = "elton.app";
/// The label naming the volume version the container runs.
pub const LABEL_VERSION: &str = "elton.app.version";
/// Where the app's files are in its container: its working directory.
pub const WORKDIR: &str = "/app";

/// Runs instances as containers of the local Docker engine.
pub struct DockerRuntime {
    /// This proxy's directory, as its containers' [`LABEL_DIR`].
    label: String,
    mounts: Arc<Mounts>,
    /// Connected on first use; a failed connection is not kept, so an
    /// engine started after the proxy is found by the next start.
    engine: tokio::sync::Mutex<Option<Docker>>,
}

impl DockerRuntime {
    pub fn new(dir: &Path, mounts: Arc<Mounts>) -> Self {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Self {
            label: dir.display().to_string(),
            mounts,
            engine: tokio::sync::Mutex::new(None),
        }
    }

    async fn engine(&self) -> Result<Docker> {
        let mut engine = self.engine.lock().await;
        if let Some(d) = &*engine {
            return Ok(d.clone());
        }
        let d = connect().await?;
        *engine = Some(d.clone());
        Ok(d)
    }

    /// Removes the containers a previous run of this proxy left (it was
    /// killed). Without an engine there is nothing to remove.
    pub async fn reap(&self) {
        match connect().await {
            Ok(docker) => {
                let n = remove_labelled(&docker, &self.label).await;
                if n > 0 {
                    tracing::info!("removed {n} container(s) of a previous run");
                }
            }
            Err(e) => tracing::debug!("no containers to clean up: {e:#}"),
        }
    }
}

/// The engine at `DOCKER_HOST` (default: the local socket), at the API
/// version both sides speak.
async fn connect() -> Result<Docker> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the local socket".into());
    let docker = Docker::connect_with_defaults()
        .with_context(|| format!("connecting to the Docker engine at {host}"))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| anyhow!("no Docker engine answers at {host}: {e}"))
}

/// Removes (killing if running) the containers labelled with the proxy
/// directory `label`; returns how many went.
async fn remove_labelled(docker: &Docker, label: &str) -> usize {
    let filters = HashMap::from([("label", vec![format!("{LABEL_DIR}={label}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = match docker.list_containers(Some(options)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("listing this proxy's containers: {e}");
            return 0;
        }
    };
    let mut n = 0;
    for id in list.into_iter().filter_map(|c| c.id) {
        remove(docker, &id).await;
        n += 1;
    }
    n
}

async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => tracing::debug!(container = id, "removed"),
        // Gone already (removed by hand, or twice), or being removed
        // (by a stop's task): nothing to do.
        Err(EngineError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => {}
        Err(e) => tracing::warn!(container = id, "removing the container: {e}"),
    }
}

/// Runs `work` to its end from code that may not be inside a runtime
/// (a drop, the proxy's shutdown): on a thread of its own with its own
/// runtime and engine connection, joined.
fn run_aside<F, Fut>(work: F)
where
    F: FnOnce(Docker) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!("no runtime to remove containers with: {e}");
                return;
            }
        };
        rt.block_on(async move {
            match connect().await {
                Ok(docker) => work(docker).await,
                // No engine: no container of ours can be running there.
                Err(e) => tracing::debug!("removing containers: {e:#}"),
            }
        });
    });
    let _ = thread.join();
}

/// What the engine is asked to create for one instance of `app` (pure:
/// the whole mapping from an app to a container is here).
pub fn container_body(
    app: &AppSpec,
    image: &str,
    source: &Path,
    port: u16,
    label: &str,
) -> ContainerCreateBody {
    // `--cmd` with an image is a shell command line, as for a process;
    // without it the image's own entrypoint and command run.
    let (entrypoint, cmd) = match &app.cmd {
        Some(c) => (
            Some(vec!["sh".to_string(), "-c".to_string()]),
            Some(vec![c.clone()]),
        ),
        None => (None, None),
    };
    let memory = app.memory_bytes.and_then(|b| i64::try_from(b).ok());
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint,
        cmd,
        env: Some(vec![format!("{}={port}", app.port_env)]),
        working_dir: Some(WORKDIR.to_string()),
        labels: Some(HashMap::from([
            (LABEL_DIR.to_string(), label.to_string()),
            (LABEL_APP.to_string(), app.name.clone()),
            (
                LABEL_VERSION.to_string(),
                format!("{}@{}", app.volume, app.version),
            ),
        ])),
        host_config: Some(HostConfig {
            mounts: Some(vec![Mount {
                typ: Some(MountTypeEnum::BIND),
                source: Some(source.display().to_string()),
                target: Some(WORKDIR.to_string()),
                read_only: Some(true),
                ..Default::default()
            }]),
            network_mode: Some("host".to_string()),
            // 100 % is one core: 10^9 nano-CPUs.
            nano_cpus: app.cpu_percent.map(|p| i64::from(p) * 10_000_000),
            memory,
            // No swap beyond the limit, as the process runtime's group.
            memory_swap: memory,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The engine's own words for a failed call.
fn engine_message(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl Runtime for DockerRuntime {
    fn start<'a>(&'a self, app: &'a AppSpec) -> StartFuture<'a> {
        Box::pin(async move {
            let image = app
                .image
                .as_deref()
                .ok_or_else(|| anyhow!("app {:?} has no image", app.name))?;
            let docker = self.engine().await?;
            let source = self.mounts.get(&app.volume, app.version).await?;
            let port = free_port()?;
            let body = container_body(app, image, &source, port, &self.label);
            let created = docker
                .create_container(None::<CreateContainerOptions>, body)
                .await
                .map_err(|e| match e {
                    EngineError::DockerResponseServerError {
                        status_code: 404,
                        message,
                    } => anyhow!(
                        "image {image:?} is not on this host's Docker engine (the proxy \
                         does not pull: `docker pull` or `docker load` it on every host): \
                         {message}"
                    ),
                    e => anyhow!("creating its container: {}", engine_message(&e)),
                })?;
            let id = created.id;
            // From here on, dropping the instance removes the container.
            let mut instance = DockerInstance {
                docker: docker.clone(),
                id: id.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                exit: Arc::new(Mutex::new(None)),
                stopped: false,
            };
            docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(|e| anyhow!("starting its container: {}", engine_message(&e)))?;
            tracing::info!(app = %app.name, port, container = %id, "instance started");
            instance.watch();
            Ok(Box::new(instance) as Box<dyn Instance>)
        })
    }

    /// Removes every container of this proxy (those being removed by a
    /// stop, too); the process runtime detaches the mounts.
    fn shutdown(&self) {
        let label = self.label.clone();
        run_aside(move |docker| async move {
            // Until none is listed: a removal a stop started may still
            // be under way, and the process is about to end.
            for _ in 0..100 {
                if remove_labelled(&docker, &label).await == 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            tracing::warn!("containers labelled {LABEL_DIR}={label} are still there");
        });
    }
}

struct DockerInstance {
    docker: Docker,
    id: String,
    addr: SocketAddr,
    /// Set once the container has stopped: why.
    exit: Arc<Mutex<Option<String>>>,
    stopped: bool,
}

impl DockerInstance {
    /// Waits (in the background) for the container to stop, then records
    /// its exit code and last output lines.
    fn watch(&mut self) {
        let (docker, id, exit) = (self.docker.clone(), self.id.clone(), self.exit.clone());
        tokio::spawn(async move {
            let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
            // An exit code above 0 comes as an error: either way it ended.
            let _ = wait.next().await;
            let why = exit_reason(&docker, &id).await;
            *exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        });
    }
}

/// Why a container stopped: its exit code, an out-of-memory kill, the
/// engine's error, and its last output lines.
async fn exit_reason(docker: &Docker, id: &str) -> String {
    let state = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state);
    let mut why = match state.as_ref().and_then(|s| s.exit_code) {
        Some(code) => format!("its container exited (exit code {code})"),
        None => "its container is gone".to_string(),
    };
    if state.as_ref().and_then(|s| s.oom_killed) == Some(true) {
        why.push_str(", killed for using more than its memory limit");
    }
    if let Some(e) = state.and_then(|s| s.error).filter(|e| !e.is_empty()) {
        why.push_str(&format!(", {e}"));
    }
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let mut text = String::new();
    let mut logs = docker.logs(id, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&chunk.to_string());
    }
    let last = tail(&text);
    if last.is_empty() {
        format!("{why} without output")
    } else {
        format!("{why}: {last}")
    }
}

impl Instance for DockerInstance {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn exited(&mut self) -> Option<String> {
        self.exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Kills and removes the container, in the background when called
    /// from the proxy's runtime (the caller holds a lock).
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let (docker, id) = (self.docker.clone(), self.id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { remove(&docker, &id).await });
            }
            Err(_) => run_aside(move |docker| async move { remove(&docker, &id).await }),
        }
    }
}

impl Drop for DockerInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(cmd: Option<&str>) -> AppSpec {
        AppSpec {
            name: "web".into(),
            host_name: "web.test".into(),
            volume: "site".into(),
            version: 3,
            cmd: cmd.map(str::to_string),
            image: Some("busybox:1".into()),
            port_env: "PORT".into(),
            idle_ms: 60_000,
            min: 0,
            max: 4,
            cpu_percent: Some(30),
            cpu_max_percent: None,
            memory_bytes: Some(64 << 20),
            scale_at_percent: 80,
            cooldown_ms: 30_000,
        }
    }

    #[test]
    fn a_container_gets_the_mount_port_limits_and_labels() {
        let b = container_body(
            &app(Some("exec httpd -p $PORT")),
            "busybox:1",
            Path::new("/p/mounts/site@3"),
            8123,
            "/p",
        );
        assert_eq!(b.image.as_deref(), Some("busybox:1"));
        assert_eq!(b.entrypoint, Some(vec!["sh".to_string(), "-c".to_string()]));
        assert_eq!(b.cmd, Some(vec!["exec httpd -p $PORT".to_string()]));
        assert_eq!(b.env, Some(vec!["PORT=8123".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some(WORKDIR));
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_DIR], "/p");
        assert_eq!(labels[LABEL_APP], "web");
        assert_eq!(labels[LABEL_VERSION], "site@3");
        let h = b.host_config.unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(h.nano_cpus, Some(300_000_000), "30 % of a core");
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        let m = &h.mounts.unwrap()[0];
        assert_eq!(m.typ, Some(MountTypeEnum::BIND));
        assert_eq!(m.source.as_deref(), Some("/p/mounts/site@3"));
        assert_eq!(m.target.as_deref(), Some(WORKDIR));
        assert_eq!(m.read_only, Some(true));
    }

    #[test]
    fn without_a_command_the_image_runs_its_own_and_without_limits_none_are_set() {
        let mut a = app(None);
        a.cpu_percent = None;
        a.memory_bytes = None;
        a.port_env = "HTTP_PORT".into();
        let b = container_body(&a, "nginx:1", Path::new("/m"), 9000, "/p");
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, None);
        assert_eq!(b.env, Some(vec!["HTTP_PORT=9000".to_string()]));
        let h = b.host_config.unwrap();
        assert_eq!(h.nano_cpus, None);
        assert_eq!(h.memory, None);
        assert_eq!(h.memory_swap, None);
    }
}
