//! A member's control plane settings: Raft timers, snapshot policy,
//! network deadlines. Defaults suit one data centre; a group spanning
//! clusters over the WAN raises them (docs/operations.md §Control plane).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Settings of one member.
#[derive(Clone, Debug)]
pub struct ControlSettings {
    /// The redb file holding the log, vote and state machine.
    pub db_path: PathBuf,
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time between these
    /// two starts an election.
    pub election_min: Duration,
    pub election_max: Duration,
    /// Connect timeout to another member; also the longest one Raft RPC
    /// waits when openraft gives it no shorter deadline.
    pub rpc_timeout: Duration,
    /// A snapshot is built every this many applied entries; the log before
    /// it is purged (small in tests, to exercise snapshot installation).
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot for lagging members.
    pub keep_after_snapshot: u64,
    /// Longest wait for a leader before a client call fails with
    /// UNAVAILABLE (an election in progress).
    pub leader_wait: Duration,
}

impl ControlSettings {
    pub fn new(db_path: PathBuf) -> Self {
        Self {
            db_path,
            // openraft 0.9 waits out a leader lease of `election_max`
            // before its random timeout, so a follower elects after
            // `election_max` + [min, max) of silence: 600 to 800 ms here,
            // 12 to 16 heartbeats (docs/operations.md, "Control plane
            // timers").
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(200),
            election_max: Duration::from_millis(400),
            rpc_timeout: Duration::from_secs(2),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            leader_wait: Duration::from_secs(5),
        }
    }

    /// Refuses timers Raft cannot work with: the election timeout must
    /// leave room for several heartbeats, or followers depose a healthy
    /// leader.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.rpc_timeout.is_zero() || self.leader_wait.is_zero() {
            return Err("control timeouts must be above 0".into());
        }
        if self.election_min < self.heartbeat * 3 {
            return Err(format!(
                "control election timeout ({} ms) must be at least 3 heartbeats ({} ms each)",
                self.election_min.as_millis(),
                self.heartbeat.as_millis()
            ));
        }
        if self.election_max <= self.election_min {
            return Err(format!(
                "control election maximum ({} ms) must exceed the minimum ({} ms)",
                self.election_max.as_millis(),
                self.election_min.as_millis()
            ));
        }
        if self.snapshot_every == 0 {
            return Err("control snapshot interval must be at least 1 entry".into());
        }
        Ok(())
    }

    /// The openraft configuration these settings make.
    pub fn raft_config(&self) -> Result<Arc<openraft::Config>, String> {
        self.validate()?;
        let config = openraft::Config {
            cluster_name: "elton-control".into(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_min),
            election_timeout_max: millis(self.election_max),
            install_snapshot_timeout: millis(self.rpc_timeout * 5),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            // Purge as soon as a snapshot allows, up to 256 entries at once.
            purge_batch_size: self.snapshot_every.clamp(1, 256),
            ..Default::default()
        };
        Ok(Arc::new(config.validate().map_err(|e| e.to_string())?))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_timers_are_refused() {
        let s = ControlSettings::new("x".into());
        assert!(s.raft_config().is_ok());
        let mut bad = s.clone();
        bad.election_min = bad.heartbeat;
        assert!(bad.validate().unwrap_err().contains("3 heartbeats"));
        let mut bad = s.clone();
        bad.election_max = bad.election_min;
        assert!(bad.validate().is_err());
        let mut bad = s;
        bad.snapshot_every = 0;
        assert!(bad.validate().is_err());
    }
}
