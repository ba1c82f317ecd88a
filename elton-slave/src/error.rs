use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use elton_proto::{HEAD_METADATA_KEY, ObjectId, ProtoError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SlaveError {
    #[error(transparent)]
    Invalid(#[from] ProtoError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("content hashes to {actual}, not {expected}")]
    HashMismatch {
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("object {0} is corrupt on disk (quarantined)")]
    Corrupt(ObjectId),
    #[error("conflict: {message}")]
    Conflict { message: String, head: Option<u64> },
    #[error("{0}")]
    PathConflict(String),
    #[error("transfer failed: {0}")]
    Transfer(String),
    #[error("master: {0}")]
    Master(String),
    #[error("master unreachable: {0}")]
    MasterUnavailable(String),
    #[error("{0}")]
    Io(String),
}

impl From<tonic::Status> for SlaveError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let msg = s.message().to_string();
        match s.code() {
            Code::NotFound => Self::NotFound(msg),
            Code::InvalidArgument => Self::BadRequest(msg),
            Code::Aborted => Self::Conflict {
                head: s
                    .metadata()
                    .get(HEAD_METADATA_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                message: msg.trim_start_matches("conflict: ").to_string(),
            },
            Code::AlreadyExists | Code::FailedPrecondition => Self::PathConflict(msg),
            Code::Unavailable | Code::DeadlineExceeded => Self::MasterUnavailable(msg),
            Code::Unauthenticated => Self::Unauthorized(msg),
            Code::PermissionDenied => Self::Forbidden(msg),
            _ => Self::Master(msg),
        }
    }
}

impl SlaveError {
    /// Whether a commit that failed with this error surely published
    /// nothing: the master refused it, or it never got that far. An
    /// unreachable master or an unexpected answer may hide a commit that
    /// was recorded, so its objects are not undone (garbage collection
    /// removes them later if they are unreferenced).
    pub fn surely_not_committed(&self) -> bool {
        !matches!(
            self,
            Self::Master(_) | Self::MasterUnavailable(_) | Self::Transfer(_) | Self::Corrupt(_)
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadRequest(_) | Self::HashMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict { .. } | Self::PathConflict(_) => StatusCode::CONFLICT,
            Self::Corrupt(_) | Self::Transfer(_) | Self::Master(_) => StatusCode::BAD_GATEWAY,
            Self::MasterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The one place where slave errors become HTTP responses: a status and a
/// JSON body `{"error": "..."}`.
impl IntoResponse for SlaveError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("{self}");
        }
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Self::Unauthorized(_) = self {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::Conflict { head: Some(h), .. } = self
            && let Ok(v) = HeaderValue::from_str(&h.to_string())
        {
            resp.headers_mut().insert(HEAD_METADATA_KEY, v);
        }
        resp
    }
}
