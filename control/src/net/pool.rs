//! Connections to other members, one HTTP/2 channel per member address,
//! shared by Raft replication, forwarded client calls and status queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::control_pb::control_client::ControlClient;
use elton_proto::control_pb::raft_client::RaftClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::net::expected::Expected;
use crate::net::tls::MemberTls;
use crate::types::Member;

/// Largest control message either way: a batch of log entries or a
/// snapshot chunk.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct Pool {
    tls: Option<MemberTls>,
    connect_timeout: Duration,
    /// By address and who must answer there.
    channels: Arc<Mutex<HashMap<(String, Expected), Channel>>>,
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

    /// This member's TLS material (`None` on an insecure group).
    pub fn tls(&self) -> Option<&MemberTls> {
        self.tls.as_ref()
    }

    /// Whether members are reached over TLS (then only https addresses
    /// work).
    pub fn secure(&self) -> bool {
        self.tls.is_some()
    }

    /// The channel to `member`, created on first use. Connecting is lazy:
    /// a member that is down fails each call (UNAVAILABLE), and the channel
    /// reconnects by itself when it is back. Over TLS, only `member` itself
    /// may answer ([`Expected::member`]); anyone else fails the handshake.
    pub fn channel(&self, member: &Member) -> Result<Channel, Status> {
        self.channel_to(&member.addr, Expected::member(member))
    }

    fn channel_to(&self, addr: &str, expected: Expected) -> Result<Channel, Status> {
        let key = (addr.to_string(), expected.clone());
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(addr.to_string()).map_err(|e| {
            Status::invalid_argument(format!("address {addr:?} of {expected}: {e}"))
        })?;
        match &self.tls {
            Some(tls) if addr.starts_with("https://") => {
                let (config, verifier) = tls
                    .client(expected.clone())
                    .map_err(|e| Status::internal(format!("TLS to {expected}: {e}")))?;
                endpoint = endpoint
                    .tls_config_with_verifier(config, verifier)
                    .map_err(|e| Status::internal(format!("TLS to {expected}: {e}")))?;
            }
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "{expected} has address {addr:?}; a secure group needs https"
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
        Ok(Self::control_client(self.channel(member)?))
    }

    /// The control service at `addr`, where any master of a trusted
    /// cluster may answer: a slave host knows its master's URL, not its
    /// name.
    pub fn control_at_master(&self, addr: &str) -> Result<ControlClient<Channel>, Status> {
        Ok(Self::control_client(self.channel_to(
            addr,
            Expected::any(elton_trust::Role::Master),
        )?))
    }

    fn control_client(channel: Channel) -> ControlClient<Channel> {
        ControlClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}
