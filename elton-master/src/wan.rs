//! WAN accounting: what crossed which peer link, for which volume.
//!
//! Counters are kept per peer name, both directions, and are read by the
//! `Stats` call and the Prometheus endpoint. Byte counts are gRPC message
//! payloads (object bytes and metadata replies), not transport framing; the
//! link proxy of the tests measures the latter.

use std::collections::BTreeMap;
use std::sync::Mutex;

use elton_proto::pb;

/// Which way bytes or requests went, seen from this master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received from the peer.
    In,
    /// Sent to the peer.
    Out,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub url: String,
    pub reachable: bool,
    pub requests_in: u64,
    pub requests_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// volume name → (bytes in, bytes out)
    pub volumes: BTreeMap<String, (u64, u64)>,
}

#[derive(Default)]
pub struct WanStats {
    peers: Mutex<BTreeMap<String, PeerCounters>>,
}

impl WanStats {
    /// Starts with every configured peer at zero (and reachable until a call
    /// says otherwise), so the endpoint lists peers that never talked.
    pub fn new<'a>(peers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let peers = peers
            .into_iter()
            .map(|(name, url)| {
                (
                    name.to_string(),
                    PeerCounters {
                        url: url.to_string(),
                        reachable: true,
                        ..PeerCounters::default()
                    },
                )
            })
            .collect();
        Self {
            peers: Mutex::new(peers),
        }
    }

    fn with<T>(&self, peer: &str, f: impl FnOnce(&mut PeerCounters) -> T) -> T {
        // Counters stay consistent even if a holder of the lock panicked.
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(peer.to_string()).or_default())
    }

    pub fn request(&self, peer: &str, dir: Direction) {
        self.with(peer, |c| match dir {
            Direction::In => c.requests_in += 1,
            Direction::Out => c.requests_out += 1,
        });
    }

    /// Counts `n` bytes, also under `volume` when the request named one.
    pub fn bytes(&self, peer: &str, volume: Option<&str>, dir: Direction, n: u64) {
        self.with(peer, |c| {
            match dir {
                Direction::In => c.bytes_in += n,
                Direction::Out => c.bytes_out += n,
            }
            if let Some(v) = volume.filter(|v| !v.is_empty()) {
                let e = c.volumes.entry(v.to_string()).or_default();
                match dir {
                    Direction::In => e.0 += n,
                    Direction::Out => e.1 += n,
                }
            }
        });
    }

    pub fn set_reachable(&self, peer: &str, up: bool) {
        self.with(peer, |c| c.reachable = up);
    }

    /// The outcome of the last call to `peer` (false before any).
    pub fn reachable(&self, peer: &str) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|c| c.reachable)
    }

    pub fn snapshot(&self) -> BTreeMap<String, PeerCounters> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn to_proto(&self, cluster: &str) -> pb::StatsResponse {
        pb::StatsResponse {
            cluster: cluster.to_string(),
            peers: self
                .snapshot()
                .into_iter()
                .map(|(name, c)| pb::PeerStats {
                    name,
                    url: c.url,
                    reachable: c.reachable,
                    requests_out: c.requests_out,
                    requests_in: c.requests_in,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    volumes: c
                        .volumes
                        .into_iter()
                        .map(|(volume, (i, o))| pb::VolumeTraffic {
                            volume,
                            bytes_in: i,
                            bytes_out: o,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let snap = self.snapshot();
        let mut out = String::new();
        out.push_str(
            "# HELP elton_master_wan_requests_total Requests exchanged with a peer master.\n",
        );
        out.push_str("# TYPE elton_master_wan_requests_total counter\n");
        for (p, c) in &snap {
            let p = escape(p);
            out.push_str(&format!(
                "elton_master_wan_requests_total{{peer=\"{p}\",direction=\"in\"}} {}\n",
                c.requests_in
            ));
            out.push_str(&format!(
                "elton_master_wan_requests_total{{peer=\"{p}\",direction=\"out\"}} {}\n",
                c.requests_out
            ));
        }
        out.push_str(
            "# HELP elton_master_wan_bytes_total Message bytes exchanged with a peer master.\n",
        );
        out.push_str("# TYPE elton_master_wan_bytes_total counter\n");
        for (p, c) in &snap {
            let p = escape(p);
            out.push_str(&format!(
                "elton_master_wan_bytes_total{{peer=\"{p}\",direction=\"in\"}} {}\n",
                c.bytes_in
            ));
            out.push_str(&format!(
                "elton_master_wan_bytes_total{{peer=\"{p}\",direction=\"out\"}} {}\n",
                c.bytes_out
            ));
        }
        out.push_str("# HELP elton_master_wan_volume_bytes_total Object bytes exchanged with a peer master, by volume.\n");
        out.push_str("# TYPE elton_master_wan_volume_bytes_total counter\n");
        for (p, c) in &snap {
            let p = escape(p);
            for (v, (i, o)) in &c.volumes {
                let v = escape(v);
                out.push_str(&format!(
                    "elton_master_wan_volume_bytes_total{{peer=\"{p}\",volume=\"{v}\",direction=\"in\"}} {i}\n"
                ));
                out.push_str(&format!(
                    "elton_master_wan_volume_bytes_total{{peer=\"{p}\",volume=\"{v}\",direction=\"out\"}} {o}\n"
                ));
            }
        }
        out.push_str(
            "# HELP elton_master_peer_up Whether the last call to a peer master succeeded.\n",
        );
        out.push_str("# TYPE elton_master_peer_up gauge\n");
        for (p, c) in &snap {
            out.push_str(&format!(
                "elton_master_peer_up{{peer=\"{}\"}} {}\n",
                escape(p),
                u8::from(c.reachable)
            ));
        }
        out
    }
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_peer_direction_and_volume() {
        let s = WanStats::new([("a", "http://a")]);
        s.request("a", Direction::Out);
        s.bytes("a", Some("web"), Direction::In, 100);
        s.bytes("a", None, Direction::In, 5);
        s.bytes("b", Some(""), Direction::Out, 7);
        s.request("b", Direction::In);
        s.set_reachable("a", false);
        let snap = s.snapshot();
        let a = &snap["a"];
        assert_eq!((a.requests_out, a.bytes_in, a.bytes_out), (1, 105, 0));
        assert_eq!(a.volumes["web"], (100, 0));
        assert!(!a.reachable);
        assert_eq!((snap["b"].bytes_out, snap["b"].requests_in), (7, 1));
        assert!(snap["b"].volumes.is_empty());

        let text = s.prometheus();
        assert!(text.contains("elton_master_wan_bytes_total{peer=\"a\",direction=\"in\"} 105\n"));
        assert!(text.contains(
            "elton_master_wan_volume_bytes_total{peer=\"a\",volume=\"web\",direction=\"in\"} 100\n"
        ));
        assert!(text.contains("elton_master_peer_up{peer=\"a\"} 0\n"));
        let proto = s.to_proto("me");
        assert_eq!(proto.cluster, "me");
        assert_eq!(proto.peers.len(), 2);
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
