//! k2i over HTTP JSON: `GET /v1/proc`, `/v1/proc/{pid}` and
//! `/v1/proc/cmd/{name}` (k2i's own paths), served on the master's gRPC
//! listener (same TLS, same tokens: any scope may read). Each request is
//! the direct read path of `elton ps` with a host selector (`?host=H[,H2]`
//! or `?all=1`; default this master) and answers the same JSON as
//! `elton ps --json`. This file is the HTTP edge: errors become HTTP
//! statuses here only.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use elton_control::direct::DirectResult;
use elton_control::k2i::ProcQuery;
use elton_control::k2i::answer::{by_host, to_json};
use elton_control::{Action, ControlNeed, ControlNode};
use elton_proto::control_pb::QueryRequest;
use serde::Deserialize;
use tonic::Code;

use crate::auth::Auth;

/// What a route needs: the token checks and the member that runs queries.
pub struct ProcApi {
    pub auth: Arc<Auth>,
    pub control: Arc<ControlNode>,
}

/// The query string every route takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Node names, comma-separated.
    host: Option<String>,
    /// `1` or `true`: every member.
    all: Option<String>,
    /// Processes in this cgroup or below.
    cgroup: Option<String>,
    /// CPU sampling window; 0 (the default): lifetime average, like `ps`.
    window_ms: Option<u64>,
    deadline_ms: Option<u32>,
}

/// The `/v1/proc` routes, to merge into the master's router.
pub fn router(api: Arc<ProcApi>) -> Router {
    Router::new()
        .route("/v1/proc", get(all))
        .route("/v1/proc/cmd/{name}", get(by_name))
        .route("/v1/proc/{pid}", get(by_pid))
        .with_state(api)
}

async fn all(
    State(api): State<Arc<ProcApi>>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    answer(&api, &headers, params, None, None).await
}

async fn by_name(
    State(api): State<Arc<ProcApi>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    answer(&api, &headers, params, None, Some(name)).await
}

async fn by_pid(
    State(api): State<Arc<ProcApi>>,
    Path(pid): Path<String>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    match pid.parse::<i32>() {
        Ok(pid) => answer(&api, &headers, params, Some(pid), None).await,
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            format!("pid {pid:?}: a pid is a positive number"),
        ),
    }
}

async fn answer(
    api: &ProcApi,
    headers: &HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
    pid: Option<i32>,
    name: Option<String>,
) -> Response {
    // Credentials first: a caller without them learns nothing, not even
    // whether its query was well formed.
    let probe = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(headers.clone()),
        tonic::Extensions::default(),
        (),
    );
    if let Err(e) = api.auth.control(&probe, ControlNeed::Query) {
        return status_error(&tonic::Status::from(e));
    }
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let all = match p.all.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("all={other:?}: expected 1 or 0"),
            );
        }
    };
    let hosts: Vec<String> = p
        .host
        .iter()
        .flat_map(|h| h.split(','))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let action = Action::Ps {
        query: ProcQuery {
            pid,
            name,
            cgroup: p.cgroup,
            window_ms: p.window_ms.unwrap_or(0),
        },
    };
    let req = QueryRequest {
        action: serde_json::to_vec(&action).unwrap_or_default(),
        hosts,
        all,
        deadline_ms: p.deadline_ms.unwrap_or(0),
        local: false,
    };
    let result = match api.control.query(req).await {
        Ok(r) => r,
        Err(e) => return status_error(&tonic::Status::from(e)),
    };
    match serde_json::from_slice::<DirectResult>(&result.result) {
        Ok(r) => {
            let missing = r.missing.clone();
            axum::Json(to_json(&by_host(r), &missing)).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unreadable answer: {e}"),
        ),
    }
}

fn status_error(s: &tonic::Status) -> Response {
    error(http_status(s.code()), s.message().to_string())
}

fn error(code: StatusCode, message: String) -> Response {
    (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The HTTP status of a gRPC code (the control plane's errors are gRPC
/// statuses).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_become_http_statuses() {
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
