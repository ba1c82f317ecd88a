//! etcd through its v3 gRPC API (the subset in `tests/proto/etcd_kv.proto`).

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;

use super::Writer;

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

#[derive(Clone)]
pub struct EtcdWriter {
    kv: KvClient<Channel>,
}

async fn channel(endpoint: &str) -> Result<Channel> {
    Channel::from_shared(endpoint.to_string())
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))
}

/// One client connection to the etcd member at `endpoint`.
pub async fn connect(endpoint: &str) -> Result<EtcdWriter> {
    Ok(EtcdWriter {
        kv: KvClient::new(channel(endpoint).await?),
    })
}

impl Writer for EtcdWriter {
    async fn put(&self, key: String, value: String) -> Result<()> {
        let mut kv = self.kv.clone();
        kv.put(pb::PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            ..Default::default()
        })
        .await?;
        Ok(())
    }
}

/// The index in `endpoints` of the current leader: the member whose own id
/// is the leader id it reports.
pub async fn leader(endpoints: &[String]) -> Result<usize> {
    for (i, e) in endpoints.iter().enumerate() {
        let Ok(ch) = channel(e).await else { continue };
        let Ok(r) = MaintenanceClient::new(ch)
            .status(pb::StatusRequest {})
            .await
        else {
            continue;
        };
        let r = r.into_inner();
        if r.leader != 0 && r.header.is_some_and(|h| h.member_id == r.leader) {
            return Ok(i);
        }
    }
    bail!("no etcd member reports itself as the leader")
}
