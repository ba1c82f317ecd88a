//! Elton's control group through `Control.Submit`: a `put` command in the
//! versioned request envelope, with a client request id per write.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use elton_control::{Command, Request, RequestId, Response};
use elton_proto::control_pb::control_client::ControlClient;
use elton_proto::control_pb::{StatusRequest, SubmitRequest};
use elton_trust::BearerAuth;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::Writer;

type Client = ControlClient<InterceptedService<Channel, BearerAuth>>;

/// How to reach the members: a bearer token of scope write, and the cluster
/// CA for https URLs.
#[derive(Clone, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub ca_pem: Option<String>,
}

/// One client connection; clones share it and the client's request ids.
#[derive(Clone)]
pub struct EltonWriter {
    client: Client,
    id: Arc<ClientIds>,
}

/// A client's request ids: a unique client name, increasing sequence
/// numbers, and the requests still unanswered (for `acked_below`).
struct ClientIds {
    name: String,
    next: AtomicU64,
    open: Mutex<BTreeSet<u64>>,
}

impl ClientIds {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            name: format!(
                "raftbench-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            next: AtomicU64::new(1),
            open: Mutex::new(BTreeSet::new()),
        }
    }

    /// A new request id and the floor below which every request of this
    /// client has been answered.
    fn begin(&self) -> (u64, u64) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.insert(seq);
        let floor = open.first().copied().unwrap_or(seq);
        (seq, floor)
    }

    fn end(&self, seq: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq);
    }
}

async fn client(endpoint: &str, auth: &Auth) -> Result<Client> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("bad endpoint {endpoint}"))?;
    if !endpoint.starts_with("http://") {
        let ca = auth
            .ca_pem
            .as_deref()
            .context("an https member needs the cluster CA (--ca)")?;
        ep = ep.tls_config(elton_trust::tls::anonymous_client(ca))?;
    }
    let channel = ep
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let bearer = BearerAuth::new(auth.token.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ControlClient::with_interceptor(channel, bearer))
}

/// One client connection to the member at `endpoint`.
pub async fn connect(endpoint: &str, auth: &Auth) -> Result<EltonWriter> {
    Ok(EltonWriter {
        client: client(endpoint, auth).await?,
        id: Arc::new(ClientIds::new()),
    })
}

impl Writer for EltonWriter {
    async fn put(&self, key: String, value: String) -> Result<()> {
        let (seq, floor) = self.id.begin();
        let mut request = Request::new(
            RequestId {
                client: self.id.name.clone(),
                seq,
            },
            Command::Put { key, value },
        );
        request.acked_below = floor;
        let mut c = self.client.clone();
        let answer = c
            .submit(SubmitRequest {
                command: request.encode(),
            })
            .await;
        // Answered or failed, this client will not retry it.
        self.id.end(seq);
        let answer = answer?.into_inner();
        match serde_json::from_slice::<Response>(&answer.response)? {
            Response::Value { .. } => Ok(()),
            other => bail!("unexpected answer to a put: {other:?}"),
        }
    }
}

/// The name of the current leader as the first answering member reports
/// it.
pub async fn leader(endpoints: &[String], auth: &Auth) -> Result<String> {
    for e in endpoints {
        let Ok(mut c) = client(e, auth).await else {
            continue;
        };
        if let Ok(r) = c.status(StatusRequest { local: true }).await {
            let leader = r.into_inner().leader;
            if !leader.is_empty() {
                return Ok(leader);
            }
        }
    }
    bail!("no member knows a leader")
}
