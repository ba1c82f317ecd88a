//! `elton proxy --listen ADDR`: FastContainer's HTTP proxy on this host
//! (see [`crate::proxy`] and `docs/operations.md`, "FastContainer proxy").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use elton_control::apps::fleet::{AppView, InstanceRecord};
use elton_control::{Command, Request, RequestId, Response};
use elton_proto::control_pb::SubmitRequest;

use super::Endpoints;
use super::client::status;
use super::control::{app_view, client, default_client_id};
use super::default_data_dir;
use crate::proxy::by_image::ByImage;
use crate::proxy::docker::DockerRuntime;
use crate::proxy::group::{Group, GroupFuture};
use crate::proxy::instance::ProcessRuntime;
use crate::proxy::mounts::Mounts;
use crate::proxy::{Proxy, Settings};

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to serve HTTP on, e.g. 0.0.0.0:80.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the proxy keeps its apps' mounts and logs [default:
    /// $ELTON_HOME/proxy].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// This host's slave data directory (its store caches the apps' files).
    #[arg(long, env = "ELTON_SLAVE_DATA")]
    pub slave_data: Option<PathBuf>,
    /// How often the apps' configuration is read again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// An instance not listening within this is given up (504).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Requests held per app while it starts; more get 503.
    #[arg(long, default_value_t = 1000)]
    pub queue: usize,
    /// This host's name in the instance registry [default: the machine's
    /// host name]; unique among the proxies of the group.
    #[arg(long)]
    pub host: Option<String>,
    /// The address other hosts' proxies reach this host's instances at.
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise: std::net::IpAddr,
    /// How often this host's instances are reported while it runs any
    /// (changes are reported at once).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
    /// Requests in flight on one instance that count as 100% of its share
    /// for the scaling threshold (`--scale-at` applies to it as to CPU).
    #[arg(long, default_value_t = 16)]
    pub target_in_flight: usize,
}

pub async fn proxy(ep: &Endpoints, a: ProxyArgs) -> Result<()> {
    if a.ready_timeout.is_zero() || a.refresh.is_zero() || a.report_every.is_zero() {
        bail!("--ready-timeout, --refresh and --report-every must be above 0");
    }
    if a.target_in_flight == 0 {
        bail!("--target-in-flight must be above 0");
    }
    let host = a.host.unwrap_or_else(host_name);
    elton_control::apps::spec::check_name(&host).map_err(|e| anyhow::anyhow!("--host: {e}"))?;
    let dir = a.dir.unwrap_or_else(|| default_data_dir().join("proxy"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let slave_data = a
        .slave_data
        .unwrap_or_else(|| default_data_dir().join("slave"));
    let mounts = Arc::new(Mounts::new(&dir, &ep.slave, &slave_data, ep.token().ok()));
    let runtime = Arc::new(ByImage {
        process: Arc::new(ProcessRuntime::new(&dir, mounts.clone())),
        docker: Arc::new(DockerRuntime::new(&dir, mounts)),
    });
    // What a killed run left: containers first (they hold bind mounts),
    // then processes and mounts.
    runtime.docker.reap().await;
    runtime.process.reap();
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let settings = Settings {
        ready_timeout: a.ready_timeout,
        queue: a.queue,
        refresh: a.refresh,
        host,
        advertise: a.advertise,
        report_every: a.report_every,
        target_in_flight: a.target_in_flight,
    };
    let group = Arc::new(ControlGroup {
        ep: ep.clone(),
        client_id: default_client_id(),
        seq: AtomicU64::new(1),
        submitting: tokio::sync::Mutex::new(()),
    });
    let proxy = Proxy::new(settings, group, runtime);
    tracing::info!(addr = %a.listen, "proxy serving");
    let served = tokio::select! {
        r = proxy.clone().serve(listener) => r,
        () = super::servers::shutdown_signal() => Ok(()),
    };
    proxy.shutdown();
    served
}

/// The control group as the proxy uses it: reads on the direct path,
/// reports and scale-outs as commands. One client id for the proxy's
/// life; each command acknowledges the ones before, so the group keeps no
/// answers for it.
struct ControlGroup {
    ep: Endpoints,
    client_id: String,
    seq: AtomicU64,
    /// One command at a time: each acknowledges every lower sequence
    /// number, which must then have been answered.
    submitting: tokio::sync::Mutex<()>,
}

impl ControlGroup {
    async fn submit(&self, command: Command) -> Result<Response> {
        let _one = self.submitting.lock().await;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::new(
            RequestId {
                client: self.client_id.clone(),
                seq: n,
            },
            command,
        );
        request.acked_below = n;
        let mut c = client(&self.ep).await?;
        let r = c
            .submit(SubmitRequest {
                command: request.encode(),
            })
            .await
            .map_err(status)?
            .into_inner();
        serde_json::from_slice(&r.response).context("the member's response")
    }
}

impl Group for ControlGroup {
    fn view(&self) -> GroupFuture<'_, AppView> {
        Box::pin(app_view(&self.ep))
    }

    fn report(&self, host: &str, instances: Vec<InstanceRecord>) -> GroupFuture<'_, ()> {
        let command = Command::InstanceReport {
            host: host.to_string(),
            instances,
            at_ms: 0,
        };
        Box::pin(async move {
            match self.submit(command).await? {
                Response::Done => Ok(()),
                Response::Rejected { reason } => bail!("{reason}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        })
    }

    fn scale_out(
        &self,
        app: &str,
        host: &str,
        running: u32,
    ) -> GroupFuture<'_, Result<String, String>> {
        let command = Command::AppScaleOut {
            app: app.to_string(),
            host: host.to_string(),
            running,
            at_ms: 0,
        };
        Box::pin(async move {
            match self.submit(command).await? {
                Response::ScaledOut { host, .. } => Ok(Ok(host)),
                Response::Rejected { reason } => Ok(Err(reason)),
                other => bail!("unexpected answer: {other:?}"),
            }
        })
    }
}

/// This machine's host name (the registry's default name for it).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
