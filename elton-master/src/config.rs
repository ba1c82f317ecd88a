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
    /// Copies wanted of every object on distinct live slaves; the effective
    /// factor is min(replication, live slaves). 1 disables backup copies.
    pub replication: u32,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            id: "master".into(),
            data_dir: PathBuf::from("elton-data/master"),
            listen: "127.0.0.1:7100".into(),
            heartbeat_interval: Duration::from_secs(2),
            down_after: Duration::from_secs(10),
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

    /// Refuses settings that cannot work, whatever set them.
    pub fn validate(&self) -> Result<(), String> {
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
