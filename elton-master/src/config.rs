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
    /// Serve without TLS and check no credentials (a benchmark baseline or
    /// a throwaway single host). Refused on a non-loopback address unless
    /// `insecure_allow_network` is also set.
    pub insecure: bool,
    /// Allows `insecure` on a non-loopback address. Anyone who reaches the
    /// port can then do anything.
    pub insecure_allow_network: bool,
    /// Where the cluster CA and this master's certificate live; created on
    /// the first start. Default: `<data_dir>/pki`.
    pub tls_dir: Option<PathBuf>,
    /// Extra DNS names or IP addresses for this master's certificate (only
    /// used when it is issued).
    pub tls_names: Vec<String>,
    /// On a start with no tokens at all: an admin token is read from this
    /// file if it exists, else created in it (mode 0600). Default:
    /// `<data_dir>/admin.token`.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Start a new incarnation on empty metadata when the data directory's
    /// metadata is missing or unusable (see `docs/operations.md`). A flag
    /// only: a config file cannot set it, so it is never left on.
    #[serde(skip)]
    pub new_incarnation: bool,
    /// Objects younger than this (arrival or last use on the slave) are
    /// never removed by garbage collection, whether referenced or not.
    #[serde(with = "millis")]
    pub gc_grace: Duration,
    /// How often garbage collection runs by itself; 0 never (only
    /// `elton gc`).
    #[serde(with = "millis")]
    pub gc_interval: Duration,
    /// The control plane's Raft group (docs/operations.md §Control plane).
    pub control: ControlConfig,
}

/// This master as a voter of the control group.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Where `control.redb` and `control.wal/` live. Default: `<data_dir>`.
    pub dir: Option<PathBuf>,
    /// The URL other members reach this master's control service at.
    /// Default: `https://<listen address>` (`http://` when insecure).
    pub advertise: Option<String>,
    /// On a start in no group, make a one-voter group of this master
    /// (`elton up`; a first master can also be initialised with
    /// `elton control init`).
    pub init: bool,
    #[serde(with = "millis")]
    pub heartbeat: Duration,
    #[serde(with = "millis")]
    pub election_min: Duration,
    #[serde(with = "millis")]
    pub election_max: Duration,
    /// Connect timeout and longest Raft call to another member.
    #[serde(with = "millis")]
    pub rpc_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many
    /// entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot for members that lag.
    pub keep_logs: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        let s = elton_control::ControlSettings::new(PathBuf::new());
        Self {
            dir: None,
            advertise: None,
            init: false,
            heartbeat: s.heartbeat,
            election_min: s.election_min,
            election_max: s.election_max,
            rpc_timeout: s.rpc_timeout,
            snapshot_every: s.snapshot_every,
            keep_logs: s.keep_after_snapshot,
        }
    }
}

impl ControlConfig {
    /// The member settings for a master whose data lives in `data_dir`.
    pub fn settings(&self, data_dir: &std::path::Path) -> elton_control::ControlSettings {
        let dir = self.dir.clone().unwrap_or_else(|| data_dir.to_path_buf());
        let mut s = elton_control::ControlSettings::new(dir.join("control.redb"));
        s.heartbeat = self.heartbeat;
        s.election_min = self.election_min;
        s.election_max = self.election_max;
        s.rpc_timeout = self.rpc_timeout;
        s.snapshot_every = self.snapshot_every;
        s.keep_after_snapshot = self.keep_logs;
        s
    }
}

/// One peer master: its cluster name (the `home` of its volumes), its
/// gRPC URL, and the file holding its cluster's CA certificate (exported
/// there with `elton cert export-ca`), which is all this master trusts of it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl std::str::FromStr for PeerConfig {
    type Err = String;

    /// `NAME=URL[,ca=PATH]`, the form of the `--peer` flag.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?}: expected NAME=URL[,ca=PATH]"))?;
        let mut parts = rest.split(',');
        let url = parts.next().unwrap_or_default().trim().to_string();
        let mut ca = None;
        for option in parts {
            match option.trim().split_once('=') {
                Some(("ca", path)) if !path.is_empty() => ca = Some(PathBuf::from(path)),
                _ => {
                    return Err(format!(
                        "peer {s:?}: unknown option {option:?} (expected ca=PATH)"
                    ));
                }
            }
        }
        Ok(Self {
            name: name.trim().to_string(),
            url,
            ca,
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
            insecure: false,
            insecure_allow_network: false,
            tls_dir: None,
            tls_names: Vec::new(),
            bootstrap_token_file: None,
            new_incarnation: false,
            gc_grace: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(6 * 3600),
            control: ControlConfig::default(),
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

    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"))
    }

    pub fn bootstrap_token_file(&self) -> PathBuf {
        self.bootstrap_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// Refuses settings that cannot work, whatever set them (file or flags),
    /// before anything starts: names fit in certificates; peers need
    /// distinct, non-empty names other than our own, https URLs and a CA
    /// (http without one when insecure); replication is at least 1; an
    /// insecure master stays on loopback unless explicitly allowed.
    pub fn validate(&self) -> Result<(), String> {
        elton_trust::pki::check_name("master id", &self.id).map_err(|e| e.to_string())?;
        elton_trust::pki::check_name("cluster", self.cluster_name()).map_err(|e| e.to_string())?;
        if self.insecure && !self.insecure_allow_network && !is_loopback(&self.listen) {
            return Err(format!(
                "refusing to serve without TLS and authentication on {} (not a loopback \
                 address); drop --insecure, or add --insecure-allow-network if every host \
                 that can reach it is trusted",
                self.listen
            ));
        }
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
            let scheme = if self.insecure { "http://" } else { "https://" };
            if !p.url.starts_with(scheme) {
                return Err(format!(
                    "peer {:?}: URL {:?} must start with {scheme}{}",
                    p.name,
                    p.url,
                    if self.insecure {
                        " (this master is insecure)"
                    } else {
                        ""
                    }
                ));
            }
            if !self.insecure && p.ca.is_none() {
                return Err(format!(
                    "peer {:?} needs its cluster's CA certificate: --peer {}={},ca=PATH \
                     (export it on the peer with `elton cert export-ca`)",
                    p.name, p.name, p.url
                ));
            }
        }
        if self.peer_timeout.is_zero() {
            return Err("peer_timeout must be above 0".into());
        }
        if self.replication == 0 {
            return Err("replication must be at least 1 (1 = no backup copies)".into());
        }
        self.control.settings(&self.data_dir).validate()?;
        if let Some(a) = &self.control.advertise {
            let scheme = if self.insecure { "http://" } else { "https://" };
            if !a.starts_with(scheme) {
                return Err(format!(
                    "control advertise URL {a:?} must start with {scheme}"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `listen` (`host:port`) can only be reached from this host.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host == "localhost")
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
            "cluster = \"b\"\n[[peers]]\nname = \"a\"\nurl = \"https://10.0.0.1:7100\"\nca = \"a.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.cluster_name(), "b");
        assert_eq!(
            c.peers,
            vec!["a=https://10.0.0.1:7100,ca=a.pem".parse().unwrap()]
        );
        assert!("a".parse::<PeerConfig>().is_err());
        assert!("a=https://x,cert=y".parse::<PeerConfig>().is_err());
        for bad in [
            "cluster = \"a\"\n[[peers]]\nname = \"a\"\nurl = \"https://x\"\nca = \"p\"\n",
            "[[peers]]\nname = \"a\"\nurl = \"x:1\"\nca = \"p\"\n",
            "[[peers]]\nname = \"a\"\nurl = \"https://x\"\nca = \"p\"\n[[peers]]\nname = \"a\"\nurl = \"https://y\"\nca = \"p\"\n",
            "[[peers]]\nname = \"\"\nurl = \"https://x\"\nca = \"p\"\n",
            // Without a CA, or in clear, a peer could not be authenticated.
            "[[peers]]\nname = \"a\"\nurl = \"https://x\"\n",
            "[[peers]]\nname = \"a\"\nurl = \"http://x\"\nca = \"p\"\n",
            "cluster = \"a b\"\n",
        ] {
            assert!(MasterConfig::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn insecure_stays_on_loopback_unless_allowed() {
        assert!(MasterConfig::from_toml("insecure = true\nlisten = \"127.0.0.1:1\"").is_ok());
        assert!(MasterConfig::from_toml("insecure = true\nlisten = \"localhost:1\"").is_ok());
        assert!(MasterConfig::from_toml("insecure = true\nlisten = \"0.0.0.0:1\"").is_err());
        assert!(
            MasterConfig::from_toml(
                "insecure = true\ninsecure_allow_network = true\nlisten = \"0.0.0.0:1\""
            )
            .is_ok()
        );
        assert!(MasterConfig::from_toml("listen = \"0.0.0.0:1\"").is_ok());
    }

    #[test]
    fn control_settings_come_from_the_control_table_and_are_checked() {
        let c = MasterConfig::from_toml(
            "[control]\ninit = true\nheartbeat = 50\nelection_min = 300\nelection_max = 600\nkeep_logs = 5\n",
        )
        .unwrap();
        assert!(c.control.init);
        let s = c.control.settings(&c.data_dir);
        assert_eq!(s.heartbeat, Duration::from_millis(50));
        assert_eq!(s.keep_after_snapshot, 5);
        assert_eq!(s.db_path, c.data_dir.join("control.redb"));
        // An election timeout under three heartbeats would depose leaders.
        assert!(
            MasterConfig::from_toml("[control]\nheartbeat = 200\nelection_min = 300\n").is_err()
        );
        assert!(MasterConfig::from_toml("[control]\nadvertise = \"http://x:1\"\n").is_err());
        assert!(MasterConfig::from_toml("[control]\nvoters = 3\n").is_err());
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
