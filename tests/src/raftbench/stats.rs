//! Throughput and latency percentiles of a load run.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub writes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises the acknowledged writes' latencies over `elapsed`.
pub fn summarize(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Summary {
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let seconds = elapsed.as_secs_f64();
    Summary {
        ops: latencies.len() as u64,
        errors,
        seconds,
        writes_per_s: if seconds > 0.0 {
            latencies.len() as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms(quantile(&latencies, 0.5)),
        p99_ms: ms(quantile(&latencies, 0.99)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let lat: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = summarize(lat, 2, Duration::from_secs(4));
        assert_eq!(s.ops, 100);
        assert_eq!(s.errors, 2);
        assert_eq!(s.writes_per_s, 25.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(quantile(&[Duration::from_millis(7)], 0.99).as_millis(), 7);
        assert_eq!(summarize(Vec::new(), 0, Duration::ZERO).p99_ms, 0.0);
    }
}
