//! The master's Prometheus endpoint (`GET /metrics`), off unless
//! `metrics_listen` is set. It exposes the WAN counters of [`WanStats`] and
//! the per-node read failures of [`NodeHealth`].

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::MasterError;
use crate::health::NodeHealth;
use crate::wan::WanStats;

type Sources = (Arc<WanStats>, Arc<NodeHealth>);

async fn metrics(State((wan, health)): State<Sources>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        wan.prometheus() + &health.prometheus(),
    )
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    wan: Arc<WanStats>,
    health: Arc<NodeHealth>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state((wan, health));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| MasterError::Io(format!("metrics server: {e}")))
}
