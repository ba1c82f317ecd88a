//! Bearer tokens for clients that have no certificate (the CLI, the Docker
//! plugin, HTTP uploads relayed by a slave).
//!
//! A token is a random secret shown once when created; the master keeps
//! only its BLAKE3 hash, with a name and a scope. Scopes nest: `admin`
//! implies `write`, which implies `read`.

use std::io::Read;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::TrustError;

/// Shortest secret accepted (also for operator-provided bootstrap tokens).
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted; anything longer is not one of ours.
pub const MAX_SECRET_LEN: usize = 256;
/// Prefix of generated secrets, so they are recognisable in files and logs
/// scanners.
pub const SECRET_PREFIX: &str = "elton_";

pub const AUTHORIZATION: &str = "authorization";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ => Err(TrustError::Invalid(format!(
                "scope {s:?}: expected read, write or admin"
            ))),
        }
    }
}

/// A new random secret.
pub fn new_secret() -> Result<String, TrustError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| TrustError::Random(e.to_string()))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        blake3::Hash::from(seed).to_hex()
    ))
}

/// What the master stores of a secret.
pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Refuses strings that cannot be a token (before any lookup).
pub fn check_secret(secret: &str) -> Result<(), TrustError> {
    let ok = (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(TrustError::Invalid(format!(
            "a token is {MIN_SECRET_LEN} to {MAX_SECRET_LEN} printable characters without spaces"
        )))
    }
}

/// Reads a token file (trailing newline allowed).
pub fn read_secret_file(path: &std::path::Path) -> Result<String, TrustError> {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut s))
        .map_err(|e| TrustError::Io {
            path: path.into(),
            source: e,
        })?;
    let s = s.trim().to_string();
    check_secret(&s).map_err(|e| TrustError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(s)
}

/// The bearer token of a call, if it carries one. `Err` when the header is
/// there but malformed.
pub fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, TrustError> {
    let Some(v) = metadata.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| TrustError::Invalid("authorization is not ASCII".into()))?;
    match v.strip_prefix("Bearer ") {
        Some(t) => Ok(Some(t.trim())),
        None => Err(TrustError::Invalid(
            "authorization must be `Bearer <token>`".into(),
        )),
    }
}

/// Adds `authorization: Bearer <token>` to every call of a tonic client.
#[derive(Clone, Default)]
pub struct BearerAuth(Option<AsciiMetadataValue>);

impl BearerAuth {
    pub fn new(secret: Option<&str>) -> Result<Self, TrustError> {
        match secret {
            None => Ok(Self(None)),
            Some(s) => {
                check_secret(s)?;
                let v = format!("Bearer {s}")
                    .parse()
                    .map_err(|_| TrustError::Invalid("token is not ASCII".into()))?;
                Ok(Self(Some(v)))
            }
        }
    }

    /// Sets the header on one request.
    pub fn apply<T>(&self, req: &mut Request<T>) {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.apply(&mut req);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        assert!(Scope::Admin.allows(Scope::Write));
        assert!(Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
        assert_eq!("write".parse::<Scope>().unwrap(), Scope::Write);
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn secrets_are_random_and_checked() {
        let a = new_secret().unwrap();
        assert_ne!(a, new_secret().unwrap());
        assert!(check_secret(&a).is_ok());
        assert!(check_secret("short").is_err());
        assert!(check_secret("has a space in it, sixteen+").is_err());
        assert_ne!(secret_hash(&a), a);
    }

    #[test]
    fn bearer_header_round_trips() {
        let auth = BearerAuth::new(Some("0123456789abcdef")).unwrap();
        let mut req = Request::new(());
        auth.apply(&mut req);
        assert_eq!(bearer(req.metadata()).unwrap(), Some("0123456789abcdef"));
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert(AUTHORIZATION, "Basic x".parse().unwrap());
        assert!(bearer(bad.metadata()).is_err());
    }
}
