//! Closed-loop load: each client writes, waits for the acknowledgement,
//! writes again, for a fixed time after a warm-up.

use std::time::{Duration, Instant};

use super::stats::{Summary, summarize};
use super::{Writer, value};

/// Runs `writers.len()` concurrent clients for `warmup` (not counted) and
/// then `duration`. Every write puts a `value_bytes` value at one of 100
/// keys per client.
pub async fn run<W: Writer>(
    writers: Vec<W>,
    warmup: Duration,
    duration: Duration,
    value_bytes: usize,
) -> Summary {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, w) in writers.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let key = format!("bench/{c:03}/{:02}", i % 100);
                let r = w.put(key, value(value_bytes, i)).await;
                i += 1;
                if t0 < measure_from {
                    continue;
                }
                match r {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    // Writes that started before the end count; their time is inside.
    let elapsed = Instant::now().duration_since(measure_from);
    summarize(latencies, errors, elapsed.max(duration))
}
