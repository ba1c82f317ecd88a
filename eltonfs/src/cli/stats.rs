//! `elton stats`: the master's WAN traffic per peer (and per volume).

use anyhow::Result;
use elton_proto::pb::{StatsRequest, StatsResponse};

use super::client::{Endpoints, status};

pub async fn stats(ep: &Endpoints, json: bool) -> Result<()> {
    let s = ep
        .master()
        .await?
        .stats(StatsRequest {})
        .await
        .map_err(status)?
        .into_inner();
    if json {
        println!("{}", to_json(&s));
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

fn to_json(s: &StatsResponse) -> serde_json::Value {
    let peers: Vec<_> = s
        .peers
        .iter()
        .map(|p| {
            let volumes: serde_json::Map<String, serde_json::Value> = p
                .volumes
                .iter()
                .map(|v| {
                    (
                        v.volume.clone(),
                        serde_json::json!({"bytes_in": v.bytes_in, "bytes_out": v.bytes_out}),
                    )
                })
                .collect();
            serde_json::json!({
                "name": p.name, "url": p.url, "reachable": p.reachable,
                "requests_in": p.requests_in, "requests_out": p.requests_out,
                "bytes_in": p.bytes_in, "bytes_out": p.bytes_out, "volumes": volumes,
            })
        })
        .collect();
    serde_json::json!({ "cluster": s.cluster, "peers": peers })
}

fn render(s: &StatsResponse) -> String {
    let mut out = format!("cluster {}\n", s.cluster);
    if s.peers.is_empty() {
        out.push_str("no peers\n");
        return out;
    }
    out.push_str(&format!(
        "{:<16} {:<5} {:>10} {:>10} {:>14} {:>14}  URL\n",
        "PEER", "UP", "REQ IN", "REQ OUT", "BYTES IN", "BYTES OUT"
    ));
    for p in &s.peers {
        out.push_str(&format!(
            "{:<16} {:<5} {:>10} {:>10} {:>14} {:>14}  {}\n",
            p.name,
            if p.reachable { "yes" } else { "no" },
            p.requests_in,
            p.requests_out,
            p.bytes_in,
            p.bytes_out,
            p.url
        ));
        for v in &p.volumes {
            out.push_str(&format!(
                "  volume {:<32} {:>14} {:>14}\n",
                v.volume, v.bytes_in, v.bytes_out
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use elton_proto::pb::{PeerStats, VolumeTraffic};

    use super::*;

    #[test]
    fn renders_peers_and_volumes() {
        let s = StatsResponse {
            cluster: "b".into(),
            peers: vec![PeerStats {
                name: "a".into(),
                url: "http://x".into(),
                reachable: false,
                requests_out: 3,
                bytes_in: 1024,
                volumes: vec![VolumeTraffic {
                    volume: "web".into(),
                    bytes_in: 1000,
                    bytes_out: 0,
                }],
                ..PeerStats::default()
            }],
        };
        let text = render(&s);
        assert!(text.starts_with("cluster b\n"));
        assert!(text.contains("a                no"));
        assert!(text.contains("volume web"));
        let j = to_json(&s);
        assert_eq!(j["peers"][0]["volumes"]["web"]["bytes_in"], 1000);
        assert_eq!(render(&StatsResponse::default()), "cluster \nno peers\n");
    }
}
