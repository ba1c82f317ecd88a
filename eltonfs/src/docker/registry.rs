//! The plugin's durable bookkeeping, kept pure: which Docker volumes exist,
//! what Elton volume and version each names, and which Docker mount IDs use
//! each one. The server (`plugin.rs`) does the IO around these decisions.
//!
//! Saved as `plugin.json` (format below) after every change, so reference
//! counts survive a plugin restart: a container started before the restart
//! still holds its reference, and its later `Unmount` is the one that lets
//! the mount go.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use elton_proto::VolumeName;
use serde::{Deserialize, Serialize};

/// Version of `plugin.json`; see `docs/formats.md`.
pub const STATE_FORMAT: u32 = 1;

/// What `docker volume create -o ...` chose, checked against the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    /// The Elton volume.
    pub volume: VolumeName,
    /// A pinned version; `None` follows the latest at each first mount.
    pub version: Option<u64>,
    /// The master asked about the volume; `None`: the plugin's own.
    pub master: Option<String>,
}

impl VolumeOptions {
    /// Parses `-o` options. `name` is the Docker volume's name, which is also
    /// the Elton volume's unless `volume=` says otherwise.
    pub fn parse(name: &str, opts: &BTreeMap<String, String>) -> Result<Self> {
        let mut volume = None;
        let mut version = None;
        let mut master = None;
        for (k, v) in opts {
            match k.as_str() {
                "volume" => {
                    volume = Some(
                        v.parse::<VolumeName>()
                            .map_err(|e| anyhow!("option volume={v:?}: {e}"))?,
                    )
                }
                "version" => {
                    version = match v.as_str() {
                        "" | "latest" => None,
                        n => match n.parse::<u64>() {
                            Ok(n) if n > 0 => Some(n),
                            _ => bail!(
                                "option version={v:?}: expected a version number (1, 2, ...) or \"latest\""
                            ),
                        },
                    }
                }
                "master" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        bail!("option master={v:?}: expected a URL like http://host:7100");
                    }
                    master = Some(v.clone());
                }
                other => bail!("unknown option {other:?} (known: volume, version, master)"),
            }
        }
        let volume = match volume {
            Some(v) => v,
            None => name.parse().map_err(|e| {
                anyhow!(
                    "volume name {name:?} is not an Elton volume name ({e}); pass -o volume=NAME"
                )
            })?,
        };
        Ok(Self {
            volume,
            version,
            master,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DockerVolume {
    #[serde(flatten)]
    pub options: VolumeOptions,
    /// Docker mount IDs currently using the volume.
    #[serde(default)]
    pub users: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    volumes: BTreeMap<String, DockerVolume>,
}

/// What `acquire` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The first user: the volume must be mounted.
    First,
    /// Others use it already: it should be mounted (check, and remount if it
    /// died).
    Shared,
}

pub struct Registry {
    path: PathBuf,
    volumes: BTreeMap<String, DockerVolume>,
}

/// Docker volume names become directory names: allow Docker's own alphabet
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`) and nothing that could climb out.
pub fn check_docker_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        bail!("invalid volume name {name:?}: use letters, digits, '_', '.', '-'");
    }
    Ok(())
}

impl Registry {
    /// Loads `path`, or starts empty when it does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        let volumes = match std::fs::read(path) {
            Ok(bytes) => {
                let f: StateFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if f.format != STATE_FORMAT {
                    bail!(
                        "{} has format {}, this elton reads {STATE_FORMAT}",
                        path.display(),
                        f.format
                    );
                }
                for name in f.volumes.keys() {
                    check_docker_name(name).with_context(|| format!("{}", path.display()))?;
                }
                f.volumes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            volumes,
        })
    }

    pub fn save(&self) -> Result<()> {
        let f = StateFile {
            format: STATE_FORMAT,
            volumes: self.volumes.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&f)?;
        elton_slave::durable::write_file(&self.path, &bytes)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn get(&self, name: &str) -> Result<&DockerVolume> {
        self.volumes
            .get(name)
            .ok_or_else(|| anyhow!("no such volume {name:?}"))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &DockerVolume)> {
        self.volumes.iter()
    }

    /// Records a new volume. Creating an existing name again with the same
    /// options is a no-op (Docker retries creates); other options conflict.
    pub fn create(&mut self, name: &str, options: VolumeOptions) -> Result<()> {
        check_docker_name(name)?;
        if let Some(existing) = self.volumes.get(name) {
            if existing.options != options {
                bail!("volume {name:?} exists with other options");
            }
            return Ok(());
        }
        self.volumes.insert(
            name.to_string(),
            DockerVolume {
                options,
                users: BTreeSet::new(),
            },
        );
        Ok(())
    }

    pub fn acquire(&mut self, name: &str, id: &str) -> Result<Acquired> {
        let v = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no such volume {name:?}"))?;
        let first = v.users.is_empty();
        v.users.insert(id.to_string());
        Ok(if first {
            Acquired::First
        } else {
            Acquired::Shared
        })
    }

    /// Undoes an `acquire` whose mount failed.
    pub fn forget(&mut self, name: &str, id: &str) {
        if let Some(v) = self.volumes.get_mut(name) {
            v.users.remove(id);
        }
    }

    /// Drops one user; `true` when none is left and the mount should go.
    /// An unknown ID (state lost in a crash, or a duplicate call) counts as
    /// a release only when no one else is known to use the volume.
    pub fn release(&mut self, name: &str, id: &str) -> Result<bool> {
        let v = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no such volume {name:?}"))?;
        v.users.remove(id);
        Ok(v.users.is_empty())
    }

    /// Forgets a volume no one uses.
    pub fn remove(&mut self, name: &str) -> Result<DockerVolume> {
        let v = self.get(name)?;
        if !v.users.is_empty() {
            bail!(
                "volume {name:?} is in use by {} container(s)",
                v.users.len()
            );
        }
        self.volumes
            .remove(name)
            .ok_or_else(|| anyhow!("no such volume {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn phase1_options_are_checked() {
        let o =
            VolumeOptions::parse("webvol", &opts(&[("volume", "web"), ("version", "3")])).unwrap();
        assert_eq!(o.volume.as_str(), "web");
        assert_eq!(o.version, Some(3));
        let o = VolumeOptions::parse("web", &opts(&[("version", "latest")])).unwrap();
        assert_eq!((o.volume.as_str(), o.version), ("web", None));
        for bad in [
            opts(&[("version", "0")]),
            opts(&[("version", "abc")]),
            opts(&[("version", "-1")]),
            opts(&[("volume", "../x")]),
            opts(&[("master", "ftp://x")]),
            opts(&[("size", "1G")]),
        ] {
            assert!(VolumeOptions::parse("web", &bad).is_err(), "{bad:?}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x"] {
            assert!(check_docker_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phase2_users_are_counted_per_mount_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.json");
        let mut r = Registry::load(&path).unwrap();
        let o = VolumeOptions::parse("web", &BTreeMap::new()).unwrap();
        r.create("web", o.clone()).unwrap();
        r.create("web", o.clone()).unwrap(); // idempotent
        let other = VolumeOptions {
            version: Some(1),
            ..o
        };
        assert!(r.create("web", other).is_err());

        assert_eq!(r.acquire("web", "c1").unwrap(), Acquired::First);
        assert_eq!(r.acquire("web", "c2").unwrap(), Acquired::Shared);
        assert!(r.remove("web").is_err(), "in use");
        assert!(!r.release("web", "c1").unwrap(), "c2 still uses it");
        r.save().unwrap();

        // A restart keeps c2's reference: its Unmount is the last one.
        let mut r = Registry::load(&path).unwrap();
        assert_eq!(r.acquire("web", "c3").unwrap(), Acquired::Shared);
        assert!(!r.release("web", "c3").unwrap());
        assert!(r.release("web", "c2").unwrap());
        r.remove("web").unwrap();
        assert!(r.get("web").is_err());
        assert!(r.acquire("web", "c4").is_err());
    }

    #[test]
    fn phase3_bad_state_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.json");
        std::fs::write(&path, r#"{"format": 9, "volumes": {}}"#).unwrap();
        assert!(Registry::load(&path).is_err());
        std::fs::write(
            &path,
            r#"{"format": 1, "volumes": {"../x": {"volume": "x", "version": null, "master": null}}}"#,
        )
        .unwrap();
        assert!(Registry::load(&path).is_err());
        std::fs::write(&path, "not json").unwrap();
        assert!(Registry::load(&path).is_err());
    }
}
