//! Connections to other members, one HTTP/2 channel per member address,
//! shared by Raft replication, forwarded client calls and status queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::control_pb::control_client::ControlClient;
use elton_proto::control_pb::raft_client::RaftClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::net::tls::MemberTls;
use crate::types::Member;

/// Largest control message either way: a batch of log entries or a
/// snapshot chunk.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct Pool {
    tls: Option<MemberTls>,
    connect_timeout: Duration,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Pool {
    /// `tls`: `None` on an insecure group (http URLs).
    pub fn new(tls: Option<MemberTls>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            channels: Arc::default(),
        }
    }

    /// Whether members are reached over TLS (then only https addresses
    /// work).
    pub fn secure(&self) -> bool {
        self.tls.is_some()
    }

    /// The channel to `member`, created on first use. Connecting is lazy:
    /// a member that is down fails each call (UNAVAILABLE), and the channel
    /// reconnects by itself when it is back.
    pub fn channel(&self, member: &Member) -> Result<Channel, Status> {
        let key = format!("{}|{}", member.role, member.addr);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(member.addr.clone()).map_err(|e| {
            Status::invalid_argument(format!("address {:?} of {}: {e}", member.addr, member.name))
        })?;
        match &self.tls {
            Some(tls) if member.addr.starts_with("https://") => {
                endpoint = endpoint
                    .tls_config(tls.client(member.role))
                    .map_err(|e| Status::internal(format!("TLS to {}: {e}", member.name)))?;
            }
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "member {} has address {:?}; a secure group needs https",
                    member.name, member.addr
                )));
            }
            None => {}
        }
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .max_frame_size(elton_proto::GRPC_MAX_FRAME_BYTES)
            // A member gone without closing the connection fails the calls
            // in flight instead of hanging them until openraft's deadline.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(self.connect_timeout.max(Duration::from_secs(1)) * 2)
            .keep_alive_while_idle(false)
            .connect_lazy();
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    pub fn raft(&self, member: &Member) -> Result<RaftClient<Channel>, Status> {
        Ok(RaftClient::new(self.channel(member)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub fn control(&self, member: &Member) -> Result<ControlClient<Channel>, Status> {
        Ok(ControlClient::new(self.channel(member)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}
