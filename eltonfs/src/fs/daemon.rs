//! Starting a mount as a detached process: `elton mount ... --foreground` in
//! its own process group (so it outlives whoever started it: a shell, or the
//! Docker plugin across its restarts), logging to `mount.log` in its state
//! directory. Returns once the mount answers on its control socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::mount::{self, ControlRequest, ControlResponse};

pub struct Detached {
    /// VOLUME[@VERSION].
    pub spec: String,
    pub mountpoint: PathBuf,
    pub state_dir: PathBuf,
    pub slave_url: String,
    pub slave_data: PathBuf,
    pub token: Option<String>,
    pub allow_other: bool,
    /// Passed on as `--read-only`.
    pub read_only: bool,
    /// Passed on as `--chunk-threshold`.
    pub chunk_threshold: u64,
    /// Passed on as `--assembled-max-bytes`.
    pub assembled_max_bytes: u64,
}

/// How long a mount may take to come up (resolving the version, recovering
/// an interrupted commit) before we give up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Detached {
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("mount.log")
    }

    /// Starts the mount process and waits until it serves.
    pub fn spawn(&self) -> Result<ControlResponse> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let exe = std::env::current_exe().context("locating the elton binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("mount")
            .arg(&self.spec)
            .arg(&self.mountpoint)
            .arg("--upper")
            .arg(&self.state_dir)
            .arg("--slave-data")
            .arg(&self.slave_data)
            .arg("--foreground")
            // The caller decided about a non-empty mountpoint already.
            .arg("--nonempty")
            .arg("--chunk-threshold")
            .arg(self.chunk_threshold.to_string())
            .arg("--assembled-max-bytes")
            .arg(self.assembled_max_bytes.to_string())
            .env("ELTON_SLAVE", &self.slave_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.allow_other {
            cmd.arg("--allow-other");
        }
        if self.read_only {
            cmd.arg("--read-only");
        }
        match &self.token {
            Some(t) => cmd.env("ELTON_TOKEN", t),
            None => cmd.env_remove("ELTON_TOKEN"),
        };
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().context("starting the mount process")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(info) = mount::control(&self.mountpoint, &ControlRequest::Info) {
                // Reap the process when it ends, so a long-lived parent
                // collects no zombies.
                std::thread::spawn(move || child.wait());
                return Ok(info);
            }
            if let Some(status) = child.try_wait()? {
                match last_error(&log_path) {
                    Some(e) => bail!("{e}"),
                    None => bail!(
                        "the mount process exited ({status}); see {}",
                        log_path.display()
                    ),
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mount did not come up within {} s; see {}",
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last error a mount process reported, without the `elton: error:`
/// prefix its `main` printed (the caller's `main` prints its own).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("error"))?.trim();
    Some(line.strip_prefix(ERROR_PREFIX).unwrap_or(line).to_string())
}

/// What `elton`'s `main` writes before a failed command's message.
pub const ERROR_PREFIX: &str = "elton: error: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_prefix_is_printed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("mount.log");
        std::fs::write(&log, "INFO starting\nelton: error: no such volume\n").expect("write");
        assert_eq!(last_error(&log).as_deref(), Some("no such volume"));
    }
}
