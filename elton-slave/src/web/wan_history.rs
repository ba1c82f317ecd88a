//! WAN bytes per peer over time: the master keeps only running totals
//! (`Stats`), so each slave samples them and keeps the last hour in memory
//! for the web view (lost on restart; a fresh slave shows from its start).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::graph::Series;

/// How often the master's counters are sampled, and how many samples are
/// kept (an hour).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const KEEP: usize = 360;

/// One peer's totals at a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTotals {
    pub peer: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Default)]
pub struct WanHistory {
    samples: Mutex<VecDeque<(u64, Vec<PeerTotals>)>>,
}

impl WanHistory {
    pub fn record(&self, unix: u64, peers: Vec<PeerTotals>) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back((unix, peers));
    }

    /// Per peer, one series of bytes received and one of bytes sent.
    pub fn series(&self) -> Vec<Series> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&str> = s
            .iter()
            .flat_map(|(_, ps)| ps.iter().map(|p| p.peer.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            for (dir, pick) in [
                (
                    "in",
                    (|p: &PeerTotals| p.bytes_in) as fn(&PeerTotals) -> u64,
                ),
                ("out", |p: &PeerTotals| p.bytes_out),
            ] {
                let points = s
                    .iter()
                    .filter_map(|(t, ps)| ps.iter().find(|p| p.peer == name).map(|p| (*t, pick(p))))
                    .collect();
                out.push(Series {
                    name: format!("{name} {dir}"),
                    points,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_hour_per_peer_and_direction() {
        let h = WanHistory::default();
        for t in 0..(KEEP as u64 + 5) {
            h.record(
                t,
                vec![PeerTotals {
                    peer: "b".into(),
                    bytes_in: t,
                    bytes_out: 2 * t,
                }],
            );
        }
        let s = h.series();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "b in");
        assert_eq!(s[0].points.len(), KEEP);
        assert_eq!(s[0].points[0], (5, 5));
        assert_eq!(s[1].points[0], (5, 10));
    }
}
