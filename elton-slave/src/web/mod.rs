//! The web view, served by every slave's HTTP server at `/`: volumes, each
//! volume's history as a graph with messages, authors and per-version
//! changes, a version's files, the cluster's nodes with their health and
//! what they hold, WAN bytes per peer over time, and the control plane's
//! members when this host is one. Server-rendered HTML and SVG, no script;
//! read-only (writes stay in the CLI). Same access rules as the slave's
//! other reads: public, like a CDN (see docs/operations.md, "Web view").
//!
//! - [`html`], [`graph`] (pure): building blocks and SVG pictures;
//! - [`pages`] (pure): the pages from fetched data;
//! - [`diff`]: changes between two trees; [`wan_history`]: samples of the
//!   master's WAN counters;
//! - this file: routes, and fetching what the pages show.

pub mod diff;
pub mod graph;
pub mod html;
pub mod pages;
pub mod wan_history;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use elton_control::ControlNode;
use elton_proto::control_pb::StatusRequest;
use elton_proto::pb::{ListNodesRequest, ListVersionsRequest, ListVolumesRequest, StatsRequest};
use elton_proto::{DirManifest, EntryKind, ObjectId, VolumeName};

use crate::SlaveError;
use crate::volumes::Volumes;
use wan_history::{PeerTotals, SAMPLE_EVERY, WanHistory};

/// Versions shown on a volume's page (newest first), with their changes.
const MAX_VERSIONS: usize = 100;
/// Bound on the control plane's status query.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct WebState {
    pub volumes: Arc<Volumes>,
    pub history: Arc<WanHistory>,
    pub control: Option<Arc<ControlNode>>,
}

type Shared = State<Arc<WebState>>;

pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/ui/volumes/{volume}", get(volume))
        .route("/ui/volumes/{volume}/{version}", get(version))
        .route("/ui/volumes/{volume}/{version}/tree/{*path}", get(tree))
        .with_state(state)
}

/// Samples the master's WAN counters into `history` until aborted.
pub async fn sample_wan(volumes: Arc<Volumes>, history: Arc<WanHistory>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        match volumes.link().client().stats(StatsRequest {}).await {
            Ok(r) => history.record(
                now_unix(),
                r.into_inner()
                    .peers
                    .into_iter()
                    .map(|p| PeerTotals {
                        peer: p.name,
                        bytes_in: p.bytes_in,
                        bytes_out: p.bytes_out,
                    })
                    .collect(),
            ),
            Err(e) => tracing::debug!("sampling WAN counters: {}", e.message()),
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A page, or the error as a page with its status.
fn respond(page: Result<String, SlaveError>) -> Response {
    let (status, body) = match page {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::warn!("web view: {e}");
            }
            (status, pages::error(status.as_u16(), &e.to_string()))
        }
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The view shows the head and live state: never cache it.
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn overview(State(s): Shared) -> Response {
    respond(overview_page(&s).await)
}

async fn overview_page(s: &WebState) -> Result<String, SlaveError> {
    let mut master = s.volumes.link().client();
    let volumes = master
        .list_volumes(ListVolumesRequest {})
        .await?
        .into_inner()
        .volumes;
    let nodes = master
        .list_nodes(ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    let cluster = master
        .stats(StatsRequest {})
        .await
        .map(|r| r.into_inner().cluster)
        .unwrap_or_default();
    let control = match &s.control {
        Some(node) => {
            tokio::time::timeout(CONTROL_TIMEOUT, node.status(StatusRequest { local: false }))
                .await
                .ok()
        }
        None => None,
    };
    Ok(pages::overview(
        &cluster,
        &volumes,
        &nodes,
        now_unix(),
        &s.history.series(),
        control.as_ref(),
    ))
}

async fn volume(State(s): Shared, Path(name): Path<String>) -> Response {
    respond(volume_page(&s, &name).await)
}

fn root_of(raw: &[u8]) -> Result<ObjectId, SlaveError> {
    ObjectId::from_bytes(raw).map_err(|e| SlaveError::Master(format!("bad root in record: {e}")))
}

async fn volume_page(s: &WebState, name: &str) -> Result<String, SlaveError> {
    let volume: VolumeName = name.parse()?;
    let mut records = s
        .volumes
        .link()
        .client()
        .list_versions(ListVersionsRequest {
            volume: volume.to_string(),
        })
        .await?
        .into_inner()
        .versions;
    records.reverse();
    records.truncate(MAX_VERSIONS);
    let mut rows = Vec::new();
    for (i, r) in records.iter().enumerate() {
        // The parent is the next record when kept (versions have no gaps).
        let parent_root = match records.get(i + 1) {
            Some(p) if p.version == r.parent => Some(root_of(&p.root)?),
            _ => None,
        };
        let summary = if r.parent == 0 || parent_root.is_some() {
            let changes = diff::diff(&s.volumes, parent_root, Some(root_of(&r.root)?)).await?;
            Some(pages::summarize(&changes))
        } else {
            None
        };
        rows.push((r.clone(), summary));
    }
    Ok(pages::volume(volume.as_str(), &rows))
}

async fn version(State(s): Shared, Path((name, number)): Path<(String, String)>) -> Response {
    respond(version_page(&s, &name, &number).await)
}

fn version_number(raw: &str) -> Result<u64, SlaveError> {
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| SlaveError::BadRequest(format!("{raw:?} is not a version number")))
}

async fn record(
    s: &WebState,
    volume: &VolumeName,
    n: u64,
) -> Result<elton_proto::pb::VersionRecord, SlaveError> {
    Ok(s.volumes
        .link()
        .client()
        .get_version(elton_proto::pb::GetVersionRequest {
            volume: volume.to_string(),
            version: n,
            read_path: None,
        })
        .await?
        .into_inner())
}

async fn version_page(s: &WebState, name: &str, number: &str) -> Result<String, SlaveError> {
    let volume: VolumeName = name.parse()?;
    let n = version_number(number)?;
    let r = record(s, &volume, n).await?;
    let root = root_of(&r.root)?;
    let parent_root = if r.parent == 0 {
        Some(None)
    } else {
        match record(s, &volume, r.parent).await {
            Ok(p) => Some(Some(root_of(&p.root)?)),
            Err(SlaveError::NotFound(_)) => None,
            Err(e) => return Err(e),
        }
    };
    let changes = match parent_root {
        Some(p) => Some(diff::diff(&s.volumes, p, Some(root)).await?),
        None => None,
    };
    let manifest = s.volumes.manifest(root).await?;
    Ok(pages::version(
        volume.as_str(),
        &r,
        changes.as_deref(),
        &manifest,
    ))
}

async fn tree(
    State(s): Shared,
    Path((name, number, path)): Path<(String, String, String)>,
) -> Response {
    respond(tree_page(&s, &name, &number, &path).await)
}

async fn tree_page(
    s: &WebState,
    name: &str,
    number: &str,
    path: &str,
) -> Result<String, SlaveError> {
    let volume: VolumeName = name.parse()?;
    let n = version_number(number)?;
    let r = record(s, &volume, n).await?;
    let mut dir: Arc<DirManifest> = s.volumes.manifest(root_of(&r.root)?).await?;
    let path = path.trim_matches('/');
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let next = dir
            .get(part)
            .filter(|e| e.kind == EntryKind::Dir)
            .and_then(|e| e.object)
            .ok_or_else(|| {
                SlaveError::NotFound(format!("{volume}@{n} has no directory /{path}"))
            })?;
        dir = s.volumes.manifest(next).await?;
    }
    Ok(pages::tree(volume.as_str(), n, path, &dir))
}
