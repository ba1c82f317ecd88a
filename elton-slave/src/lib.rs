//! The Elton slave: the storage node of every host.
//!
//! - [`store`]: content-addressed, verified, durable object store;
//!   [`staging`]: many objects stored with two flushes (a mount's commit).
//! - [`fetcher`]: fetch on miss through the master, coalesced ([`turns`]);
//!   [`along_path`]: which objects sent with a version record are kept.
//! - [`backup`]: backup copies the master asks for.
//! - [`hot`]: small verified objects kept in memory.
//! - [`master_link`]: registration, heartbeats, object announcements.
//! - [`scrub`]: re-hashing the store at a bounded rate ([`scrub_pace`]),
//!   [`quarantine`] of bad objects, mounts' copies ([`mount_copies`]).
//! - [`chunked`]: serving chunked files (recipes) chunk by chunk.
//! - [`volumes`]: resolving volume paths, publishing versions.
//! - [`tree`]: pure tree edits (one-file commits).
//! - [`http`]: the CDN-style HTTP interface; [`range`], [`metrics`].
//! - [`tokens`]: writers' bearer tokens, checked by the master.
//! - [`control`]: this host as a learner of the control plane's Raft
//!   group (its own gRPC endpoint, `--control-listen`).
//! - [`serve`]: the HTTP server (connection deadlines of [`conn_clock`]).
//! - [`durable`]: the one durable-write helper; [`usage`]: counting the
//!   store for heartbeats.
//! - [`error`]: one error type, mapped to HTTP status in one place.
//!
//! [`run`] serves on an already-bound listener until `shutdown` resolves.

pub mod along_path;
pub mod backup;
pub mod batch;
pub mod chunked;
pub mod config;
pub mod conn_clock;
pub mod control;
pub mod durable;
pub mod error;
pub mod fetcher;
pub mod hot;
pub mod http;
pub mod incarnation;
pub mod master_link;
pub mod metrics;
pub mod mount_copies;
pub mod quarantine;
pub mod range;
pub mod read_ahead;
pub mod scrub;
pub mod scrub_pace;
pub mod serve;
pub mod staging;
pub mod store;
pub mod sweep;
pub mod tokens;
pub mod tree;
pub mod turns;
pub mod undo;
pub mod usage;
pub mod volumes;
pub mod web;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use elton_proto::{HttpAddr, NodeId};
use tokio::net::TcpListener;

pub use config::SlaveConfig;
pub use error::SlaveError;
pub use store::ObjectStore;

/// Serves the slave on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: SlaveConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SlaveError> {
    let store = ObjectStore::open(&config.data_dir)?;
    store.clean_tmp(std::time::Duration::from_secs(3600));
    let creds = credentials(&config)?;
    let node_id = node_id(&config, creds.as_ref())?;
    let local = listener
        .local_addr()
        .map_err(|e| SlaveError::Io(e.to_string()))?;
    // Refused here rather than by the master: a bad address would make the
    // slave retry registration forever.
    let http_addr: HttpAddr = match &config.advertise {
        Some(a) => a
            .parse()
            .map_err(|e| SlaveError::BadRequest(format!("--advertise: {e}")))?,
        None => local
            .to_string()
            .parse()
            .map_err(|e| SlaveError::BadRequest(format!("listen address: {e}")))?,
    };
    let tls = creds
        .as_ref()
        .map(|c| elton_trust::tls::node_client(c, &c.ca_pem));
    let (link, announcements) = master_link::MasterLink::new(&config.master, node_id.clone(), tls)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let fetcher = Arc::new(fetcher::Fetcher::new(
        store.clone(),
        link.clone(),
        metrics.clone(),
    ));
    let volumes = Arc::new(volumes::Volumes::new(fetcher.clone(), link.clone()));
    let (backup_tx, backup_rx) = tokio::sync::mpsc::channel(backup::QUEUE);
    let copier = tokio::spawn(backup::run_copier(
        backup_rx,
        fetcher.clone(),
        link.clone(),
        metrics.clone(),
    ));
    let scrubber = Arc::new(scrub::Scrubber::new(
        fetcher.clone(),
        link.clone(),
        metrics.clone(),
        config.data_dir.clone(),
    ));
    let background_scrub = tokio::spawn(scrubber.clone().run_background(config.scrub_rate_mib));
    let state = Arc::new(http::AppState {
        fetcher,
        scrubber,
        volumes: volumes.clone(),
        metrics,
        tokens: tokens::Tokens::new(link.clone()),
        max_upload_bytes: config.max_upload_bytes,
    });
    // The control endpoint is bound before anything is served, so a bad
    // address fails the start.
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control = match &config.control_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| SlaveError::Io(format!("binding control address {addr}: {e}")))?;
            let (node, task) = control::start(&config, &node_id, creds.as_ref(), l, async {
                let _ = control_stopped.await;
            })
            .await?;
            let joiner = tokio::spawn(control::join_loop(node.clone(), config.master.clone()));
            Some((node, task, joiner))
        }
        None => None,
    };
    let web = Arc::new(web::WebState {
        volumes: volumes.clone(),
        history: Arc::default(),
        control: control.as_ref().map(|(node, _, _)| node.clone()),
    });
    let wan_sampler = tokio::spawn(web::sample_wan(volumes, web.history.clone()));
    let announcer = tokio::spawn(link.clone().run_announcer(announcements));
    let membership = tokio::spawn(link.run_membership(http_addr.to_string(), store, backup_tx));
    tracing::info!(addr = %local, node = %node_id, master = %config.master, "slave serving");
    let result = serve::serve(
        listener,
        http::router(state).merge(web::router(web)),
        config.http_timeouts,
        shutdown,
    )
    .await;
    announcer.abort();
    wan_sampler.abort();
    membership.abort();
    copier.abort();
    background_scrub.abort();
    if let Some((node, task, joiner)) = control {
        joiner.abort();
        let _ = stop_control.send(());
        let _ = task.await;
        node.shutdown().await;
    }
    result
}

/// This node's certificate when the master is reached over TLS.
fn credentials(config: &SlaveConfig) -> Result<Option<elton_trust::NodeCredentials>, SlaveError> {
    if !config.tls() {
        return Ok(None);
    }
    let creds = elton_trust::TlsDir::new(config.tls_dir())
        .load_node()
        .map_err(|e| SlaveError::BadRequest(e.to_string()))?;
    if creds.identity.role != elton_trust::Role::Slave {
        return Err(SlaveError::BadRequest(format!(
            "{}: the certificate is for a {}, not a slave",
            config.tls_dir().display(),
            creds.identity.role
        )));
    }
    Ok(Some(creds))
}

/// The node id: the one its certificate names (a configured or saved id
/// must agree), else the configured id, else the one saved in
/// `<data>/node-id`, else a new random one saved there.
pub fn node_id(
    config: &SlaveConfig,
    creds: Option<&elton_trust::NodeCredentials>,
) -> Result<NodeId, SlaveError> {
    let local = local_node_id(config, creds.is_none())?;
    let Some(creds) = creds else {
        return local.ok_or_else(|| SlaveError::Io("no node id".into()));
    };
    let certified: NodeId = creds.identity.node.parse()?;
    match local {
        Some(id) if id != certified => Err(SlaveError::BadRequest(format!(
            "node id {id} differs from the id its certificate names ({certified}); a node \
             speaks only as itself: issue a certificate for {id}, or drop the id"
        ))),
        Some(_) => Ok(certified),
        None => {
            save_node_id(&config.data_dir.join("node-id"), &certified)?;
            Ok(certified)
        }
    }
}

fn save_node_id(path: &Path, id: &NodeId) -> Result<(), SlaveError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| SlaveError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    durable::write_file(path, id.as_str().as_bytes())
        .map_err(|e| SlaveError::Io(format!("writing {}: {e}", path.display())))
}

/// The configured or saved id; a new one (saved) only if `create`.
fn local_node_id(config: &SlaveConfig, create: bool) -> Result<Option<NodeId>, SlaveError> {
    if let Some(id) = &config.node_id {
        return Ok(Some(id.parse()?));
    }
    let path = config.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().parse()?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = format!(
                "{:?}{}{:?}",
                std::time::SystemTime::now(),
                std::process::id(),
                path
            );
            let id: NodeId =
                format!("node-{}", &blake3::hash(seed.as_bytes()).to_hex()[..12]).parse()?;
            save_node_id(&path, &id)?;
            Ok(Some(id))
        }
        Err(e) => Err(SlaveError::Io(format!(
            "reading {}: {e}",
            Path::new(&path).display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_advertised_address_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = SlaveConfig::new(dir.path().to_path_buf(), "http://127.0.0.1:1".into());
        config.advertise = Some("127.0.0.1:7460?".into());
        let started = run(listener, config, std::future::pending());
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), started)
            .await
            .expect("run returned")
            .expect_err("refused");
        assert!(
            matches!(err, SlaveError::BadRequest(ref m) if m.contains("--advertise")),
            "{err}"
        );
    }
}
