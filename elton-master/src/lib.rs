//! The Elton master: the metadata authority of one cluster.
//!
//! - [`store`]: redb tables for volumes, versions, object locations and nodes.
//! - [`incarnation`] (pure), [`datadir`], [`restore`] and [`file_guard`]: the cluster id
//!   and incarnation of the metadata, which a master checks before it
//!   starts and while it runs; backup and restore ([`high_water`]: the last
//!   heads, for reporting what a restore rolls back); [`settle`] (pure): commits
//!   wait until slaves have heard of a new incarnation.
//! - [`nodes`]: which registered slaves are alive (heartbeats);
//!   [`node_usage`]: what their stores hold, as they report it.
//! - [`decommission_plan`] (pure) and [`decommission`]: `elton node rm`.
//! - [`service`]: the `elton.v1.Master` gRPC service.
//! - [`fetch`]: proxying an object's bytes from holders to a requester,
//!   under the deadlines and failover order of [`holder_policy`] (pure).
//! - [`health`] and [`resync`]: per-node read failures, and asking a node
//!   to re-announce its inventory so its wrong locations are swept.
//! - [`peers`], [`remote`], [`crossfetch`], [`coalesce`]: peer masters of
//!   other clusters: remote volumes, forwarded commits, cross-cluster
//!   fetches (one WAN transfer per object at a time); [`along_path`]: the
//!   objects a home sends with a version record to a peer's first read.
//! - [`wan`], [`metrics`]: WAN accounting and the Prometheus endpoint.
//! - [`planner`] (pure) and [`replicator`]: backup copies and repair.
//! - [`fsck`] and [`walk`]: checking replication and version readability.
//! - [`backup`]: the online copy of the metadata.
//! - [`gc`], [`gc_walk`] and [`gc_plan`] (pure): garbage collection and
//!   retention.
//! - [`auth`]: who is calling (certificates, tokens) and what they may do;
//!   [`provision`]: the master's TLS identity and first admin token.
//! - [`control_gate`]: this master as a voter of the control plane's Raft
//!   group (crate `elton-control`), its services on the same port.
//! - [`validate`]: the check of a commit's tree before it is published.
//! - [`config`]: settings with documented defaults.
//! - [`error`]: one error type, mapped to gRPC status in one place.
//!
//! [`run`] serves on an already-bound listener until `shutdown` resolves, so
//! tests can start a master on port 0 in-process.

pub mod along_path;
pub mod auth;
pub mod backup;
pub mod coalesce;
pub mod config;
pub mod control_gate;
pub mod crossfetch;
pub mod datadir;
pub mod decommission;
pub mod decommission_plan;
pub mod error;
pub mod fetch;
pub mod file_guard;
pub mod fsck;
pub mod gc;
pub mod gc_plan;
pub mod gc_walk;
pub mod generations;
pub mod health;
pub mod high_water;
pub mod holder_policy;
pub mod incarnation;
pub mod metrics;
pub mod node_usage;
pub mod nodes;
pub mod peers;
pub mod planner;
pub mod proc_http;
pub mod provision;
pub mod remote;
pub mod replicator;
pub mod restore;
pub mod resync;
pub mod service;
pub mod settle;
pub mod store;
pub mod validate;
pub mod walk;
pub mod wan;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use config::MasterConfig;
pub use error::MasterError;
pub use service::MasterService;
pub use store::MetaStore;
pub use wan::WanStats;

/// Serves the master on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: MasterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MasterError> {
    config.validate().map_err(MasterError::BadRequest)?;
    let opened = datadir::open(&config.data_dir, config.new_incarnation)?;
    let stamp = opened.stamp;
    let store = Arc::new(opened.store);
    let commits_open_at = settle::opens_at(
        store.incarnation_served()?,
        std::time::Instant::now(),
        config.heartbeat_interval,
    );
    let identity = provision::Identity::load(&config)?;
    let auth = Arc::new(auth::Auth::new(identity.anchors()?, &store)?);
    provision::bootstrap_token(&config, &store, &auth)?;
    let wan = Arc::new(WanStats::new(
        config
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.url.as_str())),
    ));
    let control = control_gate::start(&config, &identity, &listener).await?;
    let gate: Arc<dyn elton_control::Gate> = Arc::new(control_gate::MasterGate(auth.clone()));
    let raft_service =
        elton_control::net::raft_service::RaftService::new(control.raft().clone(), gate.clone());
    let control_service =
        elton_control::net::control_service::ControlService::new(control.clone(), gate);
    let proc_api = Arc::new(proc_http::ProcApi {
        auth: auth.clone(),
        control: control.clone(),
    });
    let service = MasterService::new(
        store.clone(),
        &config,
        wan.clone(),
        auth,
        &identity,
        stamp,
        commits_open_at,
    )?;
    if let Some(at) = commits_open_at {
        tracing::warn!(%stamp, wait_ms = at.saturating_duration_since(std::time::Instant::now())
            .as_millis() as u64, "new incarnation: commits open once every slave has heard of it");
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            match store::blocking(&store, |s| s.set_incarnation_served()).await {
                Ok(()) => tracing::info!("commits open under the new incarnation"),
                Err(e) => tracing::warn!("recording the incarnation as served: {e}"),
            }
        });
    }
    // Bind before serving anything, so a bad address fails the start.
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| MasterError::Io(format!("binding metrics address {addr}: {e}")))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let metrics_task = metrics_listener.map(|l| {
        let mut rx = stop_rx.clone();
        tracing::info!(addr = ?l.local_addr().ok(), "master metrics serving");
        tokio::spawn(metrics::serve(
            l,
            wan.clone(),
            service.health(),
            async move {
                let _ = rx.changed().await;
            },
        ))
    });
    let heads = tokio::spawn(high_water::keep_written(
        store.clone(),
        config.data_dir.clone(),
        stamp,
    ));
    let flusher = tokio::spawn(store::flush_periodically(store));
    let replication = tokio::spawn(service.replication_task());
    let gc = tokio::spawn(service.gc_task());
    tracing::info!(addr = %listener.local_addr().map_err(|e| MasterError::Io(e.to_string()))?,
        id = %config.id, cluster = %config.cluster_name(), %stamp, peers = config.peers.len(),
        tls = !config.insecure, "master serving");
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = identity.server_tls()? {
        server = server
            .tls_config(tls)
            .map_err(|e| MasterError::Io(format!("TLS settings: {e}")))?;
    }
    let mut routes = tonic::service::Routes::new(service.into_server())
        .add_service(raft_service.into_server())
        .add_service(control_service.into_server());
    // k2i's HTTP JSON routes on the same listener (docs/operations.md);
    // HTTP/1.1 is accepted for them (gRPC stays HTTP/2).
    let grpc = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = grpc.merge(proc_http::router(proc_api));
    // TCP_NODELAY on every accepted connection: otherwise a reply written
    // in pieces (headers, then data and trailers) waits for the peer's
    // delayed ACK, 40 ms, on Raft's AppendEntries answers and on writes.
    let result = server
        .max_frame_size(elton_proto::GRPC_MAX_FRAME_BYTES)
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| MasterError::Io(format!("gRPC server: {e}")));
    drop(stop_tx);
    if let Some(t) = metrics_task {
        match t.await {
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("metrics task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    flusher.abort();
    heads.abort();
    replication.abort();
    gc.abort();
    control.shutdown().await;
    result
}
