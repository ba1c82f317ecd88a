//! The plugin server: Docker's volume driver endpoints over a unix socket,
//! each one a decision of the [`Registry`] plus the IO it calls for
//! (asking the master, starting and stopping Eltonfs mounts).
//!
//! Requests are handled one at a time: they are rare, and serialising them
//! means a `Mount` and an `Unmount` of one volume can never interleave.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use elton_proto::pb::{GetVersionRequest, GetVolumeRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;

use super::protocol::*;
use super::registry::{Acquired, Registry, VolumeOptions, check_docker_name};
use crate::fs::daemon::Detached;
use crate::fs::mount::{self, ControlRequest, ControlResponse};

pub struct PluginConfig {
    /// Where the plugin keeps `plugin.json` and, per Docker volume,
    /// `volumes/<name>/{mnt,state}`.
    pub state_dir: PathBuf,
    /// The local master and the credentials for it (volumes are checked
    /// there unless `-o master=`).
    pub endpoints: crate::cli::Endpoints,
    /// The local slave, through which mounts read and commit.
    pub slave_url: String,
    /// The local slave's data directory (the mounts' cache).
    pub slave_data: PathBuf,
    pub token: Option<String>,
}

pub struct Plugin {
    config: PluginConfig,
    registry: Mutex<Registry>,
}

impl Plugin {
    pub fn open(config: PluginConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(config.state_dir.join("volumes"))
            .with_context(|| format!("creating {}", config.state_dir.display()))?;
        let registry = Registry::load(&config.state_dir.join("plugin.json"))?;
        Ok(Arc::new(Self {
            config,
            registry: Mutex::new(registry),
        }))
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.config.state_dir.join("volumes").join(name)
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("mnt")
    }

    /// After a restart: volumes with users get their mount back if it died
    /// (the containers' bind mounts of a dead FUSE mount are lost, but new
    /// users will see the volume again); volumes without users lose a mount
    /// left over from a crash between an `Unmount` and its unmount.
    pub fn reconcile(&self) {
        let reg = self.registry();
        for (name, v) in reg.iter() {
            let result = if v.users.is_empty() {
                match self.mounted_info(name) {
                    Some(_) => self.stop_mount(name),
                    None => Ok(()),
                }
            } else {
                self.ensure_mounted(name, &v.options).map(|_| ())
            };
            if let Err(e) = result {
                tracing::warn!(volume = %name, "reconciling: {e:#}");
            }
        }
    }

    /// The mount's answer when the volume is mounted and serving.
    fn mounted_info(&self, name: &str) -> Option<ControlResponse> {
        mount::control(&self.mountpoint(name), &ControlRequest::Info).ok()
    }

    fn ensure_mounted(&self, name: &str, o: &VolumeOptions) -> Result<ControlResponse> {
        if let Some(info) = self.mounted_info(name) {
            return Ok(info);
        }
        let mountpoint = self.mountpoint(name);
        // A mount whose process died answers ENOTCONN: detach it first.
        if is_mounted(&mountpoint) {
            let _ = mount::unmount(&mountpoint, true);
        }
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let spec = match o.version {
            Some(v) => format!("{}@{v}", o.volume),
            None => o.volume.to_string(),
        };
        let info = Detached {
            spec,
            mountpoint,
            state_dir: self.volume_dir(name).join("state"),
            slave_url: self.config.slave_url.clone(),
            slave_data: self.config.slave_data.clone(),
            token: self.config.token.clone(),
            // Containers run as any user; permissions still apply.
            allow_other: true,
            read_only: false,
            chunk_threshold: crate::chunking::DEFAULT_THRESHOLD,
            assembled_max_bytes: crate::fs::chunked::DEFAULT_ASSEMBLED_MAX_BYTES,
        }
        .spawn()?;
        tracing::info!(volume = %name, elton = %o.volume, version = info.version.unwrap_or(0), "mounted");
        Ok(info)
    }

    /// Unmounts and waits for the mount process to be gone, so that a
    /// following mount never shares the state directory with it. A busy
    /// mount (a host shell inside it, say) is left mounted: it is still
    /// correct, and the next `Mount` reuses it.
    fn stop_mount(&self, name: &str) -> Result<()> {
        let mountpoint = self.mountpoint(name);
        mount::unmount(&mountpoint, false)
            .with_context(|| format!("unmounting {}", mountpoint.display()))?;
        let socket = self.volume_dir(name).join("state/control.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(volume = %name, "unmounted");
        Ok(())
    }

    // --- the endpoints, each blocking ------------------------------------

    fn create(&self, req: CreateRequest, rt: &tokio::runtime::Handle) -> Result<()> {
        check_docker_name(&req.name)?;
        let options = VolumeOptions::parse(&req.name, &req.opts.unwrap_or_default())?;
        let mut endpoints = self.config.endpoints.clone();
        if let Some(m) = &options.master {
            endpoints.master = m.clone();
        }
        rt.block_on(check_on_master(&endpoints, &options))?;
        let mut reg = self.registry();
        reg.create(&req.name, options)?;
        reg.save()?;
        tracing::info!(volume = %req.name, "created");
        Ok(())
    }

    fn mount(&self, req: MountRequest) -> Result<String> {
        let mut reg = self.registry();
        let options = reg.get(&req.name)?.options.clone();
        let acquired = reg.acquire(&req.name, &req.id)?;
        match self.ensure_mounted(&req.name, &options) {
            Ok(_) => {}
            Err(e) => {
                reg.forget(&req.name, &req.id);
                return Err(e);
            }
        }
        reg.save()?;
        let users = reg.get(&req.name).map_or(0, |v| v.users.len());
        tracing::info!(volume = %req.name, id = %req.id, users, first = acquired == Acquired::First, "mount");
        Ok(self.mountpoint(&req.name).display().to_string())
    }

    fn unmount(&self, req: MountRequest) -> Result<()> {
        let mut reg = self.registry();
        let last = reg.release(&req.name, &req.id)?;
        reg.save()?;
        let users = reg.get(&req.name).map_or(0, |v| v.users.len());
        tracing::info!(volume = %req.name, id = %req.id, users, "unmount");
        if last
            && self.mounted_info(&req.name).is_some()
            && let Err(e) = self.stop_mount(&req.name)
        {
            tracing::warn!(volume = %req.name, "left mounted: {e:#}");
        }
        Ok(())
    }

    fn path(&self, req: NameRequest) -> Result<String> {
        self.registry().get(&req.name)?;
        Ok(match self.mounted_info(&req.name) {
            Some(_) => self.mountpoint(&req.name).display().to_string(),
            None => String::new(),
        })
    }

    fn view(&self, name: &str, v: &super::registry::DockerVolume) -> VolumeView {
        let mut status = BTreeMap::new();
        status.insert("volume".into(), v.options.volume.to_string().into());
        status.insert(
            "version".into(),
            v.options
                .version
                .map_or("latest".into(), |n| n.to_string())
                .into(),
        );
        if let Some(m) = &v.options.master {
            status.insert("master".into(), m.clone().into());
        }
        status.insert("users".into(), v.users.len().into());
        let mut mountpoint = String::new();
        if let Some(info) = self.mounted_info(name) {
            mountpoint = self.mountpoint(name).display().to_string();
            status.insert("mounted_version".into(), info.version.unwrap_or(0).into());
        }
        VolumeView {
            name: name.to_string(),
            mountpoint,
            status,
        }
    }

    fn get(&self, req: NameRequest) -> Result<VolumeView> {
        let reg = self.registry();
        let v = reg.get(&req.name)?;
        Ok(self.view(&req.name, v))
    }

    fn list(&self) -> Vec<VolumeView> {
        let reg = self.registry();
        reg.iter().map(|(n, v)| self.view(n, v)).collect()
    }

    /// Drops the local mount and upper; committed versions stay on the
    /// masters. Uncommitted changes are not thrown away: the state directory
    /// moves to `removed/<name>-<unix time>` and the log says where.
    fn remove(&self, req: NameRequest) -> Result<()> {
        let mut reg = self.registry();
        let v = reg.get(&req.name)?;
        if !v.users.is_empty() {
            bail!(
                "volume {:?} is in use by {} container(s)",
                req.name,
                v.users.len()
            );
        }
        if self.mounted_info(&req.name).is_some() {
            self.stop_mount(&req.name)?;
        }
        let dir = self.volume_dir(&req.name);
        if is_mounted(&self.mountpoint(&req.name)) {
            bail!(
                "{} is still mounted; unmount it first",
                self.mountpoint(&req.name).display()
            );
        }
        let upper = dir.join("state/upper");
        let dirty = std::fs::read_dir(&upper).is_ok_and(|mut d| d.next().is_some());
        if dirty {
            let kept = self.config.state_dir.join("removed").join(format!(
                "{}-{}",
                req.name,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            std::fs::create_dir_all(self.config.state_dir.join("removed"))?;
            std::fs::rename(dir.join("state"), &kept)
                .with_context(|| format!("keeping uncommitted changes in {}", kept.display()))?;
            tracing::warn!(volume = %req.name, kept = %kept.display(), "removed a volume with uncommitted changes; they are kept");
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        reg.remove(&req.name)?;
        reg.save()?;
        tracing::info!(volume = %req.name, "removed");
        Ok(())
    }
}

fn is_mounted(p: &Path) -> bool {
    let target = p.display().to_string();
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&target))
    })
}

/// Refuses volumes and versions the master does not know, with its words.
async fn check_on_master(endpoints: &crate::cli::Endpoints, o: &VolumeOptions) -> Result<()> {
    let master = &endpoints.master;
    let mut client = endpoints.master().await?;
    let info = client
        .get_volume(GetVolumeRequest {
            name: o.volume.to_string(),
        })
        .await
        .map_err(|s| {
            anyhow!(
                "volume {:?} on master {master}: {}",
                o.volume.as_str(),
                s.message()
            )
        })?
        .into_inner();
    if let Some(v) = o.version {
        if v > info.head {
            bail!(
                "volume {:?} has no version {v} (latest: {})",
                o.volume.as_str(),
                info.head
            );
        }
        client
            .get_version(GetVersionRequest {
                volume: o.volume.to_string(),
                version: v,
                read_path: None,
            })
            .await
            .map_err(|s| anyhow!("{}@{v}: {}", o.volume, s.message()))?;
    }
    Ok(())
}

// --- HTTP ------------------------------------------------------------------

/// Serves the plugin on `listener` until `shutdown` completes. Mounts stay
/// up when the plugin stops: containers keep their files.
pub async fn serve(
    plugin: Arc<Plugin>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let p = plugin.clone();
    tokio::task::spawn_blocking(move || p.reconcile()).await?;
    axum::serve(listener, router(plugin))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the plugin socket")
}

pub fn router(plugin: Arc<Plugin>) -> Router {
    Router::new()
        .route(
            "/Plugin.Activate",
            post(|| async {
                reply(&ActivateResponse {
                    implements: vec!["VolumeDriver"],
                })
            }),
        )
        .route(
            "/VolumeDriver.Capabilities",
            post(|| async {
                reply(&CapabilitiesResponse {
                    capabilities: Scope { scope: "local" },
                })
            }),
        )
        .route("/VolumeDriver.Create", post(create))
        .route("/VolumeDriver.Remove", post(remove))
        .route("/VolumeDriver.Mount", post(mount_handler))
        .route("/VolumeDriver.Unmount", post(unmount))
        .route("/VolumeDriver.Path", post(path))
        .route("/VolumeDriver.Get", post(get))
        .route("/VolumeDriver.List", post(list))
        .with_state(plugin)
}

fn reply<T: Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Docker sends its own media type, and sometimes no body at all.
fn decode<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("bad request: {e}"))
}

fn bad_request(err: String) -> Response {
    (StatusCode::BAD_REQUEST, reply(&ErrResponse { err })).into_response()
}

fn err_text(e: &anyhow::Error) -> String {
    format!("elton: {e:#}").replace('\n', " ")
}

/// The body of `/VolumeDriver.List`: nothing to read.
#[derive(Default, serde::Deserialize)]
struct NoRequest {}

/// One endpoint: decodes the request, runs `op` off the async workers and
/// answers through `answer`. Docker expects 200 with the error in the body
/// (`Err`), except for bodies it could not have sent (400).
async fn endpoint<Req, T>(
    name: &'static str,
    plugin: Arc<Plugin>,
    body: Bytes,
    op: impl FnOnce(&Plugin, Req) -> Result<T> + Send + 'static,
    answer: fn(Result<T, String>) -> Response,
) -> Response
where
    Req: DeserializeOwned + Default + Send + 'static,
    T: Send + 'static,
{
    let req: Req = match decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let result = match tokio::task::spawn_blocking(move || op(&plugin, req)).await {
        Ok(r) => r,
        Err(e) => Err(anyhow!("plugin task failed: {e}")),
    };
    answer(result.map_err(|e| {
        tracing::warn!(endpoint = name, "refused: {e:#}");
        err_text(&e)
    }))
}

fn err_only(r: Result<(), String>) -> Response {
    reply(&ErrResponse {
        err: r.err().unwrap_or_default(),
    })
}

fn mountpoint_answer(r: Result<String, String>) -> Response {
    let (mountpoint, err) = match r {
        Ok(m) => (m, String::new()),
        Err(e) => (String::new(), e),
    };
    reply(&MountpointResponse { mountpoint, err })
}

fn volume_answer(r: Result<VolumeView, String>) -> Response {
    let (volume, err) = match r {
        Ok(v) => (Some(v), String::new()),
        Err(e) => (None, e),
    };
    reply(&GetResponse { volume, err })
}

fn volumes_answer(r: Result<Vec<VolumeView>, String>) -> Response {
    let (volumes, err) = match r {
        Ok(v) => (v, String::new()),
        Err(e) => (Vec::new(), e),
    };
    reply(&ListResponse { volumes, err })
}

async fn create(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    let rt = tokio::runtime::Handle::current();
    endpoint(
        "Create",
        p,
        body,
        move |p, req| p.create(req, &rt),
        err_only,
    )
    .await
}

async fn remove(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    endpoint("Remove", p, body, Plugin::remove, err_only).await
}

async fn mount_handler(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    endpoint("Mount", p, body, Plugin::mount, mountpoint_answer).await
}

async fn unmount(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    endpoint("Unmount", p, body, Plugin::unmount, err_only).await
}

async fn path(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    endpoint("Path", p, body, Plugin::path, mountpoint_answer).await
}

async fn get(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    endpoint("Get", p, body, Plugin::get, volume_answer).await
}

async fn list(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
    let op = |p: &Plugin, _: NoRequest| Ok(p.list());
    endpoint("List", p, body, op, volumes_answer).await
}
