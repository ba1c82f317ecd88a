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

/// Why a [`crate::validate::TreeSource`] could not supply a manifest or a
/// recipe. The first two are the tree's fault (the commit is refused); the
/// third is the source's own (the check could not be made).
#[derive(Debug, Error)]
pub enum FetchError<E> {
    /// No node holds the object.
    #[error("no node holds it")]
    NotHeld,
    /// The object's bytes are not a canonical manifest (or recipe).
    #[error(transparent)]
    Malformed(ProtoError),
    /// Reading it failed (unreachable holders, I/O, ...).
    #[error("{0}")]
    Failed(E),
}

impl<E> From<E> for FetchError<E> {
    fn from(e: E) -> Self {
        Self::Failed(e)
    }
}

/// The outcome of [`crate::validate::validate_tree`] when it does not
/// accept the tree.
#[derive(Debug, Error)]
pub enum TreeError<E> {
    /// The tree must not be published. `path` names the first bad entry
    /// found, relative to the root (`/` is the root directory itself,
    /// directories end in `/`).
    #[error("invalid tree: {path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The source failed: nothing is known about the tree.
    #[error("{0}")]
    Source(E),
}
