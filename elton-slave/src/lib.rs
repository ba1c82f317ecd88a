//! The Elton slave: the storage node of every host.
//!
//! - [`store`]: content-addressed, verified, durable object store.
//! - [`fetcher`]: fetch on miss through the master, coalesced ([`turns`]).
//! - [`backup`]: backup copies the master asks for.
//! - [`hot`]: small verified objects kept in memory.
//! - [`master_link`]: registration, heartbeats, object announcements.
//! - [`chunked`]: serving chunked files (recipes) chunk by chunk.
//! - [`volumes`]: resolving volume paths, publishing versions.
//! - [`tree`]: pure tree edits (one-file commits).
//! - [`http`]: the CDN-style HTTP interface; [`range`], [`metrics`].
//! - [`serve`]: the HTTP server (connection deadlines of [`conn_clock`]).
//! - [`durable`]: the one durable-write helper.
//! - [`error`]: one error type, mapped to HTTP status in one place.
//!
//! [`run`] serves on an already-bound listener until `shutdown` resolves.

pub mod backup;
pub mod chunked;
pub mod config;
pub mod conn_clock;
pub mod durable;
pub mod error;
pub mod fetcher;
pub mod hot;
pub mod http;
pub mod master_link;
pub mod metrics;
pub mod range;
pub mod serve;
pub mod store;
pub mod tree;
pub mod turns;
pub mod volumes;

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
    let node_id = node_id(&config)?;
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
    let (link, announcements) = master_link::MasterLink::new(&config.master, node_id.clone())?;
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
    let state = Arc::new(http::AppState {
        fetcher,
        volumes,
        metrics,
        token: config.token.clone(),
        max_upload_bytes: config.max_upload_bytes,
    });
    let announcer = tokio::spawn(link.clone().run_announcer(announcements));
    let membership = tokio::spawn(link.run_membership(http_addr.to_string(), store, backup_tx));
    tracing::info!(addr = %local, node = %node_id, master = %config.master, "slave serving");
    let result = serve::serve(
        listener,
        http::router(state),
        config.http_timeouts,
        shutdown,
    )
    .await;
    announcer.abort();
    membership.abort();
    copier.abort();
    result
}

/// The configured id, else the one saved in `<data>/node-id`, else a new
/// random one saved there.
fn node_id(config: &SlaveConfig) -> Result<NodeId, SlaveError> {
    if let Some(id) = &config.node_id {
        return Ok(id.parse()?);
    }
    let path = config.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().parse()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = format!(
                "{:?}{}{:?}",
                std::time::SystemTime::now(),
                std::process::id(),
                path
            );
            let id: NodeId =
                format!("node-{}", &blake3::hash(seed.as_bytes()).to_hex()[..12]).parse()?;
            durable::write_file(&path, id.as_str().as_bytes())
                .map_err(|e| SlaveError::Io(format!("writing {}: {e}", path.display())))?;
            Ok(id)
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
