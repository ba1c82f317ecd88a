//! `elton proxy --listen ADDR`: FastContainer's HTTP proxy on this host
//! (see [`crate::proxy`] and `docs/operations.md`, "FastContainer proxy").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use elton_control::{Command, Request, RequestId, Response};
use elton_proto::control_pb::SubmitRequest;

use super::Endpoints;
use super::client::status;
use super::control::{client, default_client_id};
use super::default_data_dir;
use crate::proxy::by_image::ByImage;
use crate::proxy::docker::DockerRuntime;
use crate::proxy::instance::ProcessRuntime;
use crate::proxy::mounts::Mounts;
use crate::proxy::{Fetch, Proxy, Settings};

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
}

pub async fn proxy(ep: &Endpoints, a: ProxyArgs) -> Result<()> {
    if a.ready_timeout.is_zero() || a.refresh.is_zero() {
        bail!("--ready-timeout and --refresh must be above 0");
    }
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
    };
    let proxy = Proxy::new(settings, fetcher(ep), runtime);
    tracing::info!(addr = %a.listen, "proxy serving");
    let served = tokio::select! {
        r = proxy.clone().serve(listener) => r,
        () = super::servers::shutdown_signal() => Ok(()),
    };
    proxy.shutdown();
    served
}

/// Reads the apps through the control group. One client id for the
/// proxy's life; each read acknowledges the ones before, so the group
/// keeps no answers for it.
fn fetcher(ep: &Endpoints) -> Fetch {
    let ep = ep.clone();
    let client_id = default_client_id();
    let seq = Arc::new(AtomicU64::new(1));
    Arc::new(move || {
        let ep = ep.clone();
        let client_id = client_id.clone();
        let n = seq.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let mut c = client(&ep).await?;
            let mut request = Request::new(
                RequestId {
                    client: client_id,
                    seq: n,
                },
                Command::Apps,
            );
            request.acked_below = n;
            let r = c
                .submit(SubmitRequest {
                    command: request.encode(),
                })
                .await
                .map_err(status)?
                .into_inner();
            match serde_json::from_slice(&r.response).context("the member's response")? {
                Response::Apps { apps } => Ok(apps),
                other => bail!("unexpected answer: {other:?}"),
            }
        })
    })
}
