//! The slave's HTTP interface: CDN-style immutable reads, token-guarded
//! uploads and commits, metrics. Errors become responses only in
//! [`crate::error`].

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use elton_proto::{LOCAL_ONLY_HEADER, ObjectId, Version, VolumeName, VolumePath, chunking};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;

use crate::fetcher::{Fetcher, read_exact_at};
use crate::hot::HOT_MAX_OBJECT;
use crate::metrics::{Metrics, inc};
use crate::scrub::{ScrubEvent, Scrubber};
use crate::tokens::{Bearer, Tokens};
use crate::undo::Undo;
use crate::volumes::{FilePut, Proposal, Resolved, Stored, StoredFile, Volumes};
use crate::{SlaveError, chunked, range};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `latest` redirects may be cached briefly: a new version appears on commit.
const LATEST_MAX_AGE: &str = "public, max-age=5";
/// Objects up to this size are read in one go rather than streamed.
const INLINE_BYTES: u64 = 1 << 20;
const STREAM_CHUNK: usize = 1 << 20;
/// A commit body may list up to this many objects in `stored`, and as
/// many in `manifests` (about 67 bytes each as JSON)…
pub const MAX_COMMIT_LISTED: usize = 8192;
/// …which bounds it at about 1.1 MB.
const MAX_COMMIT_BODY: usize = 2 << 20;

/// Characters escaped in path segments of generated URLs.
pub(crate) const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

pub struct AppState {
    pub fetcher: Arc<Fetcher>,
    pub scrubber: Arc<Scrubber>,
    pub volumes: Arc<Volumes>,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    pub max_upload_bytes: u64,
}

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/objects", axum::routing::post(post_objects))
        .route("/v1/objects/missing", axum::routing::post(post_missing))
        .route("/v1/objects/{id}", get(get_object).put(put_object))
        .route(
            "/v1/volumes/{*rest}",
            get(get_volume_path).put(put_volume_file).post(post_version),
        )
        .route("/v1/scrub", axum::routing::post(post_scrub))
        .route("/metrics", get(metrics))
        .with_state(state)
}

impl AppState {
    fn count_request(&self) {
        inc(&self.metrics.http_requests_total, 1);
    }

    /// The writer's token, accepted by the master (see [`Tokens`]).
    async fn authorize(&self, headers: &HeaderMap) -> Result<Bearer, SlaveError> {
        self.tokens.writer(headers).await
    }

    fn check_declared_length(&self, headers: &HeaderMap) -> Result<(), SlaveError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(n) if n > self.max_upload_bytes => {
                Err(SlaveError::TooLarge(self.max_upload_bytes))
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn etag(id: &ObjectId) -> String {
    format!("\"{id}\"")
}

pub(crate) fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == tag
            })
        })
}

pub(crate) fn immutable_headers(resp: &mut Response, tag: &str) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
}

/// Serves an object's bytes with CDN semantics (ETag, Range, 304, HEAD).
async fn serve_object(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    id: ObjectId,
    content_type: &str,
    volume: Option<&VolumeName>,
) -> Result<Response, SlaveError> {
    let tag = etag(&id);
    if not_modified(headers, &tag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        immutable_headers(&mut resp, &tag);
        return Ok(resp);
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // Small hot objects: straight from memory.
    if let Some(bytes) = state.fetcher.hot(&id) {
        let size = bytes.len() as u64;
        let Some(r) = Slice::of(range_header, size) else {
            return Ok(unsatisfiable(size));
        };
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            inc(&state.metrics.http_bytes_served_total, r.len);
            Body::from(bytes.slice(r.start as usize..(r.start + r.len) as usize))
        };
        return Ok(object_response(body, &tag, content_type, r, size));
    }
    let local_only = headers.contains_key(LOCAL_ONLY_HEADER);
    let (file, size) = state.fetcher.open_for(id, local_only, volume).await?;
    let Some(r) = Slice::of(range_header, size) else {
        return Ok(unsatisfiable(size));
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else if size <= HOT_MAX_OBJECT {
        // Read the whole small object once, verify, keep it in memory.
        let bytes = read_all(file, size).await?;
        state.fetcher.remember(id, &bytes)?;
        inc(&state.metrics.http_bytes_served_total, r.len);
        Body::from(bytes.slice(r.start as usize..(r.start + r.len) as usize))
    } else {
        inc(&state.metrics.http_bytes_served_total, r.len);
        body_of(file, r.start, r.len).await?
    };
    Ok(object_response(body, &tag, content_type, r, size))
}

/// The part of an object a request asks for.
#[derive(Clone, Copy)]
pub(crate) struct Slice {
    pub start: u64,
    pub len: u64,
    partial: bool,
}

impl Slice {
    /// `None` when the range cannot be satisfied.
    pub(crate) fn of(range_header: Option<&str>, size: u64) -> Option<Self> {
        match range::parse(range_header, size) {
            Ok(None) => Some(Self {
                start: 0,
                len: size,
                partial: false,
            }),
            Ok(Some((start, len))) => Some(Self {
                start,
                len,
                partial: true,
            }),
            Err(range::Unsatisfiable) => None,
        }
    }
}

pub(crate) fn unsatisfiable(size: u64) -> Response {
    let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

pub(crate) fn object_response(
    body: Body,
    tag: &str,
    content_type: &str,
    r: Slice,
    size: u64,
) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = if r.partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    immutable_headers(&mut resp, tag);
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if r.partial
        && let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.start + r.len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    resp
}

async fn read_all(file: std::fs::File, size: u64) -> Result<Bytes, SlaveError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(size as usize);
        (&file).read_to_end(&mut buf)?;
        Ok::<_, std::io::Error>(Bytes::from(buf))
    })
    .await
    .map_err(|e| SlaveError::Io(format!("read task: {e}")))?
    .map_err(|e| SlaveError::Io(format!("reading object: {e}")))
}

async fn body_of(mut file: std::fs::File, start: u64, len: u64) -> Result<Body, SlaveError> {
    if len <= INLINE_BYTES {
        let buf = tokio::task::spawn_blocking(move || {
            file.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity(len as usize);
            file.take(len).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| SlaveError::Io(format!("read task: {e}")))?
        .map_err(|e| SlaveError::Io(format!("reading object: {e}")))?;
        return Ok(Body::from(buf));
    }
    // Large objects: a blocking reader thread feeds the response in big
    // chunks; the channel bounds memory to a few chunks per response.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let end = start + len;
        let mut at = start;
        while at < end {
            let want = (end - at).min(STREAM_CHUNK as u64);
            match read_exact_at(&file, at, want) {
                Ok(buf) => {
                    at += want;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Ok(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

async fn get_object(
    State(state): Shared,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, SlaveError> {
    state.count_request();
    let id: ObjectId = id.parse()?;
    serve_object(
        &state,
        &method,
        &headers,
        id,
        "application/octet-stream",
        None,
    )
    .await
}

async fn put_object(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, SlaveError> {
    state.count_request();
    state.authorize(&headers).await?;
    let id: ObjectId = id.parse()?;
    state.check_declared_length(&headers)?;
    let existed = state.fetcher.store().contains(&id);
    let stream = body.into_data_stream();
    let (_, size) = state
        .fetcher
        .store()
        .ingest(stream, Some(id), state.max_upload_bytes)
        .await?;
    inc(&state.metrics.objects_uploaded_total, 1);
    inc(&state.metrics.uploaded_bytes_total, size);
    state.volumes.announce(vec![id]).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(serde_json::json!({ "object": id, "size": size })),
    )
        .into_response())
}

/// A batch upload: many objects in one body (see [`crate::batch`]),
/// published together and announced to the master in one call.
async fn post_objects(
    State(state): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, SlaveError> {
    state.count_request();
    state.authorize(&headers).await?;
    let receipt = crate::batch::ingest(
        state.fetcher.store(),
        body.into_data_stream(),
        state.max_upload_bytes,
    )
    .await?;
    inc(&state.metrics.objects_uploaded_total, receipt.objects);
    inc(&state.metrics.uploaded_bytes_total, receipt.bytes);
    state.volumes.announce(receipt.ids.clone()).await?;
    Ok((StatusCode::OK, axum::Json(receipt)).into_response())
}

/// Which of the ids in the body (an id list, [`elton_proto::batch`]) this
/// slave does not hold: the answer is an id list too.
async fn post_missing(
    State(state): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, SlaveError> {
    use elton_proto::batch::{MAX_IDS, decode_ids, encode_ids};
    state.count_request();
    state.authorize(&headers).await?;
    let limit = (MAX_IDS * 32) as u64;
    let bytes = axum::body::to_bytes(body, limit as usize)
        .await
        .map_err(|e| {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                SlaveError::TooLarge(limit)
            } else {
                SlaveError::Transfer(e.to_string())
            }
        })?;
    let ids = decode_ids(&bytes, MAX_IDS)?;
    let store = state.fetcher.store().clone();
    let missing = tokio::task::spawn_blocking(move || crate::batch::missing(&store, ids))
        .await
        .map_err(|e| SlaveError::Io(format!("missing task: {e}")))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        encode_ids(&missing),
    )
        .into_response())
}

/// Splits `volume/rest` and parses the volume name.
fn split_volume(rest: &str) -> Result<(VolumeName, &str), SlaveError> {
    let (volume, tail) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((volume.parse()?, tail))
}

fn encode_path(path: &VolumePath) -> String {
    path.components()
        .iter()
        .map(|c| utf8_percent_encode(c, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

async fn get_volume_path(
    State(state): Shared,
    method: Method,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> Result<Response, SlaveError> {
    state.count_request();
    let (volume, tail) = split_volume(&rest)?;
    let (version, path) = tail.split_once('/').unwrap_or((tail, ""));
    let path = VolumePath::parse(path)?;
    if version == "latest" {
        let head = state.volumes.head(&volume).await?.ok_or_else(|| {
            SlaveError::NotFound(format!("volume \"{volume}\" has no version yet"))
        })?;
        let mut location = format!("/v1/volumes/{volume}/{}", head.info.version);
        if !path.is_root() {
            location.push('/');
            location.push_str(&encode_path(&path));
        }
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(LATEST_MAX_AGE),
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            h.insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    let version: Version = version.parse()?;
    let issued = state
        .volumes
        .version_record_for(&volume, version, Some(&path))
        .await?;
    let info = &issued.info;
    match state.volumes.resolve(info.root, &path).await? {
        Resolved::File(entry) => {
            let id = entry
                .object
                .ok_or_else(|| SlaveError::Io("file without object".into()))?;
            let name = path.split_last().map_or("", |(_, n)| n);
            let mime = mime_guess::from_path(name).first_or_octet_stream();
            if entry.recipe {
                let file = chunked::ChunkedFile {
                    recipe: id,
                    size: entry.size,
                };
                return chunked::serve(
                    &state,
                    &method,
                    &headers,
                    file,
                    mime.essence_str(),
                    Some(&volume),
                )
                .await;
            }
            serve_object(
                &state,
                &method,
                &headers,
                id,
                mime.essence_str(),
                Some(&volume),
            )
            .await
        }
        Resolved::Dir { id, manifest } => {
            let tag = etag(&id);
            if not_modified(&headers, &tag) {
                let mut resp = StatusCode::NOT_MODIFIED.into_response();
                immutable_headers(&mut resp, &tag);
                return Ok(resp);
            }
            let listing = serde_json::json!({
                "volume": volume,
                "version": version,
                "path": path.to_string(),
                "manifest": id,
                "entries": manifest.entries,
                "incarnation": issued.incarnation,
            });
            let mut resp = axum::Json(listing).into_response();
            immutable_headers(&mut resp, &tag);
            Ok(resp)
        }
        Resolved::Symlink(entry) => {
            let mut resp = axum::Json(serde_json::json!({
                "type": "symlink",
                "name": entry.name,
                "target": entry.target,
            }))
            .into_response();
            resp.headers_mut()
                .insert("x-elton-type", HeaderValue::from_static("symlink"));
            Ok(resp)
        }
    }
}

#[derive(Deserialize)]
struct PutQuery {
    parent: Option<u64>,
}

async fn put_volume_file(
    State(state): Shared,
    headers: HeaderMap,
    Path(rest): Path<String>,
    Query(q): Query<PutQuery>,
    body: Body,
) -> Result<Response, SlaveError> {
    state.count_request();
    let bearer = state.authorize(&headers).await?;
    let (volume, path) = split_volume(&rest)?;
    let path = VolumePath::parse(path)?;
    if path.is_root() {
        return Err(SlaveError::BadRequest(
            "PUT needs a file path after the volume".into(),
        ));
    }
    state.check_declared_length(&headers)?;
    let stream = body.into_data_stream();
    let store = state.fetcher.store().clone();
    let spooled = store.spool(stream, state.max_upload_bytes).await?;
    let size = spooled.size();
    // A large file is stored as chunks and a recipe, as `elton import` and
    // Eltonfs commits store it, so readers fetch only the chunks they
    // touch and a re-upload with a small change adds only the changed ones.
    let mut undo = Undo::new();
    let (file, stored) = tokio::task::spawn_blocking(move || {
        let mut stored = Vec::new();
        let file = if chunking::is_chunked(size, chunking::DEFAULT_THRESHOLD) {
            store
                .chunk_spooled(spooled, &mut stored)
                .map(|recipe| StoredFile::chunked(recipe, size))
        } else {
            store.publish_spooled(spooled).map(|id| {
                stored.push(id);
                StoredFile::whole(id, size)
            })
        };
        (file, stored)
    })
    .await
    .map_err(|e| SlaveError::Io(format!("store task: {e}")))?;
    undo.record_all(stored);
    let outcome = match file {
        Ok(file) => {
            inc(&state.metrics.objects_uploaded_total, 1);
            inc(&state.metrics.uploaded_bytes_total, size);
            state
                .volumes
                .put_file(
                    FilePut {
                        volume: &volume,
                        parent: q.parent,
                        path: &path,
                        file,
                        author: "http".into(),
                    },
                    &bearer,
                    &mut undo,
                )
                .await
        }
        Err(e) => Err(e),
    };
    let info = match outcome {
        Ok(info) => info,
        Err(e) => {
            if e.surely_not_committed() {
                let store = state.fetcher.store().clone();
                let _ = tokio::task::spawn_blocking(move || undo.undo(&store)).await;
            }
            return Err(e);
        }
    };
    inc(&state.metrics.commits_total, 1);
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    parent: u64,
    root: ObjectId,
    #[serde(default)]
    message: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    host: String,
    /// The incarnation `parent` was read from (the `incarnation` of its
    /// record or listing); the commit is refused if the metadata is now
    /// another one.
    #[serde(default)]
    incarnation: Option<String>,
    /// Every object the writer stored here that the new tree's changed
    /// entries name (manifests included): the slave announces those it
    /// holds instead of checking the tree itself (the master checks it).
    #[serde(default)]
    stored: Option<Vec<ObjectId>>,
    /// The new directory manifests among them, whose bytes go to the
    /// master with the commit. Only with `stored`.
    #[serde(default)]
    manifests: Option<Vec<ObjectId>>,
}

impl CommitBody {
    /// `stored` and `manifests` as a [`Stored`], within their bounds.
    fn stored(&mut self) -> Result<Option<Stored>, SlaveError> {
        let objects = self.stored.take();
        let manifests = self.manifests.take();
        for (field, list) in [("stored", &objects), ("manifests", &manifests)] {
            let n = list.as_ref().map_or(0, Vec::len);
            if n > MAX_COMMIT_LISTED {
                return Err(SlaveError::BadRequest(format!(
                    "commit body: `{field}` lists {n} objects, more than {MAX_COMMIT_LISTED}; \
                     leave it out and the slave checks the tree itself"
                )));
            }
        }
        match (objects, manifests) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(SlaveError::BadRequest(
                "commit body: `manifests` is only taken with `stored`".into(),
            )),
            (Some(objects), manifests) => Ok(Some(Stored {
                objects,
                manifests: manifests.unwrap_or_default(),
            })),
        }
    }
}

async fn post_version(
    State(state): Shared,
    headers: HeaderMap,
    Path(rest): Path<String>,
    body: Body,
) -> Result<Response, SlaveError> {
    state.count_request();
    let bearer = state.authorize(&headers).await?;
    let (volume, tail) = split_volume(&rest)?;
    if tail != "versions" {
        return Err(SlaveError::NotFound(format!(
            "POST /v1/volumes/{rest}: use /v1/volumes/<volume>/versions"
        )));
    }
    let bytes = axum::body::to_bytes(body, MAX_COMMIT_BODY)
        .await
        .map_err(|_| SlaveError::TooLarge(MAX_COMMIT_BODY as u64))?;
    let mut c: CommitBody = serde_json::from_slice(&bytes)
        .map_err(|e| SlaveError::BadRequest(format!("commit body: {e}")))?;
    let stored = c.stored()?;
    let info = state
        .volumes
        .commit(Proposal {
            volume,
            parent: c.parent,
            root: c.root,
            message: c.message,
            author: c.author,
            host: c.host,
            bearer,
            incarnation: c.incarnation,
            stored,
        })
        .await?;
    inc(&state.metrics.commits_total, 1);
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn metrics(State(state): Shared) -> Response {
    state.count_request();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render() + &incarnation_metric(state.volumes.master_incarnation_changes()),
    )
        .into_response()
}

/// Kept apart from the counters in `Metrics`: the master link owns it.
fn incarnation_metric(changes: u64) -> String {
    let name = "elton_slave_master_incarnation_changes_total";
    format!(
        "# HELP {name} Times the master answered from a new incarnation of its metadata; \
         cached version records were dropped.\n# TYPE {name} counter\n{name} {changes}\n"
    )
}

#[derive(Deserialize)]
struct ScrubQuery {
    /// MiB/s; absent or 0: as fast as the disk goes.
    #[serde(default)]
    rate: u64,
}

/// `POST /v1/scrub[?rate=MiB/s]` (admin token): scrubs the whole store now
/// and streams JSON lines: `progress` after each shard, `bad` per bad
/// object, `summary` last. Closing the connection stops the scrub after
/// the current shard.
async fn post_scrub(
    State(state): Shared,
    Query(q): Query<ScrubQuery>,
    headers: HeaderMap,
) -> Result<Response, SlaveError> {
    state.count_request();
    state.tokens.admin(&headers, "scrubbing").await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ScrubEvent>(64);
    let scrubber = state.scrubber.clone();
    tokio::spawn(async move {
        let mut sink = |e: ScrubEvent| tx.try_send(e).is_ok() || !tx.is_closed();
        let report = scrubber.pass(0, q.rate, false, &mut sink).await;
        let _ = tx.send(ScrubEvent::Summary(report)).await;
    });
    use futures::StreamExt as _;
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
