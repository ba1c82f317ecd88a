use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrustError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
    #[error("certificate: {0}")]
    Certificate(String),
    /// A certificate that verifies against no trusted CA, or whose names do
    /// not fit the CA that issued it.
    #[error("untrusted certificate: {0}")]
    Untrusted(String),
    #[error("{0}")]
    Invalid(String),
    #[error("random source: {0}")]
    Random(String),
}

impl TrustError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<rcgen::Error> for TrustError {
    fn from(e: rcgen::Error) -> Self {
        Self::Certificate(e.to_string())
    }
}
