use std::path::PathBuf;

use crate::conn_clock::HttpTimeouts;

/// Slave settings; defaults are documented in `docs/operations.md`.
#[derive(Clone, Debug)]
pub struct SlaveConfig {
    /// Object store and node identity live here.
    pub data_dir: PathBuf,
    /// gRPC URL of this cluster's master.
    pub master: String,
    /// Stable node id; when `None`, read from (or created in) `<data>/node-id`.
    pub node_id: Option<String>,
    /// `host:port` the master and peers use to reach this slave's HTTP; when
    /// `None`, the listener's address.
    pub advertise: Option<String>,
    /// This node's certificate, key and cluster CA (`node.pem`, `node.key`,
    /// `ca.pem`), used when the master URL is https. Default: `<data>/tls`.
    pub tls_dir: Option<PathBuf>,
    /// Largest upload body accepted.
    pub max_upload_bytes: u64,
    /// Deadlines of the HTTP server's connections.
    pub http_timeouts: HttpTimeouts,
    /// Background scrub rate in MiB/s (`--scrub-rate`); 0 disables it.
    pub scrub_rate_mib: u64,
    /// `host:port` of this host's control plane endpoint (a learner of the
    /// Raft group, gRPC with mutual TLS); `None`: not a member.
    pub control_listen: Option<String>,
    /// URL the masters reach that endpoint at; default
    /// `https://<control listen address>`.
    pub control_advertise: Option<String>,
}

impl SlaveConfig {
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    /// Whether the master is reached over TLS (an https URL).
    pub fn tls(&self) -> bool {
        self.master.starts_with("https://")
    }

    pub fn new(data_dir: PathBuf, master: String) -> Self {
        Self {
            data_dir,
            master,
            node_id: None,
            advertise: None,
            tls_dir: None,
            max_upload_bytes: 16 << 30,
            http_timeouts: HttpTimeouts::default(),
            scrub_rate_mib: crate::scrub_pace::DEFAULT_RATE_MIB,
            control_listen: None,
            control_advertise: None,
        }
    }
}
