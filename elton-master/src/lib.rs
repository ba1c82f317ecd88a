//! The Elton master: the metadata authority of one cluster.
//!
//! - [`store`]: redb tables for volumes, versions, object locations and nodes.
//! - [`nodes`]: which registered slaves are alive (heartbeats).
//! - [`service`]: the `elton.v1.Master` gRPC service.
//! - [`fetch`]: proxying an object's bytes from a holder to a requester.
//! - [`planner`] (pure) and [`replicator`]: backup copies and repair.
//! - [`fsck`] and [`walk`]: checking replication and version readability.
//! - [`config`]: settings with documented defaults.
//! - [`error`]: one error type, mapped to gRPC status in one place.
//!
//! [`run`] serves on an already-bound listener until `shutdown` resolves, so
//! tests can start a master on port 0 in-process.

pub mod config;
pub mod error;
pub mod fetch;
pub mod fsck;
pub mod nodes;
pub mod planner;
pub mod replicator;
pub mod service;
pub mod store;
pub mod walk;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::MasterConfig;
pub use error::MasterError;
pub use service::MasterService;
pub use store::MetaStore;

/// Serves the master on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: MasterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MasterError> {
    config.validate().map_err(MasterError::BadRequest)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| MasterError::Io(format!("creating {}: {e}", config.data_dir.display())))?;
    let store = Arc::new(MetaStore::open(&config.data_dir.join("master.redb"))?);
    let service = MasterService::new(store.clone(), &config);
    let flusher = tokio::spawn(store::flush_periodically(store));
    let replication = tokio::spawn(service.replication_task());
    tracing::info!(addr = %listener.local_addr().map_err(|e| MasterError::Io(e.to_string()))?, id = %config.id, "master serving");
    let result = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| MasterError::Io(format!("gRPC server: {e}")));
    flusher.abort();
    replication.abort();
    result
}
