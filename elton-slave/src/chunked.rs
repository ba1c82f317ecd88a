//! Serving a chunked file (a manifest entry whose object is a recipe): the
//! bytes are the recipe's chunks in order, each opened through the fetcher
//! (local store, else fetched through the master and verified). A range
//! touches only the chunks it overlaps, so a reader of a slice of a large
//! file fetches only that slice's chunks. The chunks after the one being
//! sent are fetched ahead, up to a budget in bytes ([`crate::read_ahead`]).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use elton_proto::recipe::Piece;
use elton_proto::{ObjectId, VolumeName};
use futures::StreamExt;

use crate::SlaveError;
use crate::fetcher::Fetcher;
use crate::http::{
    AppState, Slice, etag, immutable_headers, not_modified, object_response, unsatisfiable,
};
use crate::metrics::inc;
use crate::read_ahead::{READ_AHEAD_BYTES, READ_AHEAD_FETCHES, ReadAhead};

/// A chunked file as its manifest entry describes it.
pub struct ChunkedFile {
    pub recipe: ObjectId,
    /// The entry's `size`; must equal the recipe's.
    pub size: u64,
}

/// Serves a chunked file with the same semantics as an object (ETag = the
/// recipe id, Range, 304, HEAD).
pub async fn serve(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    file: ChunkedFile,
    content_type: &str,
    volume: Option<&VolumeName>,
) -> Result<Response, SlaveError> {
    let tag = etag(&file.recipe);
    if not_modified(headers, &tag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        immutable_headers(&mut resp, &tag);
        return Ok(resp);
    }
    let recipe = state.volumes.recipe(file.recipe).await?;
    if recipe.size != file.size {
        return Err(SlaveError::BadRequest(format!(
            "recipe {}: describes {} bytes, but the file's entry says {}",
            file.recipe, recipe.size, file.size
        )));
    }
    let range_header = headers
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok());
    let Some(r) = Slice::of(range_header, recipe.size) else {
        return Ok(unsatisfiable(recipe.size));
    };
    if method == Method::HEAD {
        return Ok(object_response(
            Body::empty(),
            &tag,
            content_type,
            r,
            recipe.size,
        ));
    }
    let pieces = recipe.pieces(r.start, r.len);
    let fetcher = state.fetcher.clone();
    let volume = volume.cloned();
    let recipe_id = file.recipe;
    let mut pieces = ReadAhead::new(
        pieces.into_iter().map(|p| (p.len, p)),
        READ_AHEAD_BYTES,
        READ_AHEAD_FETCHES,
        fetcher.read_ahead_pool().clone(),
        move |p| {
            let fetcher = fetcher.clone();
            let volume = volume.clone();
            async move { read_piece(&fetcher, recipe_id, p, volume.as_ref()).await }
        },
    );
    // The first piece is awaited before answering, so that the common
    // failures (no holder, master down) become an error status instead of a
    // cut body; the ones after it are already on their way.
    let Some(head) = pieces.next().await else {
        return Ok(object_response(
            Body::empty(),
            &tag,
            content_type,
            r,
            recipe.size,
        ));
    };
    let head = head?;
    inc(&state.metrics.http_bytes_served_total, r.len);
    let tail = pieces.inspect(|r| {
        if let Err(e) = r {
            // The status is already sent: the client sees the body end
            // short of Content-Length, never bytes that are not the file's.
            tracing::warn!("chunked response aborted: {e}");
        }
    });
    let body = futures::stream::once(async move { Ok::<_, SlaveError>(head) }).chain(tail);
    Ok(object_response(
        Body::from_stream(body),
        &tag,
        content_type,
        r,
        recipe.size,
    ))
}

/// The bytes of one piece, from a verified copy of its chunk (fetched if
/// missing).
async fn read_piece(
    fetcher: &Arc<Fetcher>,
    recipe: ObjectId,
    p: Piece,
    volume: Option<&VolumeName>,
) -> Result<Bytes, SlaveError> {
    let id = p.chunk.object;
    let (bytes, size) = fetcher.read_range(id, p.start, p.len, volume).await?;
    if size != p.chunk.size {
        return Err(SlaveError::BadRequest(format!(
            "recipe {recipe}: chunk {} ({id}) is {size} bytes, not {}",
            p.index, p.chunk.size
        )));
    }
    Ok(bytes)
}
