//! Long-running subcommands: `master`, `slave`, and `up` (both in one
//! process, the README's run command).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use elton_master::MasterConfig;
use elton_slave::SlaveConfig;
use tokio::net::TcpListener;

use super::default_data_dir;

#[derive(Args, Debug)]
pub struct MasterArgs {
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7100].
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory [default: <ELTON_HOME>/master].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This master's name, recorded as the home of its volumes [default: master].
    #[arg(long)]
    pub id: Option<String>,
    /// Heartbeat interval asked of slaves, in milliseconds [default: 2000].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Silence after which a slave is marked down, in milliseconds [default: 10000].
    #[arg(long)]
    pub down_after_ms: Option<u64>,
    /// This master's cluster name, the home of its volumes [default: the id].
    #[arg(long)]
    pub cluster: Option<String>,
    /// A peer master of another cluster and its cluster's CA certificate,
    /// NAME=https://HOST:PORT,ca=PATH (repeatable; adds to the config
    /// file's peers).
    #[arg(long = "peer", value_name = "NAME=URL,ca=PATH")]
    pub peers: Vec<elton_master::config::PeerConfig>,
    /// Deadline of one call to a peer master, in milliseconds [default: 3000].
    #[arg(long)]
    pub peer_timeout_ms: Option<u64>,
    /// Serve Prometheus /metrics over HTTP on this address [default: off].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Copies wanted of every object on distinct slaves [default: 2].
    #[arg(long)]
    pub replication: Option<u32>,
    /// Garbage collection never removes objects that arrived or were used
    /// on their slave less than this many milliseconds ago [default: 3600000].
    #[arg(long)]
    pub gc_grace_ms: Option<u64>,
    /// Run garbage collection every this many milliseconds; 0 only on
    /// `elton gc` [default: 21600000, 6 h].
    #[arg(long)]
    pub gc_interval_ms: Option<u64>,
    /// Cluster CA and this master's certificate, created on the first
    /// start [default: <data-dir>/pki].
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Extra DNS name or IP address for this master's certificate when it
    /// is issued (repeatable).
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// First admin token: read from this file on a start with no tokens, or
    /// created there [default: <data-dir>/admin.token].
    #[arg(long)]
    pub bootstrap_token_file: Option<PathBuf>,
    /// No TLS and no authentication: anyone who reaches the port may do
    /// anything. Only on loopback addresses (benchmarks, a throwaway host).
    #[arg(long)]
    pub insecure: bool,
    /// Allow --insecure on a non-loopback address.
    #[arg(long, requires = "insecure")]
    pub insecure_allow_network: bool,
    /// Start a new incarnation on empty metadata when the data directory's
    /// master.redb is missing or unusable (it is moved aside, not deleted):
    /// version numbers start again at 1 and slaves drop what they cached.
    #[arg(long, conflicts_with = "restore")]
    pub new_incarnation: bool,
    /// Install a backup (`elton backup FILE`) into the data directory under
    /// a new incarnation, report what it rolls back, and exit. The master
    /// must be stopped.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// With --restore: print the report as JSON.
    #[arg(long, requires = "restore")]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// The master's control plane settings (docs/operations.md §Control plane).
#[derive(Args, Debug, Default)]
pub struct ControlArgs {
    /// Directory of control.redb (state machine) and control.wal/ (Raft log) [default: the data dir].
    #[arg(long)]
    pub control_dir: Option<PathBuf>,
    /// URL other members reach this master's control service at
    /// [default: https://<listen address>].
    #[arg(long)]
    pub control_advertise: Option<String>,
    /// On a start in no group, make a one-voter group of this master.
    #[arg(long)]
    pub control_init: bool,
    /// Raft heartbeat interval, in milliseconds [default: 50].
    #[arg(long)]
    pub control_heartbeat_ms: Option<u64>,
    /// Shortest election timeout, in milliseconds [default: 200]. Raise it
    /// (and the maximum) for groups spanning a WAN: several round trips.
    #[arg(long)]
    pub control_election_min_ms: Option<u64>,
    /// Longest election timeout, in milliseconds [default: 400].
    #[arg(long)]
    pub control_election_max_ms: Option<u64>,
    /// Connect timeout and longest Raft call to another member, in
    /// milliseconds [default: 2000].
    #[arg(long)]
    pub control_rpc_timeout_ms: Option<u64>,
    /// Snapshot (and purge the log) every this many entries [default: 10000].
    #[arg(long)]
    pub control_snapshot_every: Option<u64>,
    /// Entries kept behind a snapshot for lagging members [default: 1000].
    #[arg(long)]
    pub control_keep_logs: Option<u64>,
}

impl ControlArgs {
    fn apply(self, c: &mut elton_master::config::ControlConfig) {
        if let Some(v) = self.control_dir {
            c.dir = Some(v);
        }
        if let Some(v) = self.control_advertise {
            c.advertise = Some(v);
        }
        c.init |= self.control_init;
        let ms = Duration::from_millis;
        if let Some(v) = self.control_heartbeat_ms {
            c.heartbeat = ms(v);
        }
        if let Some(v) = self.control_election_min_ms {
            c.election_min = ms(v);
        }
        if let Some(v) = self.control_election_max_ms {
            c.election_max = ms(v);
        }
        if let Some(v) = self.control_rpc_timeout_ms {
            c.rpc_timeout = ms(v);
        }
        if let Some(v) = self.control_snapshot_every {
            c.snapshot_every = v;
        }
        if let Some(v) = self.control_keep_logs {
            c.keep_logs = v;
        }
    }
}

#[derive(Args, Debug)]
pub struct SlaveArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:7200")]
    pub listen: String,
    /// Data directory (object store) [default: <ELTON_HOME>/slave].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Old name of the global --master (the master to register with);
    /// kept so existing scripts work.
    #[arg(long = "master-url", hide = true)]
    pub master_url: Option<String>,
    /// Node id [default: kept in <data-dir>/node-id].
    #[arg(long)]
    pub node_id: Option<String>,
    /// host:port others use to reach this slave [default: the listen address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// This node's certificate, key and cluster CA (node.pem, node.key,
    /// ca.pem; `elton cert issue --out` writes them) [default: <data-dir>/tls].
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Largest upload accepted, in bytes.
    #[arg(long, default_value_t = 16 << 30)]
    pub max_upload_bytes: u64,
    /// Time a client has to send a request head (from its first byte, or
    /// from connecting for the first request), in milliseconds.
    #[arg(long, default_value_t = elton_slave::conn_clock::HEADER_READ_TIMEOUT.as_millis() as u64)]
    pub http_header_timeout_ms: u64,
    /// Time an HTTP connection may stay unused between requests, in milliseconds.
    #[arg(long, default_value_t = elton_slave::conn_clock::IDLE_TIMEOUT.as_millis() as u64)]
    pub http_idle_timeout_ms: u64,
    /// Background scrub: re-hash stored objects at this many MiB/s (every
    /// object counts at least 64 KiB); 0 disables it.
    #[arg(long, default_value_t = elton_slave::scrub_pace::DEFAULT_RATE_MIB)]
    pub scrub_rate: u64,
    /// Join the control plane's Raft group as a learner, serving its gRPC
    /// endpoint on this host:port [default: not a member].
    #[arg(long)]
    pub control_listen: Option<String>,
    /// URL the masters reach the control endpoint at
    /// [default: https://<control-listen>].
    #[arg(long, requires = "control_listen")]
    pub control_advertise: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Data directory [default: $ELTON_HOME or ~/.local/share/elton].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The master's gRPC listen address (clients' --master).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub master_listen: String,
    /// The slave's HTTP listen address (clients' --slave).
    #[arg(long, default_value = "127.0.0.1:7200")]
    pub slave_listen: String,
    /// Serve the master's Prometheus /metrics over HTTP on this address
    /// [default: off]; the slave's are on its own port, /metrics.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Volume to create (if missing) and mount.
    #[arg(long, default_value = "default")]
    pub volume: String,
    /// Where to mount it [default: <data>/volumes/<volume>].
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
    /// Do not mount anything.
    #[arg(long)]
    pub no_mount: bool,
    /// No TLS and no authentication on the master (loopback addresses
    /// only): the baseline the benchmarks compare against.
    #[arg(long)]
    pub insecure: bool,
    /// The slave's background scrub rate in MiB/s; 0 disables it.
    #[arg(long, default_value_t = elton_slave::scrub_pace::DEFAULT_RATE_MIB)]
    pub scrub_rate: u64,
}

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

fn master_config(a: MasterArgs) -> Result<MasterConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let mut c = MasterConfig::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            // A file without `data_dir` means the documented default, not
            // a directory relative to wherever the master was started.
            if c.data_dir == MasterConfig::default().data_dir {
                c.data_dir = default_data_dir().join("master");
            }
            c
        }
        None => MasterConfig {
            data_dir: default_data_dir().join("master"),
            ..MasterConfig::default()
        },
    };
    if let Some(v) = a.listen {
        c.listen = v;
    }
    if let Some(v) = a.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = a.id {
        c.id = v;
    }
    if let Some(v) = a.heartbeat_ms {
        c.heartbeat_interval = Duration::from_millis(v);
    }
    if let Some(v) = a.down_after_ms {
        c.down_after = Duration::from_millis(v);
    }
    if let Some(v) = a.cluster {
        c.cluster = v;
    }
    c.peers.extend(a.peers);
    if let Some(v) = a.peer_timeout_ms {
        c.peer_timeout = Duration::from_millis(v);
    }
    if let Some(v) = a.metrics_listen {
        c.metrics_listen = Some(v);
    }
    if let Some(v) = a.replication {
        c.replication = v;
    }
    if let Some(v) = a.gc_grace_ms {
        c.gc_grace = Duration::from_millis(v);
    }
    if let Some(v) = a.gc_interval_ms {
        c.gc_interval = Duration::from_millis(v);
    }
    if let Some(v) = a.tls_dir {
        c.tls_dir = Some(v);
    }
    c.tls_names.extend(a.tls_names);
    if let Some(v) = a.bootstrap_token_file {
        c.bootstrap_token_file = Some(v);
    }
    c.insecure |= a.insecure;
    c.insecure_allow_network |= a.insecure_allow_network;
    c.new_incarnation = a.new_incarnation;
    a.control.apply(&mut c.control);
    c.validate()
        .map_err(|e| anyhow::anyhow!("master config: {e}"))?;
    Ok(c)
}

pub async fn master(a: MasterArgs) -> Result<()> {
    let (restore, json) = (a.restore.clone(), a.json);
    let config = master_config(a)?;
    if let Some(file) = restore {
        let dir = config.data_dir.clone();
        let report =
            tokio::task::spawn_blocking(move || elton_master::restore::restore(&dir, &file))
                .await??;
        return super::metadata::print_restore(&report, json);
    }
    let listener = bind(&config.listen).await?;
    elton_master::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

pub async fn slave(ep: &super::Endpoints, a: SlaveArgs) -> Result<()> {
    let mut config = SlaveConfig::new(
        a.data_dir
            .unwrap_or_else(|| default_data_dir().join("slave")),
        a.master_url.unwrap_or_else(|| ep.master.clone()),
    );
    config.node_id = a.node_id;
    config.advertise = a.advertise;
    config.max_upload_bytes = a.max_upload_bytes;
    config.tls_dir = a.tls_dir;
    config.scrub_rate_mib = a.scrub_rate;
    config.control_listen = a.control_listen;
    config.control_advertise = a.control_advertise;
    anyhow::ensure!(
        a.http_header_timeout_ms > 0 && a.http_idle_timeout_ms > 0,
        "HTTP timeouts must be at least 1 ms"
    );
    config.http_timeouts = elton_slave::conn_clock::HttpTimeouts {
        header_read: Duration::from_millis(a.http_header_timeout_ms),
        idle: Duration::from_millis(a.http_idle_timeout_ms),
    };
    let listener = bind(&a.listen).await?;
    elton_slave::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Reads the token file, creating it (0600, random) on first start. The
/// master takes it as its first admin token (its bootstrap file).
fn ensure_token(path: &Path) -> Result<String> {
    if path.exists() {
        return elton_trust::token::read_secret_file(path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let token = elton_trust::token::new_secret().map_err(|e| anyhow::anyhow!("{e}"))?;
    elton_trust::pki::write_private(path, format!("{token}\n").as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(token)
}

/// The single node's certificates: the cluster CA and the master's (as a
/// master's first start makes them), and the slave's, issued for its node
/// id. Made before either starts, so the slave never waits for them.
fn provision_single_node(
    data: &Path,
    master: &MasterConfig,
    slave: &mut SlaveConfig,
) -> Result<()> {
    let pki = elton_trust::TlsDir::new(master.tls_dir());
    elton_trust::pki::ensure_master(&pki, master.cluster_name(), &master.id, &[])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca = elton_trust::ClusterCa::load(&pki).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = elton_slave::node_id(slave, None)?;
    let slave_tls = elton_trust::TlsDir::new(data.join("slave").join("tls"));
    let current = slave_tls
        .load_node()
        .ok()
        .filter(|c| c.identity.node == node.as_str() && c.ca_pem == ca.cert_pem());
    if current.is_none() {
        let issued = ca
            .issue(node.as_str(), elton_trust::Role::Slave, &[])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // A CA left from an earlier cluster must not stay next to the new
        // certificate.
        let _ = std::fs::remove_file(slave_tls.ca_cert());
        slave_tls
            .save_node(&issued, ca.cert_pem())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    slave.tls_dir = Some(slave_tls.path().to_path_buf());
    Ok(())
}

pub async fn up(a: UpArgs) -> Result<()> {
    let data = a.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    // Held until the process ends: a second `elton up` on the same data
    // would run a second master and slave on the same files.
    let _lock = super::up_lock::UpLock::acquire(&data)?;
    let token_path = data.join("token");
    let token = ensure_token(&token_path)?;
    let master_listener = bind(&a.master_listen).await?;
    let slave_listener = bind(&a.slave_listen).await?;
    let master_addr: SocketAddr = master_listener.local_addr()?;
    let slave_addr: SocketAddr = slave_listener.local_addr()?;

    let master_config = MasterConfig {
        data_dir: data.join("master"),
        listen: master_addr.to_string(),
        tls_dir: Some(data.join("pki")),
        bootstrap_token_file: Some(token_path.clone()),
        insecure: a.insecure,
        metrics_listen: a.metrics_listen.clone(),
        // A single machine is a one-member control group, no extra step.
        control: elton_master::config::ControlConfig {
            init: true,
            ..Default::default()
        },
        ..MasterConfig::default()
    };
    let scheme = if a.insecure { "http" } else { "https" };
    let mut slave_config =
        SlaveConfig::new(data.join("slave"), format!("{scheme}://{master_addr}"));
    slave_config.scrub_rate_mib = a.scrub_rate;
    if !a.insecure {
        provision_single_node(&data, &master_config, &mut slave_config)?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let master = tokio::spawn(elton_master::run(
        master_listener,
        master_config,
        stopped(stop_rx.clone()),
    ));
    let slave = tokio::spawn(elton_slave::run(
        slave_listener,
        slave_config,
        stopped(stop_rx),
    ));

    // Set before `up` unmounts its own mount, so that only an unmount by
    // someone else is reported.
    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mounted = if a.no_mount {
        None
    } else {
        let mountpoint = a
            .mountpoint
            .clone()
            .unwrap_or_else(|| data.join("volumes").join(&a.volume));
        let endpoints = super::Endpoints {
            master: format!("{scheme}://{master_addr}"),
            slave: format!("http://{slave_addr}"),
            token: Some(token.clone()),
            token_file: None,
            ca: Some(data.join("pki").join("ca.pem")),
        };
        match mount_default(&a.volume, &mountpoint, &data, &endpoints, stopping.clone()).await {
            Ok(()) => Some(mountpoint),
            Err(e) => {
                eprintln!("elton: warning: not mounting {}: {e:#}", a.volume);
                None
            }
        }
    };

    println!("Elton is up (single node: master and slave in this process).");
    println!("  master (gRPC)  {scheme}://{master_addr}");
    if a.insecure {
        println!("                 (insecure: no TLS, no authentication)");
    }
    println!("  slave  (HTTP)  http://{slave_addr}");
    if let Some(m) = &a.metrics_listen {
        println!("  metrics        http://{m}/metrics (master)");
    }
    println!("  data           {}", data.display());
    println!("  admin token    {}", token_path.display());
    println!(
        "  cluster CA     {}",
        data.join("pki").join("ca.pem").display()
    );
    if let Some(m) = &mounted {
        println!("  volume {:<7} mounted at {}", a.volume, m.display());
    }
    println!();
    println!("Try, in another terminal:");
    if let Some(m) = &mounted {
        let m = m.display();
        println!("  echo hello > {m}/hello.txt && elton commit {m} -m first");
        println!(
            "  elton log {}   |   curl -L http://{slave_addr}/v1/volumes/{}/latest/hello.txt",
            a.volume, a.volume
        );
    } else {
        println!("  elton import --create <some-dir> demo");
        println!("  elton ls demo   |   curl -L http://{slave_addr}/v1/volumes/demo/latest/");
    }
    println!("Stop with Ctrl-C.");

    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = master => r.context("master task")?.context("master"),
        r = slave => r.context("slave task")?.context("slave"),
    };
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(m) = &mounted {
        let _ = crate::fs::mount::unmount(m, true);
    }
    let _ = stop_tx.send(true);
    outcome
}

/// Creates `volume` if needed and mounts it in a background thread of this
/// process; returns once the mount answers.
async fn mount_default(
    volume: &str,
    mountpoint: &Path,
    data: &Path,
    endpoints: &super::Endpoints,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use elton_proto::pb::CreateVolumeRequest;
    let volume: elton_proto::VolumeName = volume.parse()?;
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = endpoints.master().await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.context("master did not start")?;
    match client
        .create_volume(CreateVolumeRequest {
            name: volume.to_string(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => anyhow::bail!("creating volume: {}", e.message()),
    }
    // A mount left behind by a killed `elton up` answers ENOTCONN: detach it.
    if let Err(e) = std::fs::metadata(mountpoint)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        let _ = crate::fs::mount::unmount(mountpoint, true);
    }
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))?;
    let mountpoint = &std::fs::canonicalize(mountpoint)?;
    let slave_data = data.join("slave");
    let opts = crate::fs::mount::MountOptions {
        state_dir: super::mounts::state_dir(&slave_data, &volume, mountpoint),
        volume,
        version: None,
        mountpoint: mountpoint.to_path_buf(),
        slave_url: endpoints.slave.clone(),
        slave_data,
        token: endpoints.token.clone(),
        allow_other: false,
        read_only: false,
        chunk_threshold: crate::chunking::DEFAULT_THRESHOLD,
        assembled_max_bytes: crate::fs::chunked::DEFAULT_ASSEMBLED_MAX_BYTES,
    };
    std::fs::create_dir_all(&opts.state_dir)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mountpoint = opts.mountpoint.clone();
        let r = crate::fs::mount::run(opts);
        match &r {
            Err(e) => tracing::error!("mount: {e:#}"),
            Ok(()) if !stopping.load(std::sync::atomic::Ordering::SeqCst) => tracing::warn!(
                "{} was unmounted; the master and the slave keep running (mount it again \
                 with `elton mount`, or restart `elton up`)",
                mountpoint.display()
            ),
            Ok(()) => {}
        }
        let _ = tx.send(r);
    });
    let mp = mountpoint.to_path_buf();
    let ready = tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            if crate::fs::mount::control(&mp, &crate::fs::mount::ControlRequest::Info).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    tokio::select! {
        ok = ready => if ok? { Ok(()) } else { anyhow::bail!("the mount did not come up") },
        r = rx => match r {
            Ok(Err(e)) => Err(e),
            _ => anyhow::bail!("the mount stopped"),
        },
    }
}
