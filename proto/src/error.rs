use thiserror::Error;

/// Input that does not satisfy one of Elton's formats.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("invalid object id {0:?}: expected 64 lowercase hex digits (BLAKE3-256)")]
    ObjectId(String),
    #[error(
        "invalid volume name {0:?}: use 1-128 of [A-Za-z0-9._-], starting with a letter or digit"
    )]
    VolumeName(String),
    #[error("invalid node id {0:?}: use 1-128 of [A-Za-z0-9._-], starting with a letter or digit")]
    NodeId(String),
    #[error("invalid http_addr {addr:?}: {reason}")]
    HttpAddr { addr: String, reason: &'static str },
    #[error("invalid version {0:?}: expected a number >= 1")]
    Version(String),
    #[error("invalid path {path:?}: {reason}")]
    Path { path: String, reason: &'static str },
    #[error("malformed manifest: {0}")]
    Manifest(String),
    #[error("malformed recipe: {0}")]
    Recipe(String),
}
