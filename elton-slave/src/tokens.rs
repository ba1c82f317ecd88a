//! Bearer tokens of HTTP writers, checked by the master.
//!
//! The master is the one authority on tokens; the slave asks it
//! (`CheckToken`, authenticated by this node's certificate) before it
//! accepts a writer's bytes, and relays the same token with the commit, so
//! the master decides again. Accepted tokens are remembered briefly, so an
//! upload stream does not cost a round trip per request; a revoked token
//! therefore stops working here within [`ACCEPTED_FOR`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use elton_proto::pb::CheckTokenRequest;
use elton_trust::Scope;

use crate::SlaveError;
use crate::master_link::MasterLink;

/// How long an accepted token is believed without asking again.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(5);
/// Most tokens remembered; cleared when full.
const CACHE_CAP: usize = 1024;

pub struct Tokens {
    link: MasterLink,
    accepted: Mutex<HashMap<blake3::Hash, (Scope, Instant)>>,
}

/// A writer's token, checked: relay it with the calls made for the writer.
#[derive(Clone, Debug)]
pub struct Bearer(pub String);

impl Tokens {
    pub fn new(link: MasterLink) -> Self {
        Self {
            link,
            accepted: Mutex::new(HashMap::new()),
        }
    }

    /// The request's token, if the master accepts it with a scope that
    /// allows writes.
    pub async fn writer(&self, headers: &HeaderMap) -> Result<Bearer, SlaveError> {
        self.require(headers, Scope::Write, "writing").await
    }

    /// The request's token, if the master accepts it with admin scope;
    /// `what` names the operation in errors.
    pub async fn admin(&self, headers: &HeaderMap, what: &str) -> Result<Bearer, SlaveError> {
        self.require(headers, Scope::Admin, what).await
    }

    async fn require(
        &self,
        headers: &HeaderMap,
        needed: Scope,
        what: &str,
    ) -> Result<Bearer, SlaveError> {
        let secret = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                SlaveError::Unauthorized(format!(
                    "{what} needs a bearer token (Authorization: Bearer <token>)"
                ))
            })?;
        let scope = self.scope(secret).await?;
        if !scope.allows(needed) {
            return Err(SlaveError::Forbidden(format!(
                "the token has scope {scope}; {what} needs {needed}"
            )));
        }
        Ok(Bearer(secret.to_string()))
    }

    async fn scope(&self, secret: &str) -> Result<Scope, SlaveError> {
        let key = blake3::hash(secret.as_bytes());
        let now = Instant::now();
        if let Some((scope, at)) = self.cache().get(&key)
            && now.duration_since(*at) < ACCEPTED_FOR
        {
            return Ok(*scope);
        }
        let info = self
            .link
            .client()
            .check_token(CheckTokenRequest {
                secret: secret.to_string(),
            })
            .await?
            .into_inner()
            .token
            .ok_or_else(|| SlaveError::Master("CheckToken answered no token".into()))?;
        let scope: Scope = info
            .scope
            .parse()
            .map_err(|e: elton_trust::TrustError| SlaveError::Master(e.to_string()))?;
        let mut cache = self.cache();
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(key, (scope, now));
        Ok(scope)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<blake3::Hash, (Scope, Instant)>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}
