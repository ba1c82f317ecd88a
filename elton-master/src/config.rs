use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Master settings. Every field has a default (see `docs/operations.md`);
/// a TOML file may set any of them and command-line flags override the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterConfig {
    /// This master's name; recorded as the home of the volumes it creates.
    pub id: String,
    /// Where `master.redb` lives.
    pub data_dir: PathBuf,
    /// Address for gRPC.
    pub listen: String,
    /// How often slaves are asked to heartbeat.
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    /// A slave silent for this long is marked down and no longer chosen as a
    /// fetch source.
    #[serde(with = "millis")]
    pub down_after: Duration,
    /// Name of this master's cluster: recorded as the home of the volumes it
    /// creates and sent to peers. Empty means `id`.
    pub cluster: String,
    /// Peer masters of other clusters, reached over the WAN.
    pub peers: Vec<PeerConfig>,
    /// Connect timeout and deadline of one metadata call to a peer, and the
    /// longest silence tolerated in a peer's object stream (x5).
    #[serde(with = "millis")]
    pub peer_timeout: Duration,
    /// HTTP address for Prometheus `/metrics`; off when unset.
    pub metrics_listen: Option<String>,
    /// Copies wanted of every object on distinct live slaves; the effective
    /// factor is min(replication, live slaves). 1 disables backup copies.
    pub replication: u32,
}

/// One peer master: its cluster name (the `home` of its volumes) and its
/// gRPC URL.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub url: String,
}

impl std::str::FromStr for PeerConfig {
    type Err = String;

    /// `name=url`, the form of the `--peer` flag.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?}: expected NAME=URL"))?;
        Ok(Self {
            name: name.trim().to_string(),
            url: url.trim().to_string(),
        })
    }
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            id: "master".into(),
            data_dir: PathBuf::from("elton-data/master"),
            listen: "127.0.0.1:7100".into(),
            heartbeat_interval: Duration::from_secs(2),
            down_after: Duration::from_secs(10),
            cluster: String::new(),
            peers: Vec::new(),
            peer_timeout: Duration::from_secs(3),
            metrics_listen: None,
            replication: 2,
        }
    }
}

impl MasterConfig {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let c: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// The cluster name: `cluster`, or `id` when it is empty.
    pub fn cluster_name(&self) -> &str {
        if self.cluster.is_empty() {
            &self.id
        } else {
            &self.cluster
        }
    }

    /// Refuses settings that cannot work, whatever set them (file or flags),
    /// before anything starts: peers need distinct, non-empty names other
    /// than our own and http(s) URLs; replication is at least 1.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            if p.name.is_empty() || p.name.contains(char::is_whitespace) {
                return Err(format!("peer name {:?} is invalid", p.name));
            }
            if p.name == self.cluster_name() {
                return Err(format!(
                    "peer {:?} has this master's own cluster name",
                    p.name
                ));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(format!("peer {:?} is listed twice", p.name));
            }
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return Err(format!(
                    "peer {:?}: URL {:?} must start with http:// or https://",
                    p.name, p.url
                ));
            }
        }
        if self.peer_timeout.is_zero() {
            return Err("peer_timeout must be above 0".into());
        }
        if self.replication == 0 {
            return Err("replication must be at least 1 (1 = no backup copies)".into());
        }
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_typos() {
        let c = MasterConfig::from_toml("id = \"a\"\ndown_after = 500\n").unwrap();
        assert_eq!(c.id, "a");
        assert_eq!(c.down_after, Duration::from_millis(500));
        assert_eq!(c.listen, MasterConfig::default().listen);
        assert!(MasterConfig::from_toml("lisen = \"x\"").is_err());
        assert_eq!(c.cluster_name(), "a");
    }

    #[test]
    fn peers_from_file_and_flag_are_validated() {
        let c = MasterConfig::from_toml(
            "cluster = \"b\"\n[[peers]]\nname = \"a\"\nurl = \"http://10.0.0.1:7100\"\n",
        )
        .unwrap();
        assert_eq!(c.cluster_name(), "b");
        assert_eq!(c.peers, vec!["a=http://10.0.0.1:7100".parse().unwrap()]);
        assert!("a".parse::<PeerConfig>().is_err());
        for bad in [
            "cluster = \"a\"\n[[peers]]\nname = \"a\"\nurl = \"http://x\"\n",
            "[[peers]]\nname = \"a\"\nurl = \"x:1\"\n",
            "[[peers]]\nname = \"a\"\nurl = \"http://x\"\n[[peers]]\nname = \"a\"\nurl = \"http://y\"\n",
            "[[peers]]\nname = \"\"\nurl = \"http://x\"\n",
        ] {
            assert!(MasterConfig::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replication_defaults_to_two_and_refuses_zero() {
        assert_eq!(MasterConfig::default().replication, 2);
        assert_eq!(
            MasterConfig::from_toml("replication = 3")
                .unwrap()
                .replication,
            3
        );
        assert!(MasterConfig::from_toml("replication = 0").is_err());
    }
}
