//! Unavailability after the leader is killed: from the moment of the kill,
//! a few probe loops per surviving member write, each retrying at once
//! when a write fails or times out; the figure is the time from the kill to
//! the first acknowledged write sent after it.
//!
//! The probes are few on purpose: thousands of writes waiting on members
//! that are electing a leader would measure how each system copes with a
//! flood, not how fast it elects.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Writer, value};

/// Probe loops per surviving member.
pub const LOOPS_PER_MEMBER: usize = 4;

/// How long one probe may wait for its answer before its loop sends the
/// next one.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Kills the leader with `kill` and measures until a write through one of
/// `survivors` is acknowledged. Gives up after `limit`.
pub async fn measure<W: Writer>(
    survivors: &[W],
    kill: impl FnOnce() -> Result<()>,
    limit: Duration,
) -> Result<Duration> {
    if survivors.is_empty() {
        bail!("no surviving member to probe");
    }
    // Connections are up and the group serves before the kill.
    for (i, w) in survivors.iter().enumerate() {
        w.put(format!("failover/warm/{i}"), value(16, i as u64))
            .await?;
    }
    kill()?;
    let killed = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut probes = tokio::task::JoinSet::new();
    for (m, w) in survivors.iter().enumerate() {
        for l in 0..LOOPS_PER_MEMBER {
            let (w, tx) = (w.clone(), tx.clone());
            probes.spawn(async move {
                // Staggered, so some loop is always about to send.
                let stagger = PROBE_TIMEOUT / LOOPS_PER_MEMBER as u32;
                tokio::time::sleep(stagger * l as u32).await;
                for n in 0u64.. {
                    let put = w.put(format!("failover/probe/{m}/{l}"), value(16, n));
                    if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, put).await {
                        let _ = tx.send(Instant::now());
                        return;
                    }
                }
            });
        }
    }
    let first = tokio::time::timeout(limit, rx.recv()).await;
    probes.abort_all();
    match first {
        Ok(Some(done)) => Ok(done.duration_since(killed)),
        Ok(None) => bail!("every probe loop ended without an acknowledged write"),
        Err(_) => bail!("no write acknowledged within {limit:?} of the kill"),
    }
}
