//! `elton proxy` as a process of a test group (FastContainer tests), and
//! the apps it runs. Dropped in field order: the proxy is killed (SIGKILL
//! leaves its instances running), then what it left is removed (instances,
//! containers), then the mounts it made are detached.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::group::Group;
use super::{KillOnDrop, MountGuard, TOKEN, bin, free_port, raw_http, wait_until};

/// How a test runs its proxy.
pub struct ProxyOpts {
    /// `--host` (the name the group knows the host by); `None`: the
    /// proxy's default.
    pub host: Option<String>,
    /// The master it talks to (a follower lets the leader be killed).
    pub master: usize,
    /// The slave host it runs on (1-based).
    pub slave: usize,
    /// Flags beyond `--listen` and `--dir`.
    pub args: Vec<String>,
    /// Mounts (under the proxy's `mounts/`) to detach on drop.
    pub mounts: Vec<String>,
    /// How long it may take to listen.
    pub listen_within: Duration,
}

impl ProxyOpts {
    /// One proxy on the group's first slave, through master 1.
    pub fn single(args: &[&str], mounts: &[&str]) -> Self {
        Self {
            host: None,
            master: 1,
            slave: 1,
            args: args.iter().map(|a| a.to_string()).collect(),
            mounts: mounts.iter().map(|m| m.to_string()).collect(),
            listen_within: Duration::from_secs(20),
        }
    }
}

pub struct ProxyProc {
    child: KillOnDrop,
    _leftovers: Leftovers,
    _mounts: Vec<MountGuard>,
    opts: ProxyOpts,
    /// `--host`, or "" for the proxy's default.
    pub host: String,
    pub port: u16,
    /// Its `--dir`: mounts, instance logs, working directories.
    pub dir: PathBuf,
    log: PathBuf,
}

/// Kills the processes working under a proxy's directory and removes the
/// containers labelled with it.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        kill_all_under(&self.0);
        for id in containers_of(&self.0) {
            let _ = docker(&["rm", "-f", &id]);
        }
    }
}

impl ProxyProc {
    pub fn start(g: &Group, opts: ProxyOpts) -> Self {
        let port = free_port();
        let name = opts
            .host
            .clone()
            .map_or_else(|| "proxy".to_string(), |h| format!("proxy-{h}"));
        let dir = g.dir.path().join(&name);
        let log = g.dir.path().join(format!("{name}.log"));
        let child = spawn(g, &opts, port, &dir, &log);
        Self {
            child,
            _leftovers: Leftovers(dir.clone()),
            _mounts: opts
                .mounts
                .iter()
                .map(|m| MountGuard(dir.join("mounts").join(m)))
                .collect(),
            host: opts.host.clone().unwrap_or_default(),
            opts,
            port,
            dir,
            log,
        }
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// SIGKILL: its instances and mounts stay behind.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// The same proxy again, on the same port and directory.
    pub fn restart(&mut self, g: &Group) {
        self.child = spawn(g, &self.opts, self.port, &self.dir, &self.log);
    }

    pub fn kill_and_restart(&mut self, g: &Group) {
        self.kill();
        self.restart(g);
    }

    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        raw_http(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    }

    pub fn post(&self, host: &str, path: &str, body: &str) -> (u16, String) {
        raw_http(
            self.port,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
                 Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// A metric's value for `app` (0 when absent).
    pub fn metric(&self, name: &str, app: &str) -> u64 {
        let (_, text) = self.get("127.0.0.1", "/metrics");
        let prefix = format!("{name}{{app=\"{app}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Requests this host's instances of `app` answered (from busybox
    /// httpd's `-v` log, one `response:` line per request).
    pub fn served(&self, app: &str) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{app}-"))
            })
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .matches("response:")
                    .count()
            })
            .sum()
    }
}

fn spawn(g: &Group, opts: &ProxyOpts, port: u16, dir: &Path, log: &Path) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("proxy log");
    let mut cmd = Command::new(bin());
    cmd.args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--dir")
        .arg(dir);
    if let Some(h) = &opts.host {
        cmd.args(["--host", h]);
    }
    let child = cmd
        .args(&opts.args)
        .env("ELTON_MASTER", g.master_url(opts.master))
        .env("ELTON_SLAVE", g.slaves[opts.slave - 1].url())
        .env(
            "ELTON_SLAVE_DATA",
            g.dir.path().join(format!("slave{}", opts.slave)),
        )
        .env("ELTON_TOKEN", TOKEN)
        .env("ELTON_CA", g.ca())
        .env("ELTON_HOME", g.dir.path().join("home"))
        .env("ELTON_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting elton proxy");
    let child = KillOnDrop(child);
    wait_until("the proxy listens", opts.listen_within, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

/// `elton app create NAME --host-name HOST --volume site --cmd CMD EXTRA..`
/// through master 1.
pub fn create_app(g: &Group, name: &str, host: &str, cmd: &str, extra: &[&str]) {
    let mut args = vec![
        "app",
        "create",
        name,
        "--host-name",
        host,
        "--volume",
        "site",
        "--cmd",
        cmd,
    ];
    args.extend_from_slice(extra);
    g.ok(1, &args);
}

pub fn kill_all_under(dir: &Path) {
    for pid in instances_under(dir) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// Processes whose working directory is under `dir`: the process
/// runtime's instances.
pub fn instances_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)) {
            pids.push(pid);
        }
    }
    pids
}

pub fn docker(args: &[&str]) -> Option<std::process::Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
}

/// Ids of the containers (running or not) that the proxy working in `dir`
/// made: they carry its directory as a label. None without an engine.
pub fn containers_of(dir: &Path) -> Vec<String> {
    let filter = format!("label=elton.proxy.dir={}", dir.display());
    let Some(out) = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
