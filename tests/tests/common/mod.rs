//! Harness for end-to-end tests: real `elton` processes on 127.0.0.1.
//! Every process is killed (SIGKILL) and reaped when its handle drops, so a
//! failing test leaves nothing running.

#![allow(dead_code)]

pub mod busybox;
pub mod group;
pub mod proxy;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The admin token of every test cluster (its masters' bootstrap token).
pub const TOKEN: &str = "e2e-test-token-0123456789";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_elton-e2e")
}

/// A port free now and never handed out before in this test process. The
/// kernel may give a just-released port to the next `bind(0)`, and the
/// tests of one binary run in parallel: two of them could otherwise be
/// given the same port before either process binds it ("Address already
/// in use").
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// Where process `pid`'s group of `controller` is (cgroup v1), from its
/// `/proc/PID/cgroup`; `pid` may be `"self"`.
pub fn cgroup_dir(pid: &str, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let _ = f.next();
            let ctrls = f.next()?;
            let path = f.next()?;
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .expect("controller mounted");
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn wait_port(port: u16) {
    wait_until(&format!("port {port}"), Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A running `elton` process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: Vec<String>, port: u16, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin())
            .args(&args)
            .env("ELTON_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning elton");
        wait_port(port);
        Self {
            child,
            port,
            args,
            log,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same command again (same port, same data directory).
    pub fn restart(&mut self) {
        self.kill9();
        *self = Self::spawn(self.args.clone(), self.port, self.log.clone());
    }

    /// Stops it and starts it again with `extra` flags appended, for this
    /// start only (a later [`Proc::restart`] uses the original flags).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        let base = self.args.clone();
        let mut args = base.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        *self = Self::spawn(args, self.port, self.log.clone());
        self.args = base;
    }

    /// Runs its command once more in the foreground with `extra` flags
    /// appended, and returns the output: a start that must be refused, or
    /// a one-shot command such as `--restore`. Stop it first. Killed after
    /// 30 s (a start that was not refused).
    pub fn run_once(&self, extra: &[&str]) -> Output {
        let child = Command::new(bin())
            .args(&self.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning elton");
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.0.try_wait().expect("waiting").is_none() {
            assert!(
                Instant::now() < deadline,
                "elton {extra:?} still running after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let read = |r: Option<&mut dyn std::io::Read>| {
            let mut buf = Vec::new();
            if let Some(r) = r {
                r.read_to_end(&mut buf).expect("reading output");
            }
            buf
        };
        let stdout = read(child.0.stdout.as_mut().map(|r| r as _));
        let stderr = read(child.0.stderr.as_mut().map(|r| r as _));
        Output {
            status: child.0.wait().expect("status"),
            stdout,
            stderr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster's CA and master certificate, made before its master starts
/// (so that peers can be given each other's CA first).
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub cluster: String,
}

impl Pki {
    pub fn new(cluster: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin())
            .args(["cert", "init", "--cluster", cluster, "--pki"])
            .arg(dir.path())
            .output()
            .expect("elton cert init");
        assert!(
            out.status.success(),
            "elton cert init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir,
            cluster: cluster.to_string(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// A master with any number of slaves, each in its own data directory.
/// Everything runs as in production: the master over TLS with the cluster
/// CA in `<dir>/master/pki` (or a [`Pki`] given up front), slaves with
/// certificates issued by it, clients with [`TOKEN`].
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Set when the CA was made before the master (federated clusters).
    pki: Option<Pki>,
    pub master: Proc,
    pub slaves: Vec<Proc>,
    /// The master's Prometheus port, when started with one.
    pub metrics_port: Option<u16>,
}

impl Cluster {
    pub fn new(slaves: usize) -> Self {
        Self::with_slave_args(slaves, &[])
    }

    pub fn with_slave_args(slaves: usize, extra: &[&str]) -> Self {
        Self::build(slaves, extra, free_port(), &[])
    }

    /// A cluster named after `pki` whose master listens on `port` (chosen
    /// by the caller, so peers' link proxies can point at it before it
    /// starts) and knows `peers` (their CA, and the URL that reaches them,
    /// over TLS). Its Prometheus endpoint is on [`Cluster::metrics_port`].
    pub fn federated(slaves: usize, pki: Pki, port: u16, peers: &[(&Pki, String)]) -> Self {
        let metrics = free_port();
        let mut args = vec![
            "--cluster".to_string(),
            pki.cluster.clone(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
            "--tls-dir".into(),
            pki.dir.path().display().to_string(),
        ];
        for (peer, url) in peers {
            let url = url.replacen("http://", "https://", 1);
            args.push("--peer".into());
            args.push(format!("{}={url},ca={}", peer.cluster, peer.ca().display()));
        }
        let mut c = Self::build_with(slaves, &[], port, &args, Some(pki));
        c.metrics_port = Some(metrics);
        c
    }

    /// `master_extra` is appended to the master's flags (e.g.
    /// `["--replication", "1"]`), `slave_extra` to every slave's.
    pub fn with_args(slaves: usize, master_extra: &[&str], slave_extra: &[&str]) -> Self {
        let master_extra: Vec<String> = master_extra.iter().map(|s| s.to_string()).collect();
        Self::build(slaves, slave_extra, free_port(), &master_extra)
    }

    fn build(slaves: usize, extra: &[&str], port: u16, master_extra: &[String]) -> Self {
        Self::build_with(slaves, extra, port, master_extra, None)
    }

    fn build_with(
        slaves: usize,
        extra: &[&str],
        port: u16,
        master_extra: &[String],
        pki: Option<Pki>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        let mut args = vec![
            "master".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.path().join("master").display().to_string(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--down-after-ms".into(),
            "3000".into(),
            "--bootstrap-token-file".into(),
            dir.path().join("token").display().to_string(),
        ];
        args.extend(master_extra.iter().cloned());
        let master = Proc::spawn(args, port, dir.path().join("master.log"));
        let mut c = Self {
            dir,
            pki,
            master,
            slaves: Vec::new(),
            metrics_port: None,
        };
        // The port is bound before the master has made its CA and first
        // token: wait until it answers an admin call.
        wait_until("master ready", Duration::from_secs(20), || {
            master_answers(&c)
        });
        for _ in 0..slaves {
            c.add_slave(extra);
        }
        c
    }

    /// The CA made before the master (federated clusters only).
    pub fn pki(&self) -> &Pki {
        self.pki.as_ref().expect("a federated cluster")
    }

    /// The master's TLS directory (CA key and certificate).
    pub fn pki_dir(&self) -> PathBuf {
        match &self.pki {
            Some(p) => p.dir.path().to_path_buf(),
            None => self.dir.path().join("master").join("pki"),
        }
    }

    /// The cluster CA certificate clients trust (`ELTON_CA`).
    pub fn ca_path(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }

    /// The master's gRPC URL (TLS).
    pub fn master_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.master.port)
    }

    /// Issues a certificate for node `node` of this cluster into `out`.
    pub fn issue_cert(&self, node: &str, out: &Path) {
        let out_arg = out.display().to_string();
        let pki = self.pki_dir().display().to_string();
        let o = Command::new(bin())
            .args([
                "cert", "issue", "--node", node, "--out", &out_arg, "--pki", &pki,
            ])
            .output()
            .expect("elton cert issue");
        assert!(
            o.status.success(),
            "elton cert issue: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn add_slave(&mut self, extra: &[&str]) {
        let i = self.slaves.len() + 1;
        let port = free_port();
        let tls = self.slave_dir(i).join("tls");
        self.issue_cert(&format!("slave{i}"), &tls);
        let mut args = vec![
            "slave".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            self.slave_dir(i).display().to_string(),
            "--master-url".into(),
            self.master_url(),
            "--node-id".into(),
            format!("slave{i}"),
            "--tls-dir".into(),
            tls.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = Proc::spawn(args, port, self.dir.path().join(format!("slave{i}.log")));
        self.slaves.push(p);
        let id = format!("slave{i}");
        wait_until(&format!("{id} registered"), Duration::from_secs(20), || {
            registered(self, &id)
        });
    }

    /// Data directory of slave `i` (1-based).
    pub fn slave_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("slave{i}"))
    }

    /// Runs the CLI against the master and slave `i` (1-based).
    pub fn cli(&self, slave: usize, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("ELTON_MASTER", self.master_url())
            .env("ELTON_SLAVE", self.slaves[slave - 1].url())
            .env("ELTON_TOKEN", TOKEN)
            .env("ELTON_CA", self.ca_path())
            .env("ELTON_HOME", self.dir.path().join("home"))
            .output()
            .expect("running elton")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, slave: usize, args: &[&str]) -> String {
        let out = self.cli(slave, args);
        assert!(
            out.status.success(),
            "elton {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn slave_url(&self, i: usize) -> String {
        self.slaves[i - 1].url()
    }

    /// A gRPC client of the master holding the harness's admin token.
    pub async fn master_client(&self) -> MasterGrpc {
        self.client_with(Some(TOKEN), None).await
    }

    /// A gRPC client of the master that authenticates as node `node_id` of
    /// this cluster (for tests that play a node, e.g. a fake holder): a
    /// certificate is issued for it, and no token is sent.
    pub async fn node_client(&self, node_id: &str) -> MasterGrpc {
        let dir = self.dir.path().join(format!("certs-{node_id}"));
        if !dir.join("node.pem").exists() {
            self.issue_cert(node_id, &dir);
        }
        let creds = elton_trust::TlsDir::new(&dir)
            .load_node()
            .expect("node credentials");
        self.client_with(None, Some(&creds)).await
    }

    /// A client with exactly the given credentials (either may be absent).
    pub async fn client_with(
        &self,
        token: Option<&str>,
        creds: Option<&elton_trust::NodeCredentials>,
    ) -> MasterGrpc {
        try_client(self, token, creds)
            .await
            .unwrap_or_else(|e| panic!("connecting to the master: {e}"))
    }
}

/// The client type [`Cluster::master_client`] and [`Cluster::node_client`]
/// return; name it only through this alias.
pub type MasterGrpc = elton_proto::pb::master_client::MasterClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        elton_trust::BearerAuth,
    >,
>;

pub fn registered(c: &Cluster, node: &str) -> bool {
    ask_master(c, async |m| {
        m.list_nodes(elton_proto::pb::ListNodesRequest {})
            .await
            .is_ok_and(|r| {
                r.into_inner()
                    .nodes
                    .iter()
                    .any(|n| n.node_id == node && n.up)
            })
    })
}

fn master_answers(c: &Cluster) -> bool {
    ask_master(c, async |m| {
        m.list_volumes(elton_proto::pb::ListVolumesRequest {})
            .await
            .is_ok()
    })
}

/// `ask` with an admin client; false while the master does not answer.
fn ask_master(c: &Cluster, ask: impl AsyncFnOnce(&mut MasterGrpc) -> bool) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        match try_client(c, Some(TOKEN), None).await {
            Ok(mut m) => ask(&mut m).await,
            Err(_) => false,
        }
    })
}

/// A client with exactly the given credentials, or why there is none
/// (e.g. the master does not answer yet).
async fn try_client(
    c: &Cluster,
    token: Option<&str>,
    creds: Option<&elton_trust::NodeCredentials>,
) -> Result<MasterGrpc, String> {
    let ca = std::fs::read_to_string(c.ca_path()).map_err(|e| format!("cluster CA: {e}"))?;
    let tls = match creds {
        Some(creds) => elton_trust::tls::node_client(creds, &ca),
        None => elton_trust::tls::anonymous_client(&ca),
    };
    let channel = tonic::transport::Endpoint::from_shared(c.master_url())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let auth = elton_trust::BearerAuth::new(token).map_err(|e| e.to_string())?;
    Ok(
        elton_proto::pb::master_client::MasterClient::with_interceptor(channel, auth)
            .max_decoding_message_size(64 << 20),
    )
}

/// Reads a Prometheus counter from a slave's `/metrics`.
pub fn metric(slave_url: &str, name: &str) -> u64 {
    let text = reqwest::blocking::get(format!("{slave_url}/metrics"))
        .and_then(|r| r.text())
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("elton_slave_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Every regular file under `root`, as paths relative to it.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path().strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes (no RNG dependency).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let h = blake3::hash(&[seed.to_le_bytes(), counter.to_le_bytes()].concat());
        out.extend_from_slice(h.as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// URL-encodes each component of a relative path.
pub fn url_path(p: &Path) -> String {
    p.iter()
        .map(|c| {
            c.to_string_lossy()
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends a raw HTTP/1.1 request (no client-side path normalisation) and
/// returns the status code and body.
pub fn raw_http(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// An Eltonfs mount run as a foreground child process; unmounted and
/// killed on drop, so a failing test leaves no mount behind.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub state: PathBuf,
    pub child: Child,
    slave_url: String,
}

impl Mount {
    /// Mounts `spec` (VOLUME[@VERSION]) through slave `i` of `cluster`,
    /// with the upper in `state`. `extra` adds flags (e.g. `--allow-other`).
    pub fn new(
        cluster: &Cluster,
        slave: usize,
        spec: &str,
        mountpoint: &Path,
        state: &Path,
        extra: &[&str],
    ) -> Self {
        Self::with_env(cluster, slave, spec, mountpoint, state, extra, &[])
    }

    /// As [`Mount::new`], with extra environment for the mount process.
    pub fn with_env(
        cluster: &Cluster,
        slave: usize,
        spec: &str,
        mountpoint: &Path,
        state: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        std::fs::create_dir_all(mountpoint).expect("mountpoint");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cluster.dir.path().join("mounts.log"))
            .expect("log");
        let mut args = vec![
            "mount".to_string(),
            spec.to_string(),
            mountpoint.display().to_string(),
            "--foreground".into(),
            "--upper".into(),
            state.display().to_string(),
            "--slave-data".into(),
            cluster.slave_dir(slave).display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(bin())
            .args(&args)
            .env("ELTON_SLAVE", cluster.slave_url(slave))
            .env("ELTON_MASTER", cluster.master_url())
            .env("ELTON_TOKEN", TOKEN)
            .env("ELTON_CA", cluster.ca_path())
            .env("ELTON_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning mount");
        let mut m = Self {
            mountpoint: mountpoint.to_path_buf(),
            state: state.to_path_buf(),
            child,
            slave_url: cluster.slave_url(slave),
        };
        let mp = m.mountpoint.clone();
        wait_until("mount to come up", Duration::from_secs(30), || {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("mount exited early: {status}");
            }
            is_elton_mount(&mp)
        });
        m
    }

    /// Runs an `elton` subcommand that addresses this mount.
    pub fn elton(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("ELTON_SLAVE", &self.slave_url)
            .env("ELTON_TOKEN", TOKEN)
            .output()
            .expect("running elton")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// SIGKILL, as a crash; the dead mount is detached.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        detach(&self.mountpoint);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        detach(&self.mountpoint);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_elton_mount(p: &Path) -> bool {
    let target = p.display().to_string();
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (src, dst) = (f.next(), f.next());
            dst == Some(target.as_str()) && src.is_some_and(|s| s.starts_with("elton:"))
        })
    })
}

/// Lazily unmounts whatever is mounted at `p` (ignores "not mounted").
pub fn detach(p: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(p)
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("umount")
        .arg("-l")
        .arg(p)
        .stderr(Stdio::null())
        .status();
}

/// Prints the last `lines` lines of every `*.log` in `dir`: after a failed
/// test the temp dir is gone, so this is all that is left of the processes.
pub fn print_log_tails(dir: &Path, lines: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            eprintln!("---- {} (last {} lines)", p.display(), tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    /// On failure, show the tail of every process log: the temp dir is gone after.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        print_log_tails(self.dir.path(), 30);
    }
}

/// Detaches a mount on drop (for mounts owned by processes the test does
/// not manage through [`Mount`]).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_elton_mount(&self.0) {
            detach(&self.0);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished command's stdout followed by its stderr, for messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
