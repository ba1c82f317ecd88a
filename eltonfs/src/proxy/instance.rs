//! Instances of an app on this host, behind one trait: a process instance
//! (here) runs the app's command with `sh -c` in a read-only Eltonfs mount
//! of the app's volume at its version (one mount per volume version on
//! this host, shared by every instance of it), with the port in its
//! environment; a Docker instance ([`super::docker`]) runs it in a
//! container with the same mount as its working directory.

use std::ffi::CString;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use elton_control::apps::AppSpec;
use tokio::process::{Child, Command};

use elton_control::drcond::Resources;
use elton_control::drcond::host::CgroupHost;
use elton_control::drcond::plan::Step;

use super::mounts::Mounts;

/// drcond's cgroup mechanism, shared by the instances of one runtime.
type Cgroups = Arc<std::sync::Mutex<CgroupHost>>;

/// A started instance: where it listens, and how to tell whether it died.
pub trait Instance: Send + Sync {
    fn addr(&self) -> SocketAddr;
    /// `Some(reason)` once the instance has exited (its exit status and the
    /// last lines of its output).
    fn exited(&mut self) -> Option<String>;
    /// Stops it (and everything it started).
    fn stop(&mut self);
    /// Its id on this host for the instance registry: a pid or a
    /// container id.
    fn id(&self) -> String {
        self.addr().to_string()
    }
    /// CPU time its processes used so far, in microseconds (`None`: not
    /// measurable here). Sampled twice, it gives the instance's CPU use.
    fn cpu_usage_usec(&self) -> Option<u64> {
        None
    }
    /// Its CPU quota now, read back (percent of one core; `None`:
    /// unlimited or unknown).
    fn cpu_quota_percent(&self) -> Option<u32> {
        None
    }
    /// Sets its CPU quota (scale-up).
    fn set_cpu_quota(&mut self, percent: u32) -> Result<(), String> {
        let _ = percent;
        Err("this runtime cannot change an instance's CPU quota".into())
    }
}

pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<Box<dyn Instance>>> + Send + 'a>>;

/// Starts instances of apps.
pub trait Runtime: Send + Sync {
    /// Starts one instance of `app`; it may not listen yet.
    fn start<'a>(&'a self, app: &'a AppSpec) -> StartFuture<'a>;
    /// Releases what the runtime holds (mounts) when the proxy stops.
    fn shutdown(&self);
}

/// Runs instances as processes in the shared mounts, logs in
/// `<dir>/logs`.
pub struct ProcessRuntime {
    dir: PathBuf,
    mounts: Arc<Mounts>,
    /// Where instances get their app's CPU and memory limits; `None`
    /// where cgroups are not available (an app with limits is then
    /// refused rather than run unlimited).
    cgroups: Result<Cgroups, String>,
}

/// The CFS period of instances' CPU limits: 10 ms. Over the kernel's
/// 100 ms, an app at a 25 % quota runs 25 ms and then stalls 75 ms, so
/// every request caught in the stall waits up to 75 ms (the bench's p99
/// was 96 ms at 25 %); over 10 ms it waits at most 7.5 ms, for the same
/// share of CPU.
pub const APP_CFS_PERIOD_US: u64 = 10_000;

impl ProcessRuntime {
    pub fn new(dir: &Path, mounts: Arc<Mounts>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            mounts,
            // Groups at `<own cgroup>/elton-proxy-<tag of dir>/<port>`.
            cgroups: CgroupHost::open("proxy", dir).map(|mut h| {
                h.set_cfs_period_us(APP_CFS_PERIOD_US);
                Arc::new(std::sync::Mutex::new(h))
            }),
        }
    }

    /// Cleans up after a proxy that was killed: its instances (still
    /// running in its mounts) are killed and its mounts detached, so this
    /// run starts from nothing it does not know about.
    pub fn reap(&self) {
        let mounts = self.mounts.root();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in procs.flatten() {
            let Some(pid) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&mounts)) {
                tracing::info!(
                    pid = pid.as_raw_nonzero().get(),
                    "stopping a previous run's instance"
                );
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        self.mounts.reap();
    }
}

impl Runtime for ProcessRuntime {
    fn start<'a>(&'a self, app: &'a AppSpec) -> StartFuture<'a> {
        Box::pin(async move {
            let cmd = app.cmd.as_deref().ok_or_else(|| {
                anyhow!(
                    "app {:?} has no command; images need the Docker runtime",
                    app.name
                )
            })?;
            let limited = app.cpu_percent.is_some() || app.memory_bytes.is_some();
            let cgroups = match (&self.cgroups, limited) {
                (_, false) => None,
                (Ok(c), true) => Some(c.clone()),
                (Err(e), true) => {
                    return Err(anyhow!(
                        "it has CPU or memory limits, and this host cannot apply them: {e}"
                    ));
                }
            };
            let cwd = self.mounts.get(&app.volume, app.version).await?;
            let port = free_port()?;
            // Its group is named by its port: unique on this host while
            // it runs. Made first, so the command joins it before it runs
            // anything (see `join`).
            let id = u64::from(port);
            let group = match cgroups {
                Some(cg) => {
                    let resources = Resources {
                        cpu_percent: app.cpu_percent,
                        memory_bytes: app.memory_bytes,
                        ..Resources::default()
                    };
                    let files = tokio::task::spawn_blocking({
                        let cg = cg.clone();
                        move || make_group(&cg, id, &resources)
                    })
                    .await
                    .map_err(|e| anyhow!("limiting the instance: {e}"))?
                    .map_err(|e| anyhow!("limiting the instance: {e}"))?;
                    Some((cg, files))
                }
                None => None,
            };
            let logs = self.dir.join("logs");
            std::fs::create_dir_all(&logs)
                .with_context(|| format!("creating {}", logs.display()))?;
            let log_path = logs.join(format!("{}-{port}.log", app.name));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let err = log.try_clone()?;
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(cmd)
                .current_dir(&cwd)
                .env(&app.port_env, port.to_string())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                // Its own process group, so stopping it reaches what the
                // shell started.
                .process_group(0)
                .kill_on_drop(true);
            if let Some((_, files)) = &group {
                let files = files.clone();
                // The one unsafe block of the crate: a hook between fork and
                // exec is the only way to run limited from the start.
                // SAFETY: `join` makes raw system calls only (open, write,
                // close on paths prepared here): nothing that allocates or
                // takes a lock, as the child of a threaded process requires.
                #[allow(unsafe_code)]
                unsafe {
                    command.pre_exec(move || join(&files));
                }
            }
            let child = match command.spawn() {
                Ok(c) => c,
                Err(e) => {
                    if let Some((cg, _)) = group {
                        let _ = tokio::task::spawn_blocking(move || {
                            cg.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .run(&Step::Remove { id })
                        })
                        .await;
                    }
                    return Err(e).with_context(|| format!("starting app {:?}", app.name));
                }
            };
            tracing::info!(app = %app.name, port, pid = child.id(), "instance started");
            let instance = ProcessInstance {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log: log_path,
                group: group.map(|(cg, _)| (cg, id)),
                memory_bytes: app.memory_bytes,
            };
            Ok(Box::new(instance) as Box<dyn Instance>)
        })
    }

    fn shutdown(&self) {
        self.mounts.unmount_all();
    }
}

struct ProcessInstance {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// Its cgroup, if its app has limits: removed when it stops.
    group: Option<(Cgroups, u64)>,
    /// Its app's memory limit, kept when its CPU quota changes.
    memory_bytes: Option<u64>,
}

/// Makes group `id` with `resources` (drcond's steps); its files to join
/// it through.
fn make_group(cg: &Cgroups, id: u64, r: &Resources) -> Result<Vec<CString>, String> {
    let mut h = cg.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    h.run(&Step::Create { id })?;
    if let Err(e) = h.run(&Step::Set {
        id,
        resources: r.clone(),
    }) {
        let _ = h.run(&Step::Remove { id });
        return Err(e);
    }
    h.join_files(id)
        .into_iter()
        .map(|p| {
            CString::new(p.into_os_string().into_vec())
                .map_err(|_| format!("group {id}: a path with a NUL byte"))
        })
        .collect()
}

/// Run in the started child before `exec`: joins the instance's group by
/// writing `0` ("this process") to each `cgroup.procs`. Moving the process
/// from outside after it started would leave out what it forked in the
/// meantime; `sh -c CMD` forks CMD at once (dash does not `exec` it).
fn join(files: &[CString]) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, open};
    for f in files {
        let fd = open(
            f.as_c_str(),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::io::write(&fd, b"0")?;
    }
    Ok(())
}

impl Instance for ProcessInstance {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn exited(&mut self) -> Option<String> {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => return Some(format!("its status cannot be read: {e}")),
        };
        let tail = log_tail(&self.log);
        Some(if tail.is_empty() {
            format!("it exited ({status}) without output")
        } else {
            format!("it exited ({status}): {tail}")
        })
    }

    fn stop(&mut self) {
        let pid = self.child.id().and_then(|p| i32::try_from(p).ok());
        if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
            // The whole group: the shell and what it started.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
        if let Some((cg, id)) = self.group.take() {
            // The group can go once its processes are gone (killed just
            // above; reaped by the kernel within milliseconds).
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let mut h = cg.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if h.members(id).is_empty() && h.run(&Step::Remove { id }).is_ok() {
                        return;
                    }
                    drop(h);
                    std::thread::sleep(Duration::from_millis(20));
                }
                tracing::warn!("cgroup {id} of a stopped instance could not be removed");
            });
        }
    }

    fn id(&self) -> String {
        self.child
            .id()
            .map_or_else(|| self.addr.to_string(), |p| p.to_string())
    }

    fn cpu_usage_usec(&self) -> Option<u64> {
        let pids = match &self.group {
            Some((cg, id)) => cg
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .members(*id),
            None => vec![i32::try_from(self.child.id()?).ok()?],
        };
        let total: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        Some(total.saturating_mul(1_000_000) / USER_HZ)
    }

    fn cpu_quota_percent(&self) -> Option<u32> {
        let (cg, id) = self.group.as_ref()?;
        cg.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read_back(*id, None)
            .cpu_percent
    }

    fn set_cpu_quota(&mut self, percent: u32) -> Result<(), String> {
        let (cg, id) = self
            .group
            .as_ref()
            .ok_or("the instance has no cgroup (its app sets no limits)")?;
        let resources = Resources {
            cpu_percent: Some(percent),
            memory_bytes: self.memory_bytes,
            ..Resources::default()
        };
        cg.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .run(&Step::Set { id: *id, resources })
    }
}

/// The unit of `/proc/PID/stat`'s CPU times: the kernel exports them in
/// USER_HZ, 100 on every architecture Linux runs Elton on.
const USER_HZ: u64 = 100;

/// User plus system CPU ticks of process `pid` (fields 14 and 15 of
/// `/proc/PID/stat`, counted after the command name, which may hold
/// spaces and parentheses).
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of an instance's output, at most 512 bytes: what it
/// said before it died.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    tail(&String::from_utf8_lossy(&text))
}

/// The last three non-empty lines of `text`, joined with ` | `, at most
/// 512 bytes.
pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.len() > 512 {
        let mut cut = tail.len() - 512;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail
    }
}

/// A port free now on 127.0.0.1 (the app binds it shortly after; another
/// process taking it meanwhile shows as a start that never listens).
pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
