//! Unavailability after the leader is killed: probes are sent every few
//! milliseconds to the surviving members from the moment of the kill; the
//! figure is the time from the kill to the first acknowledged probe sent
//! after it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Writer, value};

/// Interval between probes; the figure's resolution.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);

/// How long one probe may wait for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Kills the leader with `kill` and measures until a write through one of
/// `survivors` (round-robin) is acknowledged. Gives up after `limit`.
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
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            done = rx.recv() => {
                let Some(done) = done else { bail!("probe channel closed") };
                probes.abort_all();
                return Ok(done.duration_since(killed));
            }
            _ = tick.tick() => {
                if killed.elapsed() > limit {
                    bail!("no write acknowledged within {limit:?} of the kill");
                }
                let w = survivors[(n as usize) % survivors.len()].clone();
                let tx = tx.clone();
                let key = format!("failover/probe/{}", n % 100);
                n += 1;
                probes.spawn(async move {
                    let put = w.put(key, value(16, n));
                    if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, put).await {
                        let _ = tx.send(Instant::now());
                    }
                });
            }
        }
    }
}
