//! The read-only Eltonfs mounts a proxy runs its apps from: one per
//! `volume@version` on this host, made on first use and shared by every
//! instance of every runtime (a process's working directory, a
//! container's bind mount).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use crate::fs::daemon::Detached;

pub struct Mounts {
    dir: PathBuf,
    slave_url: String,
    slave_data: PathBuf,
    token: Option<String>,
    /// Mounted volume versions, by `volume@version`.
    mounted: tokio::sync::Mutex<HashMap<String, PathBuf>>,
}

impl Mounts {
    pub fn new(dir: &Path, slave_url: &str, slave_data: &Path, token: Option<String>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            slave_url: slave_url.into(),
            slave_data: slave_data.to_path_buf(),
            token,
            mounted: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Where the mounts are: a process working under it is an instance.
    pub fn root(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    /// Detaches the mounts a killed proxy left (their instances must be
    /// gone first).
    pub fn reap(&self) {
        if let Ok(entries) = std::fs::read_dir(self.root()) {
            for e in entries.flatten() {
                // Not mounted is the usual case: nothing to say.
                let _ = crate::fs::mount::unmount(&e.path(), true);
            }
        }
    }

    /// The mount of `volume@version`, mounting it on first use. The lock is
    /// held while mounting, so two apps on one version mount it once.
    pub async fn get(&self, volume: &str, version: u64) -> Result<PathBuf> {
        let spec = format!("{volume}@{version}");
        let mut mounted = self.mounted.lock().await;
        if let Some(p) = mounted.get(&spec) {
            return Ok(p.clone());
        }
        let mountpoint = self.root().join(&spec);
        let state_dir = self.dir.join("mount-state").join(&spec);
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        // A fresh state directory: an upper left by an older run (whose
        // mounts were writable) must not show through the version.
        match std::fs::remove_dir_all(&state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("clearing {}", state_dir.display()));
            }
        }
        let detached = Detached {
            spec: spec.clone(),
            mountpoint: mountpoint.clone(),
            state_dir,
            slave_url: self.slave_url.clone(),
            slave_data: self.slave_data.clone(),
            token: self.token.clone(),
            // Containers may run as any user (a root proxy can grant
            // that; permissions still apply).
            allow_other: rustix::process::geteuid().is_root(),
            // Instances run exactly the committed tree: no write lands.
            read_only: true,
            chunk_threshold: crate::chunking::DEFAULT_THRESHOLD,
            assembled_max_bytes: crate::fs::chunked::DEFAULT_ASSEMBLED_MAX_BYTES,
        };
        tokio::task::spawn_blocking(move || detached.spawn())
            .await
            .map_err(|e| anyhow!("mounting {spec}: {e}"))?
            .with_context(|| format!("mounting {spec}"))?;
        tracing::info!(mount = %mountpoint.display(), "mounted {spec} read-only for its apps");
        mounted.insert(spec, mountpoint.clone());
        Ok(mountpoint)
    }

    /// Detaches every mount (the proxy stops; its instances are stopped).
    pub fn unmount_all(&self) {
        if let Ok(mounted) = self.mounted.try_lock() {
            for p in mounted.values() {
                if let Err(e) = crate::fs::mount::unmount(p, true) {
                    tracing::warn!("unmounting {}: {e}", p.display());
                }
            }
        }
    }
}
